"""Text watermarks: logits processors for ``model.generate`` and key-only detectors.

:data:`SCHEMES` is the registry: adding a scheme is one module and one line here. Every scheme is a
frozen dataclass config with ``processor(tokenizer, temperature, top_p, top_k, min_p)`` and
``detector(tokenizer, fpr=..., ...)`` returning a :class:`~wmkit.watermark.text.detector.TextDetector`;
``key_kind`` says which key it takes (``"wmkit"``: a key file; ``"vllm"``: vLLM's integer key).
"""

from __future__ import annotations

from typing import Any

from ...errors import InputError
from .green_list import GreenListDetector, GreenListProcessor, GreenListScheme
from .detector import normalize_text
from .detector import Capabilities, TextDetector
from .kgw import KGW
from .unigram import Unigram
from .sweet import SWEET
from .ewd import EWD
from .ie import IE
from .exp_edit import ExpEdit
from .gumbel import Gumbel
from .synthid import SynthID
from .vllm_native import VllmDualKeyGumbel, VllmGumbel, VllmSBW
from .semantic import KSemStamp, PMark, SemStamp

SCHEMES: dict[str, type] = {
    "kgw": KGW, "unigram": Unigram, "sweet": SWEET, "ewd": EWD, "ie": IE, "gumbel": Gumbel, "exp-edit": ExpEdit,
    "synthid": SynthID, "vllm-gumbel": VllmGumbel, "vllm-dual-key-gumbel": VllmDualKeyGumbel, "vllm-sbw": VllmSBW,
    "semstamp": SemStamp, "k-semstamp": KSemStamp, "pmark": PMark,
}

__all__ = ["SCHEMES", "ExpEdit", "Gumbel", "SynthID", "KGW", "Unigram", "SWEET", "EWD", "IE", "VllmGumbel", "VllmDualKeyGumbel", "VllmSBW", "SemStamp", "KSemStamp", "PMark",
           "GreenListScheme", "GreenListProcessor", "GreenListDetector", "Capabilities", "TextDetector", "make_scheme",
           "key_kind", "normalize_text"]


def key_kind(name: str) -> str:
    """``"wmkit"`` (a hex key file) or ``"vllm"`` (vLLM's integer key) for scheme ``name``."""
    if name not in SCHEMES:
        raise InputError(f"unknown scheme {name!r}; expected one of: {', '.join(SCHEMES)}")
    return getattr(SCHEMES[name], "key_kind", "wmkit")


def make_scheme(name: str, key: Any, **params: Any) -> Any:
    """Build the scheme called ``name`` (a key of :data:`SCHEMES`); ``None`` params take defaults."""
    key_kind(name)
    return SCHEMES[name].from_config({k: v for k, v in params.items() if v is not None}, key)
