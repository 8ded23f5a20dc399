"""Unigram watermark (Zhao et al., ICLR 2024, "Provable Robust Watermarking for AI-Generated Text").

One fixed green list for every position: KGW with a context width of 0. Robust to edits (no
context to break) but its list can be learned from token frequencies. Detection counts each
distinct token once (repeated 1-grams are ignored), as the paper's detector does.

>>> from wmkit.keys import SecretKey
>>> Unigram(SecretKey.generate()).seeding_params()
(0, 'lefthash')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .green_list import GAMMA, GreenListScheme


@dataclass(frozen=True)
class Unigram(GreenListScheme):
    """Unigram watermark: a single keyed green list.

    Args:
        key: the secret (a :class:`wmkit.keys.SecretKey`).
        gamma: green fraction of the vocabulary (default 0.5, as in the paper).
        delta: logit bias for green tokens (default 2.0).
    """

    gamma: float = GAMMA.field(0.5)
    name: ClassVar[str] = "unigram"

    def seeding_params(self) -> tuple[int, str]:
        """``(0, "lefthash")``: no context, one list."""
        return 0, "lefthash"
