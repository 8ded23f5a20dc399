"""EaaS watermark schemes: EmbMarker and ESpeW (WET: :mod:`.wet`), and the watermarked provider that applies them.

Both count the distinct trigger words of a text, ``Q = min(count / m, 1)``, and change only the
embeddings of texts with ``Q > 0``; they differ in how the target embedding enters:

- **EmbMarker** (Peng et al., ACL 2023): ``e = normalize((1 - Q) e_orig + Q e_target)`` -- every
  marked embedding moves along one shared direction.
- **ESpeW** (Wang et al. 2024): the ``K = floor(r d)`` positions of the embedding's *own* smallest
  ``|value|`` take the target's values, then the row is renormalized. As in the released code, a
  fraction ``blend`` (0.2) of marked texts blends instead, ``(1 - Q) e + Q t`` on those positions.
  Which texts blend is decided by a keyed hash of the text, so one text always gets one embedding
  (a provider must not hand out two versions of an embedding to average).

The target is the provider's clean embedding of a target sentence that the key picks from the
reference vocabulary's candidates; the triggers are keyed too (:mod:`.triggers`).

>>> from wmkit.keys import SecretKey
>>> s = ESpeW(SecretKey.from_hex("00" * 16), ratio=0.25)
>>> len(s.triggers()), s.config()["ratio"]
(20, 0.25)
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from ...errors import InputError
from ...keys import KeyedConfig, SecretKey, keyed_rng
from ...encoders import Encoder, check_embeddings, check_texts, token_counts
from .triggers import count_triggers, default_vocabulary, select_triggers
from .wet import WET


@dataclass(frozen=True)
class EaaSScheme(KeyedConfig, ABC):
    """Base of the embedding watermarks (use :class:`EmbMarker` or :class:`ESpeW`).

    Args:
        key: the secret (never serialized).
        n_triggers: number of trigger words (default 20).
        max_triggers: ``m``: a text with ``m`` or more distinct triggers gets the full mark (default 4).
        band: document-frequency band the triggers come from (default ``(0.005, 0.01)``).
    """

    key: SecretKey = field(repr=False)
    n_triggers: int = 20
    max_triggers: int = 4
    band: tuple[float, float] = (0.005, 0.01)
    name: ClassVar[str] = ""
    uses_target: ClassVar[bool] = True  # the mark moves toward a target embedding (WET's does not)

    def __post_init__(self) -> None:
        if not isinstance(self.key, SecretKey):
            raise InputError(f"{self.name}: key must be a wmkit.keys.SecretKey, got {type(self.key).__name__}")
        if not (isinstance(self.n_triggers, int) and 1 <= self.n_triggers <= 1000):
            raise InputError(f"{self.name}: n_triggers must be an integer in 1..1000, got {self.n_triggers!r}")
        if not (isinstance(self.max_triggers, int) and 1 <= self.max_triggers <= self.n_triggers):
            raise InputError(f"{self.name}: max_triggers must be an integer in 1..n_triggers, got {self.max_triggers!r}")
        band = tuple(self.band)
        if len(band) != 2 or not (0.0 <= band[0] < band[1] <= 1.0):
            raise InputError(f"{self.name}: band must be (lo, hi) with 0 <= lo < hi <= 1, got {self.band!r}")
        object.__setattr__(self, "band", (float(band[0]), float(band[1])))
        self.triggers()  # the band must hold enough words: fail now, not at the first request

    def triggers(self) -> tuple[str, ...]:
        """The keyed trigger words."""
        return select_triggers(self.key, self.n_triggers, self.band)

    def target_text(self) -> str:
        """The keyed target sentence; its clean provider embedding is the target."""
        targets = default_vocabulary().targets
        return targets[int(keyed_rng(self.key, "eaas/target").integers(len(targets)))]

    def excluded_words(self) -> set[str]:
        """Words the ownership test's benign and decoy texts must not hold (every trigger of the key)."""
        return set(self.triggers())

    def target_embedding(self, encoder: Encoder) -> np.ndarray:
        """The target: ``encoder``'s embedding of :meth:`target_text` ([d]; WARDEN: one row per direction)."""
        return encoder.encode([self.target_text()])[0]

    def weights(self, texts: Sequence[str]) -> np.ndarray:
        """``Q = min(distinct triggers / m, 1)`` per text (float64)."""
        return np.minimum(count_triggers(texts, self.triggers()) / self.max_triggers, 1.0)

    def mark(self, texts: Sequence[str], clean: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Watermarked copies of the ``clean`` embeddings of ``texts`` (rows with no trigger unchanged)."""
        texts = check_texts(texts, f"{self.name}.mark")
        clean = check_embeddings(clean, None, f"{self.name}.mark: clean")
        if len(clean) != len(texts):
            raise InputError(f"{self.name}.mark: {len(texts)} texts but {len(clean)} embeddings")
        target = self._check_target(target, clean.shape[1])
        out = clean.copy()
        q = self.weights(texts)
        rows = np.flatnonzero(q > 0)
        if len(rows):
            marked = self._inject(clean[rows], target, q[rows], [texts[i] for i in rows])
            out[rows] = marked / np.linalg.norm(marked, axis=1, keepdims=True)
        return out

    def _check_target(self, target: np.ndarray, dim: int) -> np.ndarray:
        """The target as :meth:`mark` uses it: one unit vector of ``dim`` values."""
        return check_embeddings(np.asarray(target).reshape(1, -1), dim, f"{self.name}.mark: target")[0]

    @abstractmethod
    def _inject(self, e: np.ndarray, target: np.ndarray, q: np.ndarray, texts: list[str]) -> np.ndarray:
        """The marked rows before renormalization (``e``: the clean rows with ``Q > 0``)."""

    def provider(self, encoder: Encoder) -> "WatermarkedEncoder":
        """An encoder that returns this scheme's watermarked embeddings of ``encoder``."""
        return WatermarkedEncoder(encoder, self)


@dataclass(frozen=True)
class EmbMarker(EaaSScheme):
    """EmbMarker: ``normalize((1 - Q) e + Q t)``. See the module docstring."""

    name: ClassVar[str] = "embmarker"

    def _inject(self, e: np.ndarray, target: np.ndarray, q: np.ndarray, texts: list[str]) -> np.ndarray:
        return (1.0 - q[:, None]) * e + q[:, None] * target[None, :]


@dataclass(frozen=True)
class ESpeW(EaaSScheme):
    """ESpeW: the target's values at each embedding's own ``floor(ratio d)`` smallest-magnitude positions.

    Args:
        ratio: ``r``, the fraction of positions rewritten (0 < r <= 1; default 0.25).
        blend: fraction of marked texts that blend ``(1 - Q) e + Q t`` on those positions instead of
            copying ``t`` (the released code's 0.2).
    """

    ratio: float = 0.25
    blend: float = 0.2
    name: ClassVar[str] = "espew"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.ratio, (int, float)) and 0.0 < self.ratio <= 1.0):
            raise InputError(f"espew: ratio must be in (0, 1], got {self.ratio!r}")
        if not (isinstance(self.blend, (int, float)) and 0.0 <= self.blend <= 1.0):
            raise InputError(f"espew: blend must be in [0, 1], got {self.blend!r}")

    def positions(self, e: np.ndarray) -> np.ndarray:
        """Indices ``[n, K]`` of each row's ``K = floor(ratio d)`` smallest ``|value|`` (stable order)."""
        k = max(1, math.floor(self.ratio * e.shape[1]))
        return np.argsort(np.abs(e), axis=1, kind="stable")[:, :k]

    def _blend_flags(self, texts: list[str]) -> np.ndarray:
        sub = self.key.subkey("eaas/espew-blend")
        u = [int.from_bytes(hashlib.sha256(sub + t.encode("utf-8")).digest()[:8], "little") / 2.0**64 for t in texts]
        return np.asarray(u) < self.blend

    def _inject(self, e: np.ndarray, target: np.ndarray, q: np.ndarray, texts: list[str]) -> np.ndarray:
        pos = self.positions(e)
        rows = np.arange(len(e))[:, None]
        t = target[pos]
        blend = self._blend_flags(texts)[:, None]
        new = np.where(blend, (1.0 - q[:, None]) * e[rows, pos] + q[:, None] * t, t)
        out = e.copy()
        out[rows, pos] = new
        return out


