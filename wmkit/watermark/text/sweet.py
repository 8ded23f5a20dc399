"""SWEET (Lee et al., ACL 2024, "Who Wrote this Code? Watermarking for Code Generation").

KGW restricted to high-entropy steps: the green bias is added only where the model's next-token
entropy exceeds ``entropy_threshold`` (nats), and detection scores only those tokens. The gate is
the *true* entropy, so **detection needs the generating model** (``detector(tokenizer, model=lm)``):
a baseline for Invisible Entropy (:class:`wmkit.watermark.text.ie.IE`), which replaces the model
with a small tagger.

>>> from wmkit.keys import SecretKey
>>> SWEET(SecretKey.generate()).config()["entropy_threshold"]
0.9
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import InputError
from ...params import Spec
from ...stats import Detection
from .green_list import GreenListProcessor
from .entropy_aware import ModelDetector, NeedsModel, ScoredText, shannon_entropy
from .kgw import KGW

__all__ = ["SWEET", "SweetDetector"]


class SweetDetector(ModelDetector):
    """Scores the tokens whose true entropy is above the threshold: exact binomial test."""

    def decide(self, items: list[ScoredText], evidence: bool = True) -> list[Detection | InputError]:
        """Gate each token on the model's entropy of its step."""
        tau = self.scheme.entropy_threshold  # type: ignore[attr-defined]
        out: list[Detection | InputError] = []
        for it, ent in zip(items, self.token_values(items, shannon_entropy)):
            try:
                out.append(self.binomial(it, torch.nan_to_num(ent, nan=-1.0) > tau, evidence, entropy_threshold=tau))
            except InputError as e:
                out.append(e)
        return out


@dataclass(frozen=True)
class SWEET(NeedsModel, KGW):
    """SWEET: KGW on the steps whose true entropy is above a threshold.

    Args:
        key, gamma, delta, context_width, seeding: as :class:`~wmkit.watermark.text.KGW`.
        entropy_threshold: steps with entropy (nats) above it carry the mark (default 0.9).
    """

    entropy_threshold: float = Spec("steps with entropy above it (nats) carry the mark", low=0.0, high=20.0,
                                    open_high=True).field(0.9)
    name: ClassVar[str] = "sweet"
    detector_class: ClassVar[type[ModelDetector]] = SweetDetector

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> GreenListProcessor:
        """Adds ``delta`` to green logits of the rows whose entropy (from these logits) is above the threshold."""
        tau = self.entropy_threshold
        return self.gated_processor(tokenizer, lambda ids, scores: shannon_entropy(scores) > tau)
