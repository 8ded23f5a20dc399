"""The semantic reference: k-means centroids of sentence embeddings and their mean, fitted on a
domain corpus with one encoder, and the file that ships them (``wmkit/data/semantic_news.safetensors``).

k-SemStamp's regions are the centroids' Voronoi cells (cosine); PMark's proxy medians are taken
from the corpus (the mean embedding's projection). The file records the encoder it was fitted with
(an id of its config and tokenizer files, and its dimension) and the SHA-256 of the corpus, so a
file fitted with another encoder is refused by name, and a refit is traceable to its data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ....errors import InputError
from .sentences import split_sentences

__all__ = ["SemanticReference", "encoder_id", "fit_reference", "default_reference_path", "FORMAT"]

FORMAT = "wmkit-semantic-reference/1"
ENCODER_FILES = ("config.json", "tokenizer.json", "vocab.txt")


def default_reference_path() -> Path:
    """The shipped reference (AG News, all-MiniLM-L6-v2, k = 8)."""
    return Path(__file__).resolve().parents[3] / "data" / "semantic_news.safetensors"


def encoder_id(encoder: Any) -> str:
    """A short id of a local encoder's identity: SHA-256 of its config and tokenizer files
    (``remote:<dim>`` for an encoder without a folder)."""
    folder = getattr(encoder, "path", None)
    if folder is None:
        return f"remote:{encoder.dim}"
    h = hashlib.sha256()
    for name in ENCODER_FILES:
        p = Path(folder) / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class SemanticReference:
    """Centroids ``[k, dim]`` (unit rows), the corpus mean embedding ``[dim]`` and where they came from."""

    centroids: np.ndarray
    mean: np.ndarray
    encoder: str
    encoder_name: str
    corpus_sha256: str
    sentences: int
    path: str = ""

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def check_encoder(self, encoder: Any) -> None:
        """Refuse an encoder of another dimension or identity than the one this reference was fitted with."""
        where = self.path or "the semantic reference"
        if int(encoder.dim) != self.dim:
            raise InputError(f"{where} was fitted for a {self.dim}-dimensional encoder ({self.encoder_name}); "
                             f"this encoder gives {encoder.dim} dimensions (refit with wm semantic fit)")
        got = encoder_id(encoder)
        if got != self.encoder:
            raise InputError(f"{where} was fitted with encoder {self.encoder_name} (id {self.encoder}), not this one "
                             f"(id {got}); refit with wm semantic fit")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the reference (a new file only: never overwrites)."""
        from safetensors.numpy import save

        from ....files import write_file

        meta = {"format": FORMAT, "encoder": self.encoder, "encoder_name": self.encoder_name,
                "corpus_sha256": self.corpus_sha256, "sentences": str(self.sentences)}
        data = save({"centroids": self.centroids.astype(np.float32), "mean": self.mean.astype(np.float32)}, metadata=meta)
        return write_file(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> "SemanticReference":
        """Read a reference file (``None``: the shipped one); a clear error for anything else."""
        from safetensors import SafetensorError, safe_open

        p = default_reference_path() if path is None else Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such semantic reference file")
        try:
            with safe_open(str(p), framework="numpy") as f:
                meta = f.metadata() or {}
                centroids, mean = f.get_tensor("centroids"), f.get_tensor("mean")
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise InputError(f"{p}: not a semantic reference file ({e})") from None
        if meta.get("format") != FORMAT or centroids.ndim != 2 or mean.shape != (centroids.shape[1],):
            raise InputError(f"{p}: not a semantic reference file (format {meta.get('format')!r})")
        return cls(centroids, mean, meta.get("encoder", ""), meta.get("encoder_name", "?"), meta.get("corpus_sha256", ""),
                   int(meta.get("sentences", 0)), str(p))


def corpus_sha256(texts: Sequence[str]) -> str:
    """SHA-256 of a corpus as fitted: its texts, JSON-encoded in order."""
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 60) -> np.ndarray:
    """Cosine k-means (k-means++ start, fixed ``seed``): ``k`` unit centroids of the unit rows ``x``."""
    if len(x) < k:
        raise InputError(f"k-means needs at least k = {k} sentences, got {len(x)}")
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = 1.0 - np.max(x @ np.stack(centers).T, axis=1)
        d = np.clip(d, 0, None) ** 2
        centers.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    c = np.stack(centers)
    for _ in range(iters):
        labels = np.argmax(x @ c.T, axis=1)
        new = np.stack([x[labels == j].sum(0) if (labels == j).any() else c[j] for j in range(k)])
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        if np.allclose(new, c, atol=1e-7):
            break
        c = new
    return c.astype(np.float32)


def fit_reference(encoder: Any, documents: Sequence[str], k: int = 8, seed: int = 0, max_sentences: int = 20000) -> SemanticReference:
    """Fit a reference on ``documents`` (split into sentences, the first ``max_sentences`` used)."""
    if not 2 <= k <= 256:
        raise InputError(f"k must be in 2..256, got {k}")
    sentences = [s for d in documents for s in split_sentences(d)][:max_sentences]
    if len(sentences) < 10 * k:
        raise InputError(f"the corpus has {len(sentences)} sentences; at least {10 * k} are needed for k = {k}")
    emb = np.asarray(encoder.encode(sentences), dtype=np.float32)
    folder = getattr(encoder, "path", None)
    name = Path(folder).parent.name + "/" + Path(folder).name if folder is not None else "remote"
    return SemanticReference(spherical_kmeans(emb, k, seed), emb.mean(0), encoder_id(encoder), name,
                             corpus_sha256(sentences), len(sentences))
