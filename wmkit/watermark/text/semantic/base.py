"""What every sentence-level mark shares: its parameters (the inner token mark, candidates per
round, the sentence budget, the encoder and the reference), keyed randomness from its own subkey,
the embedding of sentences, and the two halves of the contract -- ``select`` (which candidate
sentence to keep, at generation) and ``score`` (the exact test over a text's sentence units, at
detection, which needs the key and the encoder, never the LM).

Every sentence after the first is one unit: its signature (a region, or PMark's channel sides)
and the signature of the sentence before it, which seeds what is valid for it. The first sentence
only seeds the second (a detector has no prompt to seed it from).
"""

from __future__ import annotations

import hashlib
import hmac
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from ....errors import InputError
from ....keys import KeyedConfig, ScopedKey, SecretKey
from ....params import Spec, check_params
from ....stats import Detection
from ..detector import Capabilities
from .reference import SemanticReference

__all__ = ["SentenceScheme", "INNER_SCHEMES", "MIN_SENTENCES"]

INNER_SCHEMES = ("none", "gumbel")  # token-level marks a sentence-level scheme may carry in its candidates
MIN_SENTENCES = 3


@dataclass(frozen=True)
class SentenceScheme(KeyedConfig, ABC):
    """Base of the sentence-level schemes (:mod:`.regions`, :mod:`.pmark`); see the module docstring."""

    key: SecretKey = field(repr=False)
    inner: str = Spec("a token-level mark carried in the candidates (layered: both are detected)", choices=INNER_SCHEMES).field("none")
    sentence_tokens: int = Spec("most tokens of one generated sentence", low=4, high=256).field(48)
    encoder: str | None = Spec("sentence encoder folder (null: all-MiniLM-L6-v2)").field(None)
    reference: str | None = Spec("semantic reference file (null: the shipped AG News one)").field(None)
    capabilities: ClassVar[Capabilities] = Capabilities(windowed=True)  # sentence windows
    sentence_level: ClassVar[bool] = True
    key_kind: ClassVar[str] = "wmkit"

    def __post_init__(self) -> None:
        if not isinstance(self.key, (SecretKey, ScopedKey)):
            raise InputError(f"{self.name} takes a wmkit key file")
        check_params(self)

    # -- keyed randomness and embeddings -------------------------------------------------------
    def key_labels(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        labels = (f"text/{self.name}",)
        inner = (self.inner_scheme().key_labels()[0] if self.inner != "none" else ())
        return labels + tuple(inner), (f"text/{self.name}",)

    def subkey(self) -> bytes:
        """This scheme's own 32-byte subkey (HMAC of the key file's secret)."""
        return self.key.subkey(f"text/{self.name}")

    def keyed_uniform(self, *parts: Any) -> float:
        """A keyed uniform in [0, 1) of ``parts`` (HMAC-SHA256 under :meth:`subkey`)."""
        d = hmac.new(self.subkey(), "/".join(map(str, parts)).encode(), hashlib.sha256).digest()
        return int.from_bytes(d[:8], "little") / 2.0**64

    def keyed_directions(self, n: int, dim: int) -> np.ndarray:
        """``n`` keyed unit directions in ``dim`` dimensions (Gaussian, seeded by the subkey)."""
        seed = int.from_bytes(hmac.new(self.subkey(), b"directions", hashlib.sha256).digest()[:16], "little")
        v = np.random.default_rng(seed).standard_normal((n, dim))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def encoder_model(self) -> Any:
        from ....encoders import shared_encoder

        return shared_encoder(self.encoder)

    def semantic_reference(self) -> SemanticReference:
        ref = _REFERENCES.get(self.reference)
        if ref is None:
            ref = _REFERENCES[self.reference] = SemanticReference.load(self.reference)
        return ref

    def embed(self, sentences: Sequence[str]) -> np.ndarray:
        """Unit embeddings of ``sentences``, the reference checked against the encoder."""
        enc = self.encoder_model()
        self.semantic_reference().check_encoder(enc)
        cache = _EMBEDDINGS.setdefault(self.encoder, {})
        todo = list(dict.fromkeys(s for s in sentences if s not in cache))
        if todo:
            if len(cache) + len(todo) > EMBEDDING_CACHE:
                cache.clear()
            cache.update(zip(todo, np.asarray(enc.encode(todo), dtype=np.float32)))
        return np.stack([cache[s] for s in sentences])

    def inner_scheme(self) -> Any:
        """The token-level scheme carried in the candidates (``None``: none), on the same key file."""
        if self.inner == "none":
            return None
        from .. import make_scheme

        return make_scheme(self.inner, self.key)

    # -- the two halves every sentence scheme supplies -----------------------------------------
    @abstractmethod
    def signatures(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(labels [n] int, margins [n] float)``: each sentence's signature and its distance from the
        nearest boundary (how far a paraphrase must move it to change it)."""

    @abstractmethod
    def select(self, prev: int, emb: np.ndarray, final: bool, seen: set[tuple[int, int]] = frozenset()) -> int | None:  # type: ignore[assignment]
        """The candidate to keep (its row in ``emb``), or ``None`` to ask for another round (never
        when ``final``); ``seen``: the (previous, current) pairs the text holds already (a repeat
        adds no evidence: detection counts each pair once)."""

    @abstractmethod
    def score(self, prev: np.ndarray, cur: np.ndarray, fpr: float) -> Detection:
        """The exact test over sentence units ``(prev[i], cur[i])`` (labels)."""

    # -- the contract of a text scheme --------------------------------------------------------
    def processor(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError(f"{self.name} is a sentence-level mark: it is generated a sentence at a time (wm generate), "
                         f"not by a token processor")

    def detector(self, tokenizer: Any, fpr: float | None = None, min_tokens: int | None = None, **options: Any) -> Any:
        """A detector on text (key and encoder; the tokenizer only to read token ids and for the inner layer)."""
        from ..detector import DEFAULT_FPR
        from .detector import SentenceDetector

        if min_tokens is not None:  # the inner token layer's fewest scored tokens
            options["min_tokens"] = min_tokens
        return SentenceDetector(self, tokenizer, fpr=DEFAULT_FPR if fpr is None else fpr, **options)


_REFERENCES: dict[str | None, SemanticReference] = {}
_EMBEDDINGS: dict[str | None, dict[str, np.ndarray]] = {}  # per encoder: sentence -> embedding (keys and schemes share it)
EMBEDDING_CACHE = 200_000
