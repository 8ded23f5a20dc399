"""EXP-edit (Kuditipudi, Thickstun, Hashimoto & Liang 2023, "Robust Distortion-free Watermarks for
Language Models"): a keyed sequence, exponential-minimum sampling, and an edit-robust test.

The key defines a sequence ``xi_0 .. xi_{n-1}`` of uniform vectors over the vocabulary (PRF v2,
``xi_p[v]`` = the word of token ``v`` under the state of position ``p``). A completion starts at a
random shift ``tau`` and its ``i``-th token is ``argmax_v xi_{tau+i}[v]^(1/p_v)`` -- Gumbel-max with the
key row as randomness, so each text is an exact sample of the model (distortion-free).

Detection aligns the text ``y`` with every rotation of the key by a Levenshtein distance whose
match cost is ``log(1 - xi_j[y_i])`` (very negative where the key chose the token) and whose
insertion/deletion cost is ``gap``: the statistic is the smallest distance over rotations, so it
survives inserted and deleted tokens. Its p-value is the paper's permutation test: the same
statistic with ``n_resamples`` independent keyed sequences, ``p = (1 + #{null <= observed}) /
(1 + n_resamples)`` (exact, at least ``1 / (1 + n_resamples)``); ``details["p_value_normal"]`` is a
finer, approximate figure from the null's mean and spread.

The dynamic programme runs row by row over the text, vectorized over (resample, rotation, key
position); a row's insertions are a prefix minimum (``torch.cummin``), so there is no per-cell loop.
Cost: ``O(m^2 n R)`` for ``m`` tokens, key length ``n`` and ``R = n_resamples + 1``. Where the CPU
kernels build (:mod:`wmkit.kernels.native`), the same programme runs in C with the rotations as
vector lanes (equal to the torch reference within float32 rounding, tested).

>>> from wmkit.keys import SecretKey
>>> ExpEdit(SecretKey.generate()).config()["key_length"]
256
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from ... import prf
from ...kernels import native
from ...keys import KeyedConfig, SecretKey
from ...params import Spec, check_params
from ...stats import Detection, permutation_detection
from .green_list import PRF_VERSION, check_wmkit_key
from .gumbel_family import CompletionProcessor, gumbel_max
from ...engine.sampling import Sampling
from .detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, Capabilities, Detector

__all__ = ["ExpEdit", "ExpEditDetector", "levenshtein_prefix_scores"]


@dataclass(frozen=True)
class ExpEdit(KeyedConfig):
    """EXP-edit watermark keyed by a wmkit key file.

    Args:
        key: the secret (a :class:`wmkit.keys.SecretKey`).
        key_length: ``n``, the length of the keyed sequence (default 256, as in the paper).
        gap: the Levenshtein insertion/deletion cost ``gamma`` of the test (default 0.4).
        n_resamples: keyed null sequences of the permutation test (default 99: p >= 0.01).
    """

    key: SecretKey = field(repr=False)
    key_length: int = Spec("length n of the keyed sequence", low=2, high=4096).field(256)
    gap: float = Spec("Levenshtein insertion/deletion cost of the test", low=0.0, high=100.0).field(0.4)
    n_resamples: int = Spec("keyed null sequences of the permutation test (p >= 1/(1+n))", low=9, high=9999).field(99)
    prf_version: int = PRF_VERSION.field(prf.PRF_VERSION)
    name: ClassVar[str] = "exp-edit"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __post_init__(self) -> None:
        check_wmkit_key(self.name, self.key, self.prf_version)
        check_params(self)

    def key_labels(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The sequence's PRF key and every null sequence's (:meth:`prf_keys`)."""
        return (f"text/{self.name}", *(f"text/{self.name}/null/{r}" for r in range(1, self.n_resamples + 1))), ()

    def prf_keys(self, resamples: int = 0) -> list[tuple[int, int, int, int]]:
        """The sequence's PRF key, then ``resamples`` keys of independent null sequences."""
        return [self.key.prf_key(f"text/{self.name}")] + [
            self.key.prf_key(f"text/{self.name}/null/{r}") for r in range(1, resamples + 1)]

    def uniforms(self, positions: torch.Tensor, tokens: torch.Tensor, key: tuple[int, int, int, int]) -> torch.Tensor:
        """``xi_p[t]`` (float64) for key positions ``positions[...]`` and ``tokens`` broadcasting with ``positions[..., None]``."""
        state = prf.context_state(positions.unsqueeze(-1), key, prf.MODE_POSITION)
        return prf.uniform(prf.token_words([s.unsqueeze(-1) for s in state], tokens, key))

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> "ExpEditProcessor":
        """Exponential-minimum sampling along the keyed sequence from a random shift per completion."""
        return ExpEditProcessor(self, len(tokenizer) if tokenizer is not None else None,
                               Sampling(temperature, top_p, top_k, min_p))

    def detector(self, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = DEFAULT_MIN_TOKENS,
                 **options: Any) -> "ExpEditDetector":
        """The permutation-test detector (key and tokenizer only)."""
        options.pop("ignore_repeated_ngrams", None)  # positions, not contexts, key the choice: nothing to deduplicate
        return ExpEditDetector(self, tokenizer, fpr=fpr, min_tokens=min_tokens, **options)


