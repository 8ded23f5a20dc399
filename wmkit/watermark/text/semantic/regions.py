"""SemStamp (Hou et al. 2023, arXiv 2310.03991: LSH regions) and k-SemStamp (Hou et al. 2024, arXiv
2402.11399: k-means regions): sentence-level rejection sampling into a keyed valid region.

A sentence's region is its LSH signature (the signs of its embedding, centred on the reference
corpus mean, against ``bits`` keyed hyperplanes: ``2**bits`` regions) or its nearest centroid of the
shipped k-means reference. Candidate sentences are sampled in rounds until one lies in a region
valid after the previous sentence's region, at least ``margin`` from the region's boundary (so a
paraphrase that moves it a little keeps its region).

A candidate whose (previous, current) pair the text already holds is passed over while a new one
can be found: detection counts each pair once (ours, for the exact test below).

Ours, where the papers fix a valid *set* of ``gamma * regions``: each (previous, current) region
pair is valid independently with probability ``gamma`` (a keyed uniform below ``gamma``). With
each distinct pair counted once, the number of valid units in a text the key did not mark is then
exactly Binomial(units, gamma) over the key, so the p-value is exact, not a z approximation. When
no region is valid after some region (a chance of ``(1 - gamma) ** regions``), that sentence is
sampled normally after the rounds run out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ....params import Spec
from ....stats import Detection, binomial_detection
from .base import SentenceScheme

__all__ = ["SemStamp", "KSemStamp"]

GAMMA = Spec("chance that a (previous, current) region pair is valid", low=0.0, high=1.0, open_low=True, open_high=True)
MARGIN = Spec("least distance of a kept sentence from its region's boundary", low=0.0, high=1.0)
CANDIDATES = Spec("candidate sentences sampled per round (one batch)", low=1, high=256)
ROUNDS = Spec("most rounds of candidates per sentence", low=1, high=64)


@dataclass(frozen=True)
class _RegionScheme(SentenceScheme):
    """Rejection sampling into keyed valid regions; subclasses give :meth:`signatures`."""

    gamma: float = GAMMA.field(0.25)
    margin: float = MARGIN.field(0.02)
    candidates: int = CANDIDATES.field(8)
    rounds: int = ROUNDS.field(4)

    def valid(self, prev: int, cur: int) -> bool:
        """Whether region ``cur`` is valid after region ``prev``."""
        return self.keyed_uniform("valid", int(prev), int(cur)) < self.gamma

    def select(self, prev: int, emb: np.ndarray, final: bool, seen: set[tuple[int, int]] = frozenset()) -> int | None:  # type: ignore[assignment]
        """The first candidate in a valid region, past the margin, whose pair is new to the text;
        after the last round the first valid new one, then the first valid one, then the first."""
        labels, margins = self.signatures(emb)
        ok = [self.valid(prev, c) for c in labels]
        new = [(prev, int(c)) not in seen for c in labels]
        for i, (v, m, fresh) in enumerate(zip(ok, margins, new)):
            if v and fresh and m >= self.margin:
                return i
        if not final:
            return None
        return next((i for i, (v, fresh) in enumerate(zip(ok, new)) if v and fresh), next((i for i, v in enumerate(ok) if v), 0))

    def score(self, prev: np.ndarray, cur: np.ndarray, fpr: float) -> Detection:
        """Each distinct (previous, current) pair once: valid ones ~ Binomial(units, gamma) unmarked."""
        units = list(zip(prev.tolist(), cur.tolist()))
        valid = {pair: self.valid(*pair) for pair in units}  # each distinct pair once
        return binomial_detection(self.name, sum(valid.values()), len(valid), self.gamma, fpr, units="sentence pairs",
                                  evidence={"valid": [valid[u] for u in units]})


@dataclass(frozen=True)
class SemStamp(_RegionScheme):
    """SemStamp: LSH regions of the sentence embedding (``bits`` keyed hyperplanes)."""

    bits: int = Spec("LSH hyperplanes (2**bits regions)", low=1, high=16).field(3)
    name: ClassVar[str] = "semstamp"

    def signatures(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ref = self.semantic_reference()
        centred = emb - ref.mean
        centred /= np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
        proj = centred @ self.keyed_directions(self.bits, emb.shape[1]).T
        labels = ((proj > 0).astype(np.int64) << np.arange(self.bits)).sum(1)
        return labels, np.abs(proj).min(1)


@dataclass(frozen=True)
class KSemStamp(_RegionScheme):
    """k-SemStamp: the nearest centroid of the k-means reference (cosine), with a cluster margin
    (cosine to the nearest centroid minus cosine to the second)."""

    name: ClassVar[str] = "k-semstamp"

    def signatures(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = emb @ self.semantic_reference().centroids.T
        top = np.sort(sims, axis=1)
        return np.argmax(sims, axis=1).astype(np.int64), top[:, -1] - top[:, -2]
