"""Spoof detection (Gloaguen et al. 2025, arXiv 2410.02693): does a marked text show a learned mark's artifacts?

A spoofer that learned our mark from our output (:mod:`.stealing`) knows a coin's colour only if
its training text held that coin often enough to count. So in spoofed text, tokens whose coin is
common are green (or score high) far more often than tokens whose coin is rare: the colour of a
token correlates with how *learnable* it was. Our generator colours every coin alike, whatever
its frequency. The test:

- each distinct coin of the text (the scheme's ``(window, token)`` n-gram, for selfhash the
  (anchor, token) pair; :class:`~wmkit.forensics.pairs.PairScorer`), first occurrence only;
- ``value``: its score under the key (green 1 / red 0, a SynthID g-value mean, a Gumbel
  ``-log(1 - u)``); ``learnability``: ``log(1 + count)`` of the same coin in a proxy corpus of
  the text an attacker learns from (by default the 5,000 AG News articles that ship with wmkit);
- the statistic is ``z = sqrt(n) * r``, ``r`` the Pearson correlation of the two over the ``n``
  coins: asymptotically standard normal when colour and learnability are independent; the test
  is one-sided (a spoof makes ``r`` positive).

**Standard** (no reference): ``p_spoof = P(N(0, 1) >= z)``. Independence holds exactly for text
the key never touched. On genuine marked text our generator turns tokens green more easily where
the model is unsure, and a coin's corpus frequency is not independent of that; the shift this
gives on our model's text is measured in ``benchmarks/stealing.py`` (genuine texts flagged), and a
key whose common coins happen to be mostly green shifts every text under it.

**Reprompting** (``reference``: genuine texts our model wrote, e.g. from the same prompt): the
two correlations are compared, ``z = (atanh r - atanh r_ref) / sqrt(1/(n - 3) + 1/(n_ref - 3))``,
standard normal when both are genuine; what the key and the model shift, they shift in both, so
this is the calibrated form.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from ..errors import InputError
from ..stats import normal_pvalue
from .pairs import PairScorer, pair_windows

__all__ = ["SpoofTest", "coin_counts", "proxy_streams", "spoof_test_for", "MIN_COINS"]

MIN_COINS = 16  # fewer distinct coins than this: no p_spoof (the normal limit is not near)


def proxy_streams(tokenizer: Any, texts: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Token ids of the proxy corpus: ``texts``, by default the shipped AG News reference articles."""
    if texts is None:
        from ..watermark.text.reference import reference_texts

        texts = reference_texts("news")
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [torch.tensor(e, dtype=torch.long) for e in enc if e]


def coin_counts(scorer: PairScorer, streams: Iterable[torch.Tensor]) -> Counter:
    """How often each coin occurs in ``streams`` (every occurrence)."""
    counts: Counter = Counter()
    for ids in streams:
        win, pos = pair_windows(ids, scorer.width)
        if len(pos):
            counts.update(scorer.coins(win, ids[pos]))
    return counts


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = float(torch.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / den if den > 0 else 0.0


@dataclass
class SpoofTest:
    """The test for one key (``scorer``) and one proxy corpus (``counts``: :func:`coin_counts`)."""

    scorer: PairScorer
    counts: Counter

    def pairs(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, learnability)`` over the text's distinct coins (first occurrences)."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        win, pos = pair_windows(ids, self.scorer.width)
        if not len(pos):
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        coins = self.scorer.coins(win, ids[pos])
        seen: set = set()
        keep = [i for i, c in enumerate(coins) if not (c in seen or seen.add(c))]
        idx = torch.tensor(keep, dtype=torch.long)
        values = self.scorer.values(win[idx], ids[pos][idx])
        learn = torch.tensor([math.log1p(self.counts.get(coins[i], 0)) for i in keep], dtype=torch.float64)
        return values, learn

    def correlation(self, texts: Sequence[torch.Tensor]) -> tuple[float, int]:
        """``(r, n)`` over the pooled distinct coins of ``texts`` (each text deduplicated on its own)."""
        got = [self.pairs(t) for t in texts]
        v = torch.cat([g[0] for g in got]) if got else torch.zeros(0, dtype=torch.float64)
        f = torch.cat([g[1] for g in got]) if got else torch.zeros(0, dtype=torch.float64)
        return (_pearson(v, f) if len(v) > 1 else 0.0), len(v)

    def test(self, ids: torch.Tensor, reference: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
        """``{p_spoof, z_spoof, r_spoof, spoof_coins, spoof_test}`` for one text; ``p_spoof`` is
        ``None`` below :data:`MIN_COINS` distinct coins (in the text, or in ``reference``)."""
        r, n = self.correlation([ids])
        row: dict[str, Any] = {"r_spoof": r, "spoof_coins": n, "spoof_test": "standard" if reference is None else "reprompting"}
        if reference is None:
            z = math.sqrt(n) * r if n >= MIN_COINS else None
        else:
            r_ref, n_ref = self.correlation(reference)
            row.update({"r_reference": r_ref, "reference_coins": n_ref})
            z = (_atanh(r) - _atanh(r_ref)) / math.sqrt(1 / (n - 3) + 1 / (n_ref - 3)) if min(n, n_ref) >= MIN_COINS else None
        row.update({"z_spoof": z, "p_spoof": None if z is None else normal_pvalue(z)})
        return row


def _atanh(r: float) -> float:
    return math.atanh(max(-0.999999, min(0.999999, r)))


def spoof_test_for(scheme: Any, tokenizer: Any, corpus: Sequence[str] | None = None) -> SpoofTest:
    """The test for ``scheme``'s key with the proxy corpus ``corpus`` (default: shipped news)."""
    from .pairs import pair_scorer

    scorer = pair_scorer(scheme)
    streams = proxy_streams(tokenizer, corpus)
    if not streams:
        raise InputError("the proxy corpus for spoof detection holds no text")
    return SpoofTest(scorer, coin_counts(scorer, streams))
