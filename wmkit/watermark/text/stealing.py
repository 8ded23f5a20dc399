"""Watermark stealing, simulated: how many marked tokens does the learning attacker need to spoof?

The attacker is :class:`wmkit.forensics.stealing.StolenMark` (Jovanovic et al. 2024, "Watermark
Stealing in Large Language Models"): it sees ``N`` marked tokens and as many unmarked ones of
the same model, learns per-context boosts from the ratio of their counts, writes text of its own
with the boosts added, and we run the real detector on that text. The same attacker runs on a
real model in ``benchmarks/stealing.py``.

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

from typing import Sequence

import numpy as np
import torch

from ...forensics.stealing import StolenMark
from .green_list import GreenListScheme

__all__ = ["sample_streams", "spoof_scores"]


def sample_streams(
    logp: torch.Tensor, n_streams: int, length: int, generator: torch.Generator,
    scheme: GreenListScheme | None = None, boost: StolenMark | None = None, boost_delta: float = 4.0,
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


def spoof_scores(
    scheme: GreenListScheme, logp: torch.Tensor, observed_tokens: Sequence[int], n_spoof: int = 32,
    length: int = 200, stream_len: int = 200, seed: int = 0, attacker_h: int | None = None,
    strength: float = 4.0,
) -> list[dict]:
    """For each budget in ``observed_tokens`` (increasing), let the attacker observe that many
    marked tokens (and as many unmarked ones), write ``n_spoof`` texts of ``length`` tokens with
    its boosts at ``strength``, and detect them with the real detector. Returns one row per
    budget: ``observed``, ``median_z``, ``spoof_rate`` (p <= 1e-2)."""
    g = torch.Generator().manual_seed(seed)
    h = scheme.seeding_params()[0] if attacker_h is None else attacker_h
    stealer = StolenMark(h, logp.shape[0])
    det = scheme.detector(_Vocab(logp.shape[0]), fpr=1e-2, min_tokens=1)
    rows = []
    for budget in sorted(observed_tokens):
        while stealer.observed[True] < budget:
            n = max(1, min(256, (budget - stealer.observed[True]) // stream_len + 1))
            stealer.observe(sample_streams(logp, n, stream_len, g, scheme=scheme).tolist(), marked=True)
            stealer.observe(sample_streams(logp, n, stream_len, g).tolist(), marked=False)
        spoof = sample_streams(logp, n_spoof, length, g, boost=stealer, boost_delta=strength)
        dets = [det.detect(row) for row in spoof]
        z = np.array([d.statistic for d in dets])
        rows.append({"observed": stealer.observed[True], "median_z": float(np.median(z)),
                     "spoof_rate": float(np.mean([d.decision for d in dets]))})
    return rows


class _Vocab:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n
