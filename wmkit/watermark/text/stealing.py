"""Watermark stealing: how many marked tokens does a frequency-counting attacker need to spoof?

The attacker (after Jovanovic et al. 2024, "Watermark Stealing in Large Language Models", in its
simplest form) sees ``N`` marked tokens and knows the natural token frequencies. For every
context of ``h`` tokens it counts which tokens follow; a token seen after a context more often
than its natural frequency predicts is taken to be green there. It then writes text of its
own, boosting the tokens it believes green, and we run the real detector on that text.

The language model is a simulation with a stated distribution, so that ``N`` can reach millions
of tokens on a CPU: tokens are drawn from a fixed natural distribution ``p`` (by default the
unigram frequencies of real English tokenized with the default tokenizer), and the watermark is
applied to it exactly as :class:`~wmkit.watermark.text.green_list.GreenListProcessor` does
(``p(t) e^{delta [t green]}`` normalised). A real LM's next-token distributions are
context-dependent and more peaked: contexts repeat more (easier to count) but the bias moves
less probability where the model is sure (less signal per token). Read the figures as orders
of magnitude, and compare schemes with them rather than quote them as absolute budgets.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .green_list import GreenListScheme

__all__ = ["sample_streams", "FrequencyStealer", "spoof_scores"]


def sample_streams(
    logp: torch.Tensor, n_streams: int, length: int, generator: torch.Generator,
    scheme: GreenListScheme | None = None, boost: "FrequencyStealer | None" = None, boost_delta: float = 4.0,
) -> torch.Tensor:
    """``[n_streams, length]`` tokens drawn from ``logp`` (``[V]`` natural log-probabilities),
    watermarked by ``scheme`` (the real processor) and/or biased towards ``boost``'s guesses."""
    processor = scheme.processor() if scheme is not None else None
    h = max(scheme.seeding_params()[0], 1) if scheme is not None else 1
    ids = torch.multinomial(logp.exp().expand(n_streams, -1), h, replacement=True, generator=generator)
    for _ in range(length):
        scores = logp.expand(n_streams, -1).clone()
        if processor is not None:
            scores = processor(ids, scores)
        if boost is not None:
            scores = boost.bias(ids, scores, boost_delta)
        nxt = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[:, h:]


@dataclass
class FrequencyStealer:
    """Counts, per context of ``h`` tokens, the tokens that follow in observed marked text.

    Args:
        h: the context width the attacker assumes (it knows the scheme's, not its key).
        natural: ``[V]`` natural token probabilities (what unmarked text looks like).
    """

    h: int
    natural: torch.Tensor

    def __post_init__(self) -> None:
        self.counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        self.observed = 0
        self._guesses: dict[tuple[int, ...], list[int]] = {}

    def observe(self, streams: torch.Tensor) -> None:
        """Add marked token streams ``[S, L]`` to the counts."""
        rows = streams.tolist()
        for row in rows:
            for i in range(self.h, len(row)):
                self.counts[tuple(row[i - self.h : i])][row[i]] += 1
        self.observed += sum(max(len(r) - self.h, 0) for r in rows)
        self._guesses.clear()

    def guessed_green(self, context: Sequence[int]) -> list[int]:
        """Tokens seen after ``context`` more often than their natural frequency predicts."""
        ctx = tuple(context[len(context) - self.h :]) if self.h else ()
        if ctx not in self._guesses:
            c = self.counts.get(ctx)
            total = sum(c.values()) if c else 0
            self._guesses[ctx] = [t for t, k in c.items() if k > total * float(self.natural[t])] if c else []
        return self._guesses[ctx]

    def bias(self, ids: torch.Tensor, scores: torch.Tensor, delta: float) -> torch.Tensor:
        """Add ``delta`` to the guessed-green tokens of each row (the attacker's own 'watermark')."""
        out = scores.clone()
        for r, row in enumerate(ids[:, ids.shape[1] - self.h :].tolist() if self.h else [[]] * ids.shape[0]):
            guess = self.guessed_green(row)
            if guess:
                out[r, guess] += delta
        return out


def spoof_scores(
    scheme: GreenListScheme, logp: torch.Tensor, observed_tokens: Sequence[int], n_spoof: int = 32,
    length: int = 200, stream_len: int = 200, seed: int = 0, attacker_h: int | None = None,
) -> list[dict]:
    """For each budget in ``observed_tokens`` (increasing), let the attacker observe that many
    marked tokens, write ``n_spoof`` texts of ``length`` tokens, and detect them with the real
    detector. Returns one row per budget: ``observed``, ``median_z``, ``spoof_rate`` (p <= 1e-2)."""
    g = torch.Generator().manual_seed(seed)
    h = scheme.seeding_params()[0] if attacker_h is None else attacker_h
    stealer = FrequencyStealer(h, logp.exp())
    det = scheme.detector(_Vocab(logp.shape[0]), fpr=1e-2, min_tokens=1)
    rows = []
    for budget in sorted(observed_tokens):
        while stealer.observed < budget:
            n = max(1, min(256, (budget - stealer.observed) // stream_len + 1))
            stealer.observe(sample_streams(logp, n, stream_len, g, scheme=scheme))
        spoof = sample_streams(logp, n_spoof, length, g, boost=stealer)
        dets = [det.detect(row) for row in spoof]
        z = np.array([d.statistic for d in dets])
        rows.append({"observed": stealer.observed, "median_z": float(np.median(z)),
                     "spoof_rate": float(np.mean([d.decision for d in dets]))})
    return rows


class _Vocab:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n
