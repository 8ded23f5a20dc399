"""PMark (Huo et al. 2025, arXiv 2509.21057, ICLR 2026): a sentence mark through proxy functions.

A proxy function maps a sentence to a scalar; ours are the projections of the sentence embedding,
centred on the reference corpus mean and normalised, on ``channels`` keyed directions. Each channel
has a keyed target side (above or below the median) drawn from the previous sentence's signature
(its sides on the same channels), and the next sentence is chosen so that each channel falls on
its target side:

- ``median=online`` (the distortion-free variant): ``candidates`` sentences are sampled from the
  model; for each channel in turn the median of the candidates left is estimated from them and the
  half on the target side is kept. With ``candidates = 2**channels`` one is left; since the
  candidates are independent samples and the sides are keyed coin flips, the kept sentence is,
  over the key, a sample of the model's own distribution.
- ``median=reference`` (the faster optimised variant): the median is the reference corpus's
  (0 after centring), and of the candidates the one with the most channels on their target side
  is kept, ties broken by the largest sum of its proxy values signed by their targets (ours: the
  farthest from the medians, so a paraphrase must move it far to undo it). Not distortion-free.

Detection, ours where the paper estimates medians with the model: the reference median for both
variants, so detection needs the key and the encoder, never the LM. A unit's statistic is the
number of channels on their target side; the targets after one previous signature are fair coins
over the key, so the null law of the total over units (each distinct (previous, current) pair
once) is computed exactly: for each previous signature, the law of its units' matches over all
``2**channels`` targets, convolved over signatures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ....params import Spec
from ....stats import Detection, check_fpr
from .base import SentenceScheme

__all__ = ["PMark", "matches_null"]


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.array([bin(int(v)).count("1") for v in np.ravel(x)]).reshape(np.shape(x))


def matches_null(groups: list[list[int]], channels: int) -> np.ndarray:
    """The exact null law (probabilities of 0..total) of the channel matches of units grouped by their
    previous signature: ``groups[g]`` are the distinct current signatures after signature ``g``,
    whose target is uniform over ``2**channels`` and independent between groups."""
    law = np.ones(1)
    targets = np.arange(2**channels)
    for cur in groups:
        m = sum(channels - _popcount(np.bitwise_xor(c, targets)) for c in cur)
        g = np.bincount(m, minlength=channels * len(cur) + 1) / len(targets)
        law = np.convolve(law, g)
    return law


@dataclass(frozen=True)
class PMark(SentenceScheme):
    """PMark with ``channels`` keyed proxy functions (see the module docstring)."""

    channels: int = Spec("proxy functions (channels)", low=1, high=8).field(4)
    candidates: int = Spec("candidate sentences per sentence (online: 2**channels halves to one)", low=2, high=256).field(16)
    median: str = Spec("median of each proxy: online (estimated from the candidates) or reference",
                       choices=("online", "reference")).field("online")
    name: ClassVar[str] = "pmark"
    rounds: ClassVar[int] = 1

    def projections(self, emb: np.ndarray) -> np.ndarray:
        """``[n, channels]``: the proxy values of each sentence."""
        centred = emb - self.semantic_reference().mean
        centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
        return centred @ self.keyed_directions(self.channels, emb.shape[1]).T

    def signatures(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        proj = self.projections(emb)
        labels = ((proj > 0).astype(np.int64) << np.arange(self.channels)).sum(1)
        return labels, np.abs(proj).min(1)

    def targets(self, prev: int) -> np.ndarray:
        """``[channels]`` bool: the keyed target side (True: above the median) after signature ``prev``."""
        return np.array([self.keyed_uniform("target", int(prev), j) < 0.5 for j in range(self.channels)])

    def select(self, prev: int, emb: np.ndarray, final: bool, seen: set[tuple[int, int]] = frozenset()) -> int | None:  # type: ignore[assignment]
        proj, want = self.projections(emb), self.targets(prev)
        if self.median == "reference":  # the most channels on target, then the farthest on the target sides
            signed = proj * np.where(want, 1.0, -1.0)
            return int(np.lexsort((-signed.sum(1), -(signed > 0).sum(1)))[0])
        left = np.arange(len(proj))
        for j in range(self.channels):
            if len(left) < 2:
                break
            vals = proj[left, j]
            med = float(np.median(vals))
            keep = left[vals > med] if want[j] else left[vals <= med]
            if len(keep):
                left = keep
        return int(left[0])

    def score(self, prev: np.ndarray, cur: np.ndarray, fpr: float) -> Detection:
        """Channel matches over distinct units, against their exact null law."""
        check_fpr(fpr)
        pairs = list(dict.fromkeys(zip(prev.tolist(), cur.tolist())))
        groups: dict[int, list[int]] = {}
        for p, c in pairs:
            groups.setdefault(p, []).append(c)
        observed = sum(self.channels - bin(int(c) ^ self.target_label(p)).count("1") for p, c in pairs)
        law = matches_null(list(groups.values()), self.channels)
        p_value = float(min(1.0, law[observed:].sum()))
        support = np.arange(len(law))
        mean, var = float((support * law).sum()), float(((support - (support * law).sum()) ** 2 * law).sum())
        z = (observed - mean) / math.sqrt(var) if var > 0 else 0.0
        return Detection(method=self.name, n_scored=len(pairs), statistic=z, p_value=p_value, fpr=fpr,
                         decision=bool(pairs and p_value <= fpr),
                         details={"matches": int(observed), "channel_tests": self.channels * len(pairs),
                                  "match_fraction": observed / (self.channels * len(pairs)) if pairs else 0.0,
                                  "units": "sentence pairs"})

    def target_label(self, prev: int) -> int:
        """The targets after ``prev`` packed as a signature."""
        return int((self.targets(prev).astype(np.int64) << np.arange(self.channels)).sum())