class ExpEditProcessor(CompletionProcessor):
    """Leaves only the keyed choice ``argmax(logits / T - log(-log xi_{tau+i}))`` finite (``i`` = completion length)."""

    def __init__(self, scheme: ExpEdit, vocab_size: int | None, sampling: Sampling):
        super().__init__(1, vocab_size)
        self.scheme, self.sampling = scheme, sampling
        self._key = scheme.prf_keys()[0]
        self._tau: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        completion = self.completion(input_ids, scores)
        if self.sampling.temperature <= 0:
            return scores
        n = self.scheme.key_length
        if completion.shape[1] == 0 or self._tau is None or self._tau.shape[0] != scores.shape[0]:
            self._tau = torch.randint(0, n, (scores.shape[0],))  # a new completion: a random start in the key
        pos = (self._tau + completion.shape[1]) % n
        key = self._key
        state = prf.context_state(pos.unsqueeze(-1), key, prf.MODE_POSITION)
        u = prf.uniform(prf.vocab_words(state, scores.shape[1], key)).to(scores.device)  # one Philox call per 4 tokens
        chosen = gumbel_max(self.sampling.process(scores.double()), u)
        return torch.full_like(scores, float("-inf")).scatter(1, chosen.unsqueeze(1), 0.0)


def levenshtein_prefix_scores(row_cost: Callable[[int], torch.Tensor], m: int, gap: float) -> torch.Tensor:
    """Edit distances of every prefix: ``row_cost(i) -> [L, m]`` gives, for each lane, the match cost of
    text token ``i`` against key positions ``0 .. m-1``; returns ``[L, m]`` whose entry ``k - 1`` aligns
    ``y[:k]`` with the key's first ``k`` positions.

    ``D[i][j] = min(D[i-1][j-1] + cost[i][j], D[i-1][j] + gap, D[i][j-1] + gap)`` with ``D[i][0] = i gap``,
    ``D[0][j] = j gap``. Each row's ``D[i][j-1] + gap`` chain is ``gap * j + cummin(X - gap * j)``.
    """
    first = row_cost(0)
    lanes = first.shape[0]
    j = torch.arange(m + 1, dtype=first.dtype, device=first.device)
    d = (gap * j).expand(lanes, m + 1).clone()
    out = torch.empty(lanes, m, dtype=first.dtype, device=first.device)
    for i in range(1, m + 1):  # one tensor step per text token (the recurrence is sequential in i)
        cost = first if i == 1 else row_cost(i - 1)
        x = torch.empty_like(d)
        x[:, 0] = gap * i
        torch.minimum(d[:, :-1] + cost, d[:, 1:] + gap, out=x[:, 1:])
        x -= gap * j
        d = torch.cummin(x, dim=1).values.add_(gap * j)
        out[:, i - 1] = d[:, i]
    return out


class ExpEditDetector(Detector):
    """Smallest edit distance between the text and a rotation of the key, permutation p-value."""

    def score_ids(self, ids: torch.Tensor) -> Detection:
        """The statistic and its permutation p-value (``details["prefix_p_values"]`` for every prefix)."""
        m = len(ids)
        if m < self.min_tokens:
            raise self.too_short(m)
        s = self.scheme
        n, keys = s.key_length, s.prf_keys(s.n_resamples)
        rot = torch.arange(n)
        # float32 costs: the DP is memory-bound, and sums of a few hundred costs keep ~1e-4 absolute precision
        g = torch.stack([torch.log1p(-s.uniforms(rot, ids.unsqueeze(0), key)) for key in keys]).float()  # [R, key pos, token]
        if native.available():  # the C programme (rotations as vector lanes); the torch one below is its reference
            prefix = native.levenshtein_prefix_native(g.transpose(1, 2), s.gap)
        else:
            window = (rot.unsqueeze(1) + torch.arange(m).unsqueeze(0)) % n  # [rotation, j]: key position of column j

            def row_cost(i: int) -> torch.Tensor:  # [R * rotations, m]
                return g[:, :, i][:, window].reshape(-1, m)

            prefix = levenshtein_prefix_scores(row_cost, m, s.gap).view(len(keys), n, m).min(1).values  # [R, m]
        stats = prefix  # smaller = more evidence; row 0 is the key, rows 1.. the null sequences
        det = permutation_detection(s.name, -float(stats[0, -1]), (-stats[1:, -1]).tolist(), self.fpr, n_scored=m)
        det.details["prefix_p_values"] = ((1 + (stats[1:] <= stats[0]).sum(0)).double() / (1 + s.n_resamples)).tolist()
        return det
