"""Gumbel-max (Aaronson 2022; Fernandez et al. 2023's exact test): a distortion-free watermark on wmkit's PRF v2.

Each step draws keyed uniforms ``u_v`` for every candidate from the context (the ``h`` previous
completion tokens, :mod:`wmkit.prf` lefthash words mapped by :func:`wmkit.prf.uniform`) and takes
``argmax_v u_v^(1 / p_v)`` = ``argmax_v logits_v / T - log(-log u_v)``: for a fresh context this *is* a
sample from the model's distribution, so the mark costs no quality. Detection sums
``-log(1 - u_t)`` over the completion's tokens with a first-seen context: each term is Exp(1)
under no mark, so the sum is exactly Gamma(n, 1) and the p-value is exact. A context that already
occurred in the completion is sampled normally (``deduplicate_contexts="single_turn"``), which
stops the keyed choice from looping; it is scored once.

The context is the completion's own tokens, as in vLLM's native Gumbel watermark, so detection
needs only the completion, never the prompt. The first ``context_width`` tokens are sampled normally
and not scored (vLLM's ``skip_partial_context``): a context of padding alone would fix the first
tokens of every completion of a prompt.

>>> from wmkit.keys import SecretKey
>>> Gumbel(SecretKey.generate()).config()["context_width"]
4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ... import prf
from ...keys import KeyedConfig, SecretKey
from ...params import Spec, check_params
from ...stats import Detection, gamma_detection
from .green_list import PRF_VERSION, check_wmkit_key
from .gumbel_family import DEDUP, DEDUP_HISTORY, CompletionDetector, GumbelProcessor, gumbel_max
from .detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, Capabilities
from ...engine.sampling import Sampling

__all__ = ["Gumbel"]


@dataclass(frozen=True)
class Gumbel(KeyedConfig):
    """Gumbel-max watermark keyed by a wmkit key file.

    Args:
        key: the secret (a :class:`wmkit.keys.SecretKey`).
        context_width: completion tokens in the PRF context (1..16, default 4).
        deduplicate_contexts: ``"single_turn"`` (default: a repeated context is sampled normally) or ``"none"``.
        deduplicate_contexts_max_history: positions searched for a repeat (default 8192; ``None``: all).
    """

    key: SecretKey = field(repr=False)
    context_width: int = Spec("completion tokens in the PRF context", low=1, high=16).field(4)
    deduplicate_contexts: str = DEDUP.field("single_turn")
    deduplicate_contexts_max_history: int | None = DEDUP_HISTORY.field(8192)
    prf_version: int = PRF_VERSION.field(prf.PRF_VERSION)
    name: ClassVar[str] = "gumbel"
    capabilities: ClassVar[Capabilities] = Capabilities()
    skip_partial_context: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_wmkit_key(self.name, self.key, self.prf_version)
        check_params(self)

    def prf_key(self) -> tuple[int, int, int, int]:
        """The PRF v2 key of this scheme."""
        return self.key.prf_key(f"text/{self.name}")

    def uniforms(self, contexts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Keyed uniforms (float64) of ``tokens`` (``[V]`` for every candidate, or ``[..., 1]``) after ``contexts[..., h]``."""
        key = self.prf_key()
        state = prf.context_state(contexts, key, prf.MODE_LEFTHASH)
        return prf.uniform(prf.token_words([s.unsqueeze(-1) for s in state], tokens.to(contexts.device), key))

    def choose(self, logits: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """The keyed Gumbel-max choice on processed logits ``[B, V]`` (float64 noise)."""
        vocab = torch.arange(logits.shape[-1], device=logits.device)
        return gumbel_max(logits.double(), self.uniforms(contexts, vocab))

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> GumbelProcessor:
        """A processor that leaves only the keyed choice at ``temperature`` (after the ``top_p`` / ``top_k`` / ``min_p`` filters) finite."""
        return GumbelProcessor(self, len(tokenizer) if tokenizer is not None else None,
                               Sampling(temperature, top_p, top_k, min_p))

    def score(self, contexts: torch.Tensor, targets: torch.Tensor, fpr: float) -> Detection:
        """``sum -log(1 - u_t)``: exactly Gamma(n, 1) under no mark."""
        u = self.uniforms(contexts, targets.unsqueeze(-1)).squeeze(-1)
        return gamma_detection(self.name, float((-torch.log1p(-u)).sum()), len(targets), fpr)

    def detector(self, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = DEFAULT_MIN_TOKENS,
                 **options: Any) -> CompletionDetector:
        """A detector on completion text or token ids (key and tokenizer only)."""
        return CompletionDetector(self, tokenizer, fpr=fpr, min_tokens=min_tokens, **options)
