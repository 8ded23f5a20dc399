"""KGW: the green-list watermark of Kirchenbauer et al. (ICML 2023, "A Watermark for LLMs").

At each step the ``h`` previous tokens seed a green list of ``gamma * |V|`` tokens whose logits
get ``+delta``. ``seeding="lefthash"`` hashes the context alone; ``"selfhash"`` lets the
candidate token take part in its own seed (an anchored min-hash over the context, after
Kirchenbauer et al., "On the Reliability of Watermarks", Algorithm 3), which makes the mark
harder to learn and more robust to edits. Both are evaluated for the whole vocabulary at once.

>>> from wmkit.keys import SecretKey
>>> KGW(SecretKey.generate(), gamma=0.25, delta=2.0, context_width=4, seeding="selfhash").config()["seeding"]
'selfhash'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...params import Spec
from .green_list import SEEDING, GreenListScheme

MAX_CONTEXT_WIDTH = 8
CONTEXT_WIDTH = Spec("previous tokens that seed the green list (h)", low=1, high=MAX_CONTEXT_WIDTH)


@dataclass(frozen=True)
class KGW(GreenListScheme):
    """KGW green-list watermark.

    Args:
        key: the secret (a :class:`wmkit.keys.SecretKey`).
        gamma: green fraction of the vocabulary (default 0.25).
        delta: logit bias for green tokens (default 2.0).
        context_width: ``h``, number of previous tokens that seed the list (1..8, default 1).
        seeding: ``"lefthash"`` (default) or ``"selfhash"``.
    """

    context_width: int = CONTEXT_WIDTH.field(1)
    seeding: str = SEEDING.field("lefthash")
    name: ClassVar[str] = "kgw"

    def seeding_params(self) -> tuple[int, str]:
        """``(context_width, seeding)``."""
        return self.context_width, self.seeding
