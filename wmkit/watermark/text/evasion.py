"""Evasion attacks: characters a reader does not see, or cannot tell apart, built from sources that
are independent of wmkit's normaliser (so the defence is not tested against its own table).

* script look-alikes (``cyrillic``, ``greek``, ``armenian``, ``cherokee``) and Latin small capitals
  (``smallcaps``): the ``homoglyphs`` package's own confusables data (not the
  ``confusable-homoglyphs`` table the normaliser folds with), grouped by each glyph's Unicode name;
* ``fullwidth``, ``math`` (mathematical alphanumerics, every style), ``circled``: read from the
  Unicode character database's decomposition tags (``<wide>``, ``<font>``, ``<circle>``) of every
  code point that decomposes to an ASCII letter;
* ``combining`` (a combining mark after a letter), ``invisible`` (format characters that are not
  bidi controls or tags), ``bidi``, ``tags``, ``variation`` (variation selectors), ``controls``
  (C0/C1 controls but tab, newline and CR), ``spaces`` (every space a random other space
  separator): character classes read from the Unicode categories and ranges;
* ``case``: the case of a letter flipped (a published remover's character mode).

Each class replaces (or inserts after) a fraction ``rate`` of the eligible characters; ``rate=1`` is
the strongest form. ``homoglyphs`` (Cyrillic and Greek) and ``all`` keep the earlier kinds' names.

>>> import random
>>> Evasion("fullwidth", 1.0)(["quick"], random.Random(0))[0]
'ｑｕｉｃｋ'
"""

from __future__ import annotations

import json
import random
import string
import sys
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

from ...errors import InputError
from .attacks import Attack, _check_rate

__all__ = ["EVASION_CLASSES", "EVASION_KINDS", "Evasion", "substitutions", "insertions"]

SUBSTITUTION_CLASSES = ("cyrillic", "greek", "armenian", "cherokee", "fullwidth", "math", "circled", "smallcaps")
INSERTION_CLASSES = ("combining", "invisible", "bidi", "tags", "variation", "controls")
EVASION_CLASSES = (*SUBSTITUTION_CLASSES, *INSERTION_CLASSES, "spaces", "case")
EVASION_KINDS = (*EVASION_CLASSES, "homoglyphs", "all")
_TAGS = {"fullwidth": "<wide>", "math": "<font>", "circled": "<circle>"}
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


@lru_cache(maxsize=1)
def _homoglyph_data() -> dict[str, list[str]]:
    import os

    import homoglyphs

    with open(os.path.join(os.path.dirname(homoglyphs.__file__), "confusables.json"), encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def substitutions(cls: str) -> dict[str, list[str]]:
    """ASCII letter -> its look-alikes of class ``cls`` (one of :data:`SUBSTITUTION_CLASSES`)."""
    out: dict[str, list[str]] = {}
    if cls in _TAGS:
        for c in range(0x80, sys.maxunicode + 1):
            dec = unicodedata.decomposition(chr(c)).split()
            if len(dec) == 2 and dec[0] == _TAGS[cls] and chr(int(dec[1], 16)) in string.ascii_letters:
                out.setdefault(chr(int(dec[1], 16)), []).append(chr(c))
        return out
    prefix = {"smallcaps": "LATIN LETTER SMALL CAPITAL"}.get(cls, cls.upper() + " ")
    for letter in string.ascii_letters:
        for g in _homoglyph_data().get(letter, []):
            if len(g) == 1 and unicodedata.name(g, "").startswith(prefix):
                out.setdefault(letter, []).append(g)
    return out


@lru_cache(maxsize=None)
def insertions(cls: str) -> tuple[str, ...]:
    """The characters class ``cls`` inserts (one of :data:`INSERTION_CLASSES`)."""
    if cls == "combining":
        return tuple(chr(c) for c in range(0x300, 0x370))
    if cls == "bidi":
        return tuple(chr(c) for c in sorted(_BIDI))
    if cls == "tags":
        return tuple(chr(c) for c in range(0xE0020, 0xE007F))
    if cls == "variation":
        return tuple(chr(c) for c in [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])
    if cls == "controls":
        return tuple(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)] if chr(c) not in "\t\n\r")
    if cls == "invisible":  # format characters that are neither bidi controls nor tags, and the CGJ
        return tuple(chr(c) for c in range(0x80, 0x20000) if unicodedata.category(chr(c)) == "Cf"
                     and c not in _BIDI and not 0xE0000 <= c <= 0xE007F) + ("\u034f",)
    raise InputError(f"evasion: no insertion class {cls!r}")


@lru_cache(maxsize=1)
def _spaces() -> tuple[str, ...]:
    return tuple(chr(c) for c in range(0x80, 0x3001) if unicodedata.category(chr(c)) == "Zs")


@dataclass
class Evasion(Attack):
    """Replace or insert, at a fraction ``rate`` of the eligible characters, the characters of one
    evasion class (:data:`EVASION_CLASSES`), of ``homoglyphs`` (Cyrillic and Greek look-alikes) or
    of ``all`` (homoglyphs, invisible, bidi and variation characters together).

    Called as ``attack(texts, rng) -> list[str]`` like every :class:`~wmkit.watermark.text.attacks.Attack`.
    """

    kind: str = "all"
    rate: float = 0.5
    name: str = field(init=False, default="evasion")

    def __post_init__(self) -> None:
        _check_rate("evasion", self.rate)
        if self.kind not in EVASION_KINDS:
            raise InputError(f"evasion: kind must be one of {', '.join(EVASION_KINDS)}, got {self.kind!r}")
        self.name = f"evasion_{self.kind}"

    def _parts(self) -> tuple[dict[str, list[str]], tuple[str, ...]]:
        kinds = {"homoglyphs": ("cyrillic", "greek"), "all": ("cyrillic", "greek", "invisible", "bidi", "variation")}
        glyphs: dict[str, list[str]] = {}
        inserts: list[str] = []
        for k in kinds.get(self.kind, (self.kind,)):
            if k in SUBSTITUTION_CLASSES:
                for letter, gs in substitutions(k).items():
                    glyphs.setdefault(letter, []).extend(gs)
            elif k in INSERTION_CLASSES:
                inserts.extend(insertions(k))
        return glyphs, tuple(inserts)

    def one(self, text: str, rng: random.Random) -> str:
        """The attacked ``text``."""
        if self.kind == "spaces":
            return "".join(rng.choice(_spaces()) if ch == " " and rng.random() < self.rate else ch for ch in text)
        if self.kind == "case":
            return "".join(ch.swapcase() if ch.isalpha() and rng.random() < self.rate else ch for ch in text)
        glyphs, inserts = self._parts()
        letters_only = self.kind == "combining"
        out = []
        for ch in text:
            if ch in glyphs and rng.random() < self.rate:
                ch = rng.choice(glyphs[ch])
            out.append(ch)
            eligible = ch.isalpha() if letters_only else not ch.isspace()
            if inserts and eligible and rng.random() < self.rate:
                out.append(rng.choice(inserts))
        return "".join(out)