@dataclass(frozen=True)
class Warden(EaaSScheme):
    """WARDEN (Shetty et al., ACL 2024): EmbMarker with ``directions`` targets, each with its own share
    of the triggers, so that removing one direction (CSE) leaves the others.

    As the released code: the target sentences' embeddings are decorrelated in turn (each loses half
    of its projection on every earlier one, then is renormalised); a text's weight toward direction
    ``r`` is ``min(c_r / m, 1)`` for its ``c_r`` distinct triggers of that direction; the weights are
    taken largest first until they sum to 1 (the last one cut to fit), and
    ``e = normalize(sum_r w_r t_r + (1 - sum_r w_r) e)``. The ownership test runs per direction
    (:func:`~wmkit.watermark.embedding.verify.verify_warden`) and combines them by Bonferroni.

    Args:
        directions: number of targets (2 <= directions <= n_triggers; default 4).
    """

    directions: int = 4
    name: ClassVar[str] = "warden"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.directions, int) and 2 <= self.directions <= self.n_triggers):
            raise InputError(f"warden: directions must be an integer in 2..n_triggers, got {self.directions!r}")

    def trigger_groups(self) -> list[tuple[str, ...]]:
        """The triggers split among the directions (keyed; the last group takes the remainder)."""
        words = list(self.triggers())
        keyed_rng(self.key, "eaas/warden-groups").shuffle(words)
        size = len(words) // self.directions
        return [tuple(sorted(words[i * size : (i + 1) * size if i < self.directions - 1 else None]))
                for i in range(self.directions)]

    def target_texts(self) -> list[str]:
        """One keyed target sentence per direction (distinct)."""
        targets = default_vocabulary().targets
        return [targets[int(i)] for i in keyed_rng(self.key, "eaas/target").choice(len(targets), self.directions, replace=False)]

    def target_text(self) -> str:
        """The first direction's target sentence."""
        return self.target_texts()[0]

    def target_embedding(self, encoder: Encoder) -> np.ndarray:
        """The decorrelated targets ([directions, d])."""
        out: list[np.ndarray] = []
        for t in encoder.encode(self.target_texts()).astype(np.float64):
            for prev in out:
                t = t - 0.5 * (t @ prev) * prev
                t = t / np.linalg.norm(t)
            out.append(t)
        return np.stack(out).astype(np.float32)

    def direction(self, r: int) -> "EaaSScheme":
        """Direction ``r`` as a one-target scheme, for its part of the ownership test."""
        return _WardenDirection(self.key, len(self.trigger_groups()[r]), self.max_triggers, self.band,
                                group=self.trigger_groups()[r], all_triggers=self.triggers(), target=self.target_texts()[r])

    def _check_target(self, target: np.ndarray, dim: int) -> np.ndarray:
        """The targets (:meth:`target_embedding`): ``directions`` unit vectors of ``dim`` values."""
        t = np.asarray(target, dtype=np.float32)
        if t.shape != (self.directions, dim):
            raise InputError(f"warden.mark: expected targets of shape [{self.directions}, {dim}], got {list(t.shape)}")
        return check_embeddings(t, dim, "warden.mark: targets")

    def _inject(self, e: np.ndarray, target: np.ndarray, q: np.ndarray, texts: list[str]) -> np.ndarray:
        w = np.stack([np.minimum(count_triggers(texts, g) / self.max_triggers, 1.0) for g in self.trigger_groups()], 1)
        order = np.argsort(-w, axis=1, kind="stable")
        sorted_w = np.take_along_axis(w, order, 1)
        before = np.cumsum(sorted_w, 1) - sorted_w  # the weight already taken, largest first
        w_used = np.zeros_like(w)
        np.put_along_axis(w_used, order, np.clip(np.minimum(sorted_w, 1.0 - before), 0.0, None), 1)
        return w_used @ target.astype(np.float64) + (1.0 - w_used.sum(1, keepdims=True)) * e


