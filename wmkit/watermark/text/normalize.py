"""Detection-side text normalisation that defeats evasion characters but keeps genuine scripts.

An adversary can break a watermark's tokenization without changing what a reader sees: invisible
format characters (zero-width spaces and joiners, bidi controls, tag characters, the word joiner,
the byte-order mark, soft hyphens), variation selectors and the combining grapheme joiner, and
homoglyphs -- a Cyrillic ``а`` for a Latin ``a`` inside an English word. :func:`normalize_text`

1. applies NFC;
2. removes every character of Unicode category ``Cf`` (format), the variation selectors
   (U+FE00-FE0F, U+E0100-E01EF) and U+034F;
3. folds confusables inside *mixed-script words* (Unicode TS #39's mixed-script idea): in a word
   whose letters come from more than one script, each letter outside the word's majority script is
   replaced by its prototype in that script from Unicode's confusables table (shipped by the
   ``confusable-homoglyphs`` package); and, in a mostly-Latin text, a word wholly in another script
   whose every letter looks like an ASCII letter (a whole-script confusable such as Cyrillic "а" or
   "сор"; "Москва" has letters with no ASCII look-alike and stays). A word
   of Cyrillic or Greek text is left alone, so genuine Russian or Greek text keeps its tokens.

Pure-ASCII text returns after NFC in one check (the common case costs nothing more).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["normalize_text", "fold_mixed_script"]

_EXTRA_INVISIBLE = {0x034F} | set(range(0xFE00, 0xFE10)) | set(range(0xE0100, 0xE01F0))
_NON_ASCII_WORD = re.compile(r"\w*[^\x00-\x7f]\w*", re.UNICODE)
_LATIN_LETTER = re.compile(r"[A-Za-z]")
_ANY_WORD = re.compile(r"[^\W\d_]+")


@lru_cache(maxsize=1)
def _invisible() -> dict[int, None]:
    """A ``str.translate`` table deleting every format (Cf) character and the variation selectors."""
    import sys

    cf = (c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf")
    return dict.fromkeys([*cf, *_EXTRA_INVISIBLE])


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, dict[str, str]], object]:
    """``{char: {script: prototype}}`` from Unicode's confusables (single-character prototypes) and the
    script lookup of the ``confusable-homoglyphs`` package."""
    from confusable_homoglyphs import categories, utils

    raw = utils.load("confusables.json")
    fold: dict[str, dict[str, str]] = {}
    for ch, entries in raw.items():
        if len(ch) != 1:
            continue
        for e in entries:
            proto = e["c"]
            if len(proto) == 1:
                fold.setdefault(ch, {}).setdefault(categories.alias(proto), proto)
    return fold, categories


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    if ch.isascii():
        return "LATIN" if ch.isalpha() else "COMMON"
    return _tables()[1].alias(ch)  # type: ignore[attr-defined]


def fold_mixed_script(word: str, text_script: str | None = None) -> str:
    """``word`` with confusable letters folded, or unchanged.

    In a text mostly in ``text_script`` (``"LATIN"``), a word with letters from other scripts is
    folded to ``text_script``'s prototypes when it also has letters of ``text_script`` (mixed) or
    when every foreign letter looks like an ASCII letter (a whole-script confusable: Cyrillic "а",
    "сор"); a genuine foreign word ("Москва") stays. Otherwise a word that mixes scripts is folded to
    its own majority script.
    """
    letters = [c for c in word if c.isalpha()]
    scripts = {_script(c) for c in letters} - {"COMMON", "INHERITED"}
    fold = _tables()[0]
    if text_script is not None and scripts - {text_script}:
        foreign = [c for c in letters if _script(c) != text_script]
        if text_script in scripts or all(fold.get(c, {}).get(text_script, "\x80").isascii() for c in foreign):
            return "".join(fold.get(c, {}).get(text_script, c) if c in foreign else c for c in word)
        return word
    if len(scripts) < 2:
        return word
    major = max(scripts, key=lambda s: (sum(_script(c) == s for c in letters), s == "LATIN"))
    return "".join(fold.get(c, {}).get(major, c) if c.isalpha() and _script(c) != major else c for c in word)


def normalize_text(text: str) -> str:
    """NFC, invisible and variation characters removed, confusables folded in mixed-script words."""
    text = unicodedata.normalize("NFC", text)
    if text.isascii():
        return text
    text = text.translate(_invisible())
    around = _text_script(text)
    folded = _NON_ASCII_WORD.sub(lambda m: fold_mixed_script(m.group(), around), text)
    return unicodedata.normalize("NFC", folded)  # removals and folds can bring a base and a mark together


def _text_script(text: str) -> str | None:
    """``"LATIN"`` when most words that show their script are Latin, else ``None``. A word with an ASCII
    letter votes Latin; a word whose letters all look like ASCII letters abstains (it could be
    either: an attacked English word or Russian "сор"); any other word votes for its script. So an
    English text with half its letters swapped for homoglyphs is Latin, a Russian text is not."""
    votes: dict[str, int] = {}
    fold = _tables()[0]
    for word in _ANY_WORD.findall(text):
        if _LATIN_LETTER.search(word):
            s: str | None = "LATIN"
        elif all(fold.get(c, {}).get("LATIN", "\x80").isascii() for c in word if c.isalpha()):
            s = None
        else:
            s = next((_script(c) for c in word if c.isalpha()), None)
        if s is not None:
            votes[s] = votes.get(s, 0) + 1
    return "LATIN" if votes and votes.get("LATIN", 0) > sum(votes.values()) / 2 else None
