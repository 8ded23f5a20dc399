"""EWD (Lu et al., ACL 2024, "An Entropy-based Text Watermarking Detection Method").

Generation is plain KGW. Detection weighs every token by the spike entropy of its step (how far a
green bias could move the model there), so low-entropy tokens -- which the bias could not move --
count little: ``z = (sum w g - gamma sum w) / sqrt(gamma (1 - gamma) sum w^2)``. The weights need
the model's distributions, so **detection needs the generating model**.

Weights: ``w = SE - 1 / (1 + z)``, the spike entropy above its floor (a one-hot step weighs 0).
Lu et al.'s released code subtracts the text's own minimum instead; the fixed floor keeps the
weights independent of the text's other tokens.

>>> from wmkit.keys import SecretKey
>>> EWD(SecretKey.generate()).config()["scheme"]
'ewd'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import InputError
from ...stats import Detection
from ...stats import weighted_z_detection
from .entropy_aware import ModelDetector, NeedsModel, ScoredText, spike_entropy, spike_modulus
from .kgw import KGW

__all__ = ["EWD", "EwdDetector"]


class EwdDetector(ModelDetector):
    """Weighted z over the text's tokens; normal-tail p-value (see :func:`wmkit.stats.weighted_z_detection`)."""

    def decide(self, items: list[ScoredText], evidence: bool = True) -> list[Detection | InputError]:
        """Weight each candidate token by its step's spike entropy above the floor."""
        g, d = self.scheme.gamma, self.scheme.delta
        floor = 1.0 / (1.0 + spike_modulus(g, d))
        out: list[Detection | InputError] = []
        for it, se in zip(items, self.token_values(items, lambda lg: spike_entropy(lg, g, d))):
            w = torch.where(it.candidate, torch.nan_to_num(se - floor, nan=0.0).clamp(min=0.0), torch.zeros(()))
            n = int(it.candidate.sum())
            if n < self.min_tokens:
                out.append(self.too_short(n))
                continue
            ev = {"token_ids": it.ids[it.start:].tolist(), "scored": it.candidate[it.start:].tolist(),
                  "green": it.green[it.start:].tolist(), "weight": w[it.start:].tolist()} if evidence else None
            det = weighted_z_detection(self.scheme.name, it.green[it.candidate].double().numpy(),
                                       w[it.candidate].double().numpy(), g, self.fpr, tokens_total=len(it.ids) - it.start)
            out.append(dataclasses.replace(det, evidence=ev))
        return out


@dataclass(frozen=True)
class EWD(NeedsModel, KGW):
    """EWD: KGW generation, entropy-weighted detection (parameters as :class:`~wmkit.watermark.text.KGW`)."""

    name: ClassVar[str] = "ewd"
    detector_class: ClassVar[type[ModelDetector]] = EwdDetector
