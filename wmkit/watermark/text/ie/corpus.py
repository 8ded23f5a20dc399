"""The entropy tagger's training data: the default LM's next-token entropies over human code.

The corpus is the Python standard library's own top-level modules (``<stdlib>/*.py``, the files
that come with every CPython; this package's tagger was built from CPython 3.11's), never
HumanEval. Files are sorted by name; every fifth (index 4, 9, ...) is held out for evaluation.
From each file a few chunks of ``chunk`` tokens are taken (the top of the file and evenly spaced
offsets after it) and the LM gives, for every position ``j`` of a chunk, the entropy ``H(p(. | x_<=j))`` of the next token.

>>> files = stdlib_files()
>>> all(p.suffix == ".py" for p in files), len(split_files(files)[1]) == len(files) // 5
(True, True)
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ....errors import InputError
from ....files import write_file
from ..entropy_aware import lm_step_map

__all__ = ["stdlib_files", "split_files", "EntropyCorpus", "build_corpus"]

HELD_OUT_EVERY = 5
SKIP = {"this.py"}  # the Zen of Python, stored rot13-encoded: not code


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The top-level ``*.py`` modules of the running Python's standard library, sorted by name."""
    folder = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in folder.glob("*.py") if p.name not in SKIP)
    if not files:
        raise InputError(f"no Python files under {folder}")
    return files


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """``(train, held_out)``: every fifth file (sorted order) is held out."""
    held = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return train, held


@dataclass
class EntropyCorpus:
    """Chunks of token ids with the LM's entropy at every position (``entropy[i][j]`` is the
    entropy of the distribution of token ``j + 1`` of chunk ``i``) and the file each came from."""

    ids: list[torch.Tensor]
    entropy: list[torch.Tensor]
    files: list[str]

    def save(self, path: Path, overwrite: bool = False) -> None:
        """Write the corpus as one ``.npz`` (ids int32, entropies float16, chunk boundaries), atomically;
        an existing file is replaced only with ``overwrite`` (the CLI's cache)."""
        lengths = np.array([len(x) for x in self.ids], dtype=np.int64)
        arrays = {"ids": torch.cat(self.ids).numpy().astype(np.int32),
                  "entropy": torch.cat(self.entropy).numpy().astype(np.float16),
                  "lengths": lengths, "files": np.array(self.files)}
        write_file(path, lambda f: np.savez_compressed(f, **arrays), overwrite=overwrite)

    @classmethod
    def load(cls, path: Path) -> "EntropyCorpus":
        """Read a corpus written by :meth:`save`."""
        z = np.load(path)
        bounds = np.cumsum(np.concatenate([[0], z["lengths"]]))
        ids = [torch.from_numpy(z["ids"][a:b].astype(np.int64)) for a, b in zip(bounds[:-1], bounds[1:])]
        ent = [torch.from_numpy(z["entropy"][a:b].astype(np.float32)) for a, b in zip(bounds[:-1], bounds[1:])]
        return cls(ids, ent, [str(f) for f in z["files"]])

    def tokens(self) -> int:
        """Number of positions (token, entropy pairs)."""
        return sum(len(x) for x in self.ids)


def build_corpus(model: Any, tokenizer: Any, files: list[Path], chunk: int = 384, chunks_per_file: int = 4,
                 batch_size: int = 8, on_file: Callable[[str], None] | None = None) -> EntropyCorpus:
    """Tokenize each file, take ``chunks_per_file`` chunks of ``chunk`` tokens at evenly spaced
    offsets (the first at the top of the file) and record the LM's entropies over them."""
    ids: list[torch.Tensor] = []
    names: list[str] = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        starts = sorted({(len(toks) * k // chunks_per_file) // chunk * chunk for k in range(chunks_per_file)})
        for s in starts:
            piece = toks[s : s + chunk]
            if len(piece) >= 16:
                ids.append(torch.tensor(piece, dtype=torch.long))
                names.append(f.name)
        if on_file is not None:
            on_file(f.name)
    ent = lm_step_map(model, ids, batch_size=batch_size)
    return EntropyCorpus(ids, ent, names)
