"""Scored (context window, token) pairs: what a token-level key colours, one family at a time.

The forensic tests read a text -- or a suspect's predictions -- as pairs ``(window, token)``: the
``width`` tokens the scheme's PRF reads before a token, and the token. :class:`PairScorer` gives,
per pair, its coin (what makes two pairs the same keyed draw, so a test counts each once), its
score under the key (:meth:`PairScorer.values`: green or not, a SynthID g-value mean, a Gumbel
``-log(1 - u)``), and the family's exact test over a set of pairs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..stats import Detection, binomial_detection

__all__ = ["PAIR_SCHEMES", "RADIOACTIVE_SCHEMES", "PairScorer", "pair_scorer", "pair_windows"]

PAIR_SCHEMES = ("kgw", "unigram", "gumbel", "synthid")
RADIOACTIVE_SCHEMES = PAIR_SCHEMES  # the families the radioactivity test covers


@dataclass
class PairScorer:
    """A scheme's view of ``(window, token)`` pairs: the window width, each pair's coin key (what the
    PRF colours), and the exact test over a set of pairs."""

    scheme: Any
    width: int
    selfhash: bool = False

    def coins(self, windows: torch.Tensor, tokens: torch.Tensor) -> list[Any]:
        """One hashable coin per pair (``windows [M, width]``, ``tokens [M]``)."""
        if self.selfhash:
            from .. import prf

            rows = torch.cat([windows, tokens[:, None]], 1)
            return prf.repeat_keys(rows, self.scheme.prf_key(), self.width, "selfhash")[:, 0].tolist()
        return [tuple(r) for r in torch.cat([windows, tokens[:, None]], 1).tolist()]

    def values(self, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Each pair's score under the key, float ``[M]``: 1.0 green / 0.0 red (green-list), the mean of
        the SynthID g-values over its layers, or the Gumbel family's ``-log(1 - u)``. Higher is more
        marked; on text the key never touched each is a draw of the family's null."""
        s = self.scheme
        if not len(tokens):
            return torch.zeros(0)
        if hasattr(s, "seeding_params"):
            from .. import prf

            h, seeding = s.seeding_params()
            rows = torch.cat([windows, tokens[:, None]], 1)
            return (prf.position_u32(rows, s.prf_key(), h, seeding)[:, 0] < prf.threshold(s.gamma)).double()
        if hasattr(s, "g_values"):
            return s.g_values(windows, tokens).double().mean(1)
        return -torch.log1p(-s.uniforms(windows, tokens.unsqueeze(-1)).squeeze(-1).double())

    def detect(self, windows: torch.Tensor, tokens: torch.Tensor, fpr: float) -> Detection:
        """The scheme's exact test over the pairs (each counted as given: dedup before)."""
        s = self.scheme
        n = len(tokens)
        if hasattr(s, "seeding_params"):  # green-list: binomial with the key's gamma
            from .. import prf

            h, seeding = s.seeding_params()
            rows = torch.cat([windows, tokens[:, None]], 1)  # one row per pair: its colour is the last position's
            green = (prf.position_u32(rows, s.prf_key(), h, seeding)[:, 0] < prf.threshold(s.gamma)) if n else rows[:0, 0]
            return binomial_detection(f"{s.name}-radioactivity", int(green.sum()), n, s.gamma, fpr)
        if hasattr(s, "g_values"):  # SynthID: g-values are fair (or the table's rate) coins per layer
            g = s.g_values(windows, tokens) if n else torch.zeros(0, s.depth, dtype=torch.int64)
            return binomial_detection(f"{s.name}-radioactivity", int(g.sum()), n * s.depth, s.null_rate(), fpr,
                                      pairs=n, layers=s.depth)
        det = s.score(windows, tokens, fpr)  # the Gumbel family: sum -log(1-u) ~ Gamma(n, 1)
        return dataclasses.replace(det, method=f"{s.name}-radioactivity")


def pair_scorer(scheme: Any) -> PairScorer:
    """The :class:`PairScorer` of ``scheme``; an :class:`InputError` for a scheme the test does not cover."""
    name = getattr(scheme, "name", "?")
    if name not in PAIR_SCHEMES:
        raise InputError(f"the pair tests cover {', '.join(PAIR_SCHEMES)}, not {name}")
    if hasattr(scheme, "seeding_params"):
        h, seeding = scheme.seeding_params()
        return PairScorer(scheme, h, seeding == "selfhash")
    if hasattr(scheme, "g_values"):
        return PairScorer(scheme, scheme.ngram_len - 1)
    return PairScorer(scheme, scheme.context_width)


def pair_windows(ids: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(windows [n - width, width], positions)``: the full windows of ``ids`` and the position each precedes."""
    n = len(ids) - width
    if n <= 0:
        return torch.zeros(0, width, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    win = ids.unfold(0, width, 1)[:n] if width else torch.zeros(n, 0, dtype=torch.long)
    return win, torch.arange(width, len(ids))
