"""Text watermarks: logits processors for ``model.generate`` and key-only detectors."""

from __future__ import annotations

from typing import Any

from ...errors import InputError
from ...keys import SecretKey
from .base import GreenListDetector, GreenListProcessor, GreenListScheme, normalize_text
from .kgw import KGW
from .unigram import Unigram
from .sweet import SWEET
from .ewd import EWD
from .ie import IE

SCHEMES: dict[str, type[GreenListScheme]] = {"kgw": KGW, "unigram": Unigram, "sweet": SWEET, "ewd": EWD, "ie": IE}
NEEDS_MODEL = ("sweet", "ewd")  # baselines whose detector needs the generating model

__all__ = ["SCHEMES", "NEEDS_MODEL", "KGW", "Unigram", "SWEET", "EWD", "IE", "GreenListScheme", "GreenListProcessor", "GreenListDetector", "make_scheme", "normalize_text"]


def make_scheme(name: str, key: SecretKey, **params: Any) -> GreenListScheme:
    """Build the scheme called ``name`` (a key of :data:`SCHEMES`); ``None`` params take defaults."""
    if name not in SCHEMES:
        raise InputError(f"unknown scheme {name!r}; expected one of: {', '.join(SCHEMES)}")
    return SCHEMES[name].from_config({k: v for k, v in params.items() if v is not None}, key)
