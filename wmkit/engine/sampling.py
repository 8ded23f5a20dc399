"""A sampler's settings and its filters, applied as vLLM's sampler applies them (``vllm==0.30.0``,
``vllm/v1/worker/gpu/sample/sampler.py``): the logits (bias and penalties already in) are divided
by the temperature, then ``min_p`` drops every token whose probability is below ``min_p`` times the
most likely one's (on logits: below ``max + log(min_p)``, in float32), then ``top_k`` keeps the
tokens at or above the ``k``-th largest logit (ties stay), then ``top_p`` keeps the nucleus (the
least likely tokens whose total probability is at most ``1 - top_p`` go; the most likely always
stays) -- top-k and top-p on one ascending sort, as vLLM's PyTorch path does
(``vllm/v1/sample/ops/topk_topp_sampler.py``), so the same logits keep the same tokens.

Every text scheme's processor and ``wm serve``'s sampler use this one filter. (transformers'
``generate`` applies ``min_p`` after ``top_p`` instead; the two orders differ only when a request
sets both.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputError

__all__ = ["Sampling"]


@dataclass(frozen=True)
class Sampling:
    """Temperature (0: greedy, no filter), nucleus ``top_p`` (1: off), ``top_k`` (0 or -1: off; at
    least the vocabulary: off) and ``min_p`` (0: off). Out-of-range values raise :class:`InputError`."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= -1):
            raise InputError(f"top_k must be an integer: 0 or -1 (off) or at least 1, got {self.top_k!r}")
        if not (isinstance(self.min_p, (int, float)) and 0.0 <= self.min_p <= 1.0):
            raise InputError(f"min_p must be in [0, 1], got {self.min_p!r}")

    @property
    def filters(self) -> bool:
        """Whether any of ``top_p``, ``top_k``, ``min_p`` is on."""
        return self.top_p < 1.0 or self.top_k > 0 or self.min_p > 0.0

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits [..., V]`` divided by the temperature and filtered (:meth:`filter`); a new tensor,
        in ``logits``' dtype. At temperature 0 (greedy) the logits are returned as they are."""
        if self.temperature == 0:
            return logits
        return self.filter(logits / self.temperature if self.temperature != 1 else logits.clone())

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """``-inf`` on the tokens of temperature-scaled ``logits [..., V]`` that ``min_p``, then
        ``top_k``, then ``top_p`` drop (the module docstring gives the rules); unchanged if all are off."""
        if self.min_p > 0:
            log_min_p = torch.log(torch.tensor(self.min_p, dtype=torch.float32)).to(logits.dtype)
            logits = logits.masked_fill(logits < logits.amax(-1, keepdim=True) + log_min_p, float("-inf"))
        vocab = logits.shape[-1]
        top_k = self.top_k if 0 < self.top_k < vocab else 0
        if not top_k and self.top_p >= 1.0:
            return logits
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=False)
        if top_k:
            kth = sorted_logits[..., vocab - top_k : vocab - top_k + 1]
            sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
        if self.top_p < 1.0:
            drop = sorted_logits.softmax(-1).cumsum(-1) <= (1 - torch.tensor(self.top_p, dtype=torch.float32)).to(logits.dtype)
            drop[..., -1] = False  # the most likely token always stays
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(-1, idx, sorted_logits)