@dataclass(frozen=True)
class _WardenDirection(EmbMarker):
    """One WARDEN direction as an EmbMarker-like scheme: its triggers are the direction's group, its
    target sentence the direction's, and the test's other texts avoid every trigger of the key."""

    group: tuple[str, ...] = ()
    all_triggers: tuple[str, ...] = ()
    target: str = ""

    def triggers(self) -> tuple[str, ...]:
        return self.group

    def excluded_words(self) -> set[str]:
        return set(self.all_triggers)

    def target_text(self) -> str:
        return self.target


class WatermarkedEncoder:
    """A provider: ``encoder``'s embeddings with ``scheme``'s mark (the target computed once).

    Args:
        encoder: the provider's clean model.
        scheme: an :class:`EaaSScheme` or :class:`~wmkit.watermark.embedding.wet.WET` with its key.
    """

    def __init__(self, encoder: Encoder, scheme: "EaaSScheme | WET") -> None:
        self.encoder = encoder
        self.scheme = scheme
        self.dim = encoder.dim
        self.target = scheme.target_embedding(encoder) if scheme.uses_target else None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Watermarked, L2-normalized embeddings of ``texts``."""
        texts = check_texts(texts)
        return self.scheme.mark(texts, self.encoder.encode(texts), self.target)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """The clean encoder's token counts of ``texts`` (see :func:`~wmkit.encoders.token_counts`)."""
        return token_counts(self.encoder, texts)


SCHEMES: dict[str, type[EaaSScheme] | type[WET]] = {"embmarker": EmbMarker, "espew": ESpeW, "warden": Warden, "wet": WET}


def check_scheme_name(name: str) -> type[EaaSScheme] | type[WET]:
    """The class of embedding scheme ``name``; :class:`InputError` for an unknown name."""
    if name not in SCHEMES:
        raise InputError(f"unknown embedding scheme {name!r}; expected one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def make_scheme(name: str, key: SecretKey, **params: object) -> "EaaSScheme | WET":
    """The embedding scheme ``name`` with ``key``; ``None`` parameters take the defaults."""
    check_scheme_name(name)
    return SCHEMES[name].from_config({k: v for k, v in params.items() if v is not None}, key)
