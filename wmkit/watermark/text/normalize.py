"""Detection-side text normalisation that defeats evasion characters but keeps genuine scripts.

An adversary can break a watermark's tokenization without changing what a reader sees (or what a
reader can tell apart). :func:`normalize_text` undoes, in order:

1. **controls and invisibles**: NFC; C0/C1 control characters other than tab and newline are
   removed (``\\r\\n`` becomes ``\\n``); every format (``Cf``) character -- zero-width spaces and
   joiners, bidi controls, tag characters, the word joiner, the BOM, soft hyphens -- the variation
   selectors and U+034F are removed;
2. **compatibility forms**: a letter, digit or enclosed letter whose NFKC form is letters or digits
   takes that form (fullwidth ``ｑ``, mathematical ``𝐪 𝓆``, circled ``ⓠ``, ligatures ``ﬁ``), and
   Latin small capitals (``ᴀ``) become their letter;
3. **spaces**: every space separator (``Zs``: U+00A0, U+2000-U+200A, U+3000 ...) stands for a
   space, and NEL and U+2028/U+2029 for a newline -- unless it was *inserted inside
   words*: in each run of text it joins, the words it splits are compared with the words it joins
   when removed, against an English word list (:func:`_span_inserted`); a tab between two word
   characters is judged the same way (removed, or kept). A fold never makes a run of spaces that
   was not there: the text's whitespace stays as generation emitted it;
4. **combining marks** on Latin letters that do not compose with them (``q́``) are removed, and
   when more than 30% of a text's Latin letters (and at least 8) carry a mark, all marks on Latin
   letters are (genuine French or German text carries 2-4%, an accent-heavy French phrase 20%;
   Vietnamese text, with more, loses its marks: a change that cannot make a false positive);
5. **homoglyphs** inside *mixed-script words* (Unicode TS #39's idea): in a word whose letters come
   from more than one script, each letter outside the word's majority script is replaced by its
   prototype from Unicode's confusables table (``confusable-homoglyphs``); in a mostly-Latin
   text, a word wholly in another script whose every letter looks like an ASCII letter (Cyrillic
   "сор") is folded too, while "Москва" (letters with no ASCII look-alike) and "СССР" (all
   capitals) stay. Russian or Greek text keeps its tokens;
6. **case flips** (``wAtEr``, ``rIVER``): a word of the English list whose case is not what a writer
   produces is given back the casing most likely under a letter-flip model whose rate is estimated
   from the text itself (:func:`_restore_case`): acronyms, CamelCase identifiers, known mixed-case
   words (``iPhone``) and sentence starts stay.

Every decision that looks at the whole text (its script; the mark rate; the flip rate) reads
additive counts, a :class:`TextProfile`; a stream
builds the profile of the whole text first and normalises each chunk with it, so a streamed text
is normalised exactly as the whole text is. Plain ASCII prose returns after one regular-expression
check.
"""

from __future__ import annotations

import gzip
import math
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Iterable

__all__ = ["TextProfile", "normalize_text", "fold_mixed_script", "profile_text"]

_EXTRA_INVISIBLE = {0x034F} | set(range(0xFE00, 0xFE10)) | set(range(0xE0100, 0xE01F0))
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"  # combining marks
# a word as the folds see it: word characters and the marks on them (a mark, or a symbol, never
# joins or splits words, so removing a mark cannot change what a second pass reads as a word)
_FOLD_WORD = re.compile(rf"(?:\w|[{_MARKS}])+")
_LATIN_LETTER = re.compile(r"[A-Za-z]")
_ANY_WORD = re.compile(r"[^\W\d_]+")
_ASCII_WORD = re.compile(r"[A-Za-z]+")
# ASCII text needs the slow path only for controls, CRLF, a tab inside a word, or a case anomaly
_ASCII_TROUBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r\n|\w\t\w|[a-z][A-Z]|[A-Z]{2}[a-z]")
_NEWLINE_LIKE = "\x85\u2028\u2029"  # NEL and the line/paragraph separators (VT, FF: controls, removed)
_MARK_RATE, _MIN_MARKED = 0.3, 8  # above 30% (and 8 marks), every mark on a Latin letter is an attack's
_SENTENCE_END = ".!?\n"
_STYLE_TAGS = {"<font>", "<wide>", "<narrow>", "<circle>", "<square>", "<super>", "<sub>", "<small>"}


@lru_cache(maxsize=1)
def _removals() -> dict[int, None]:
    """``str.translate`` table deleting controls (but tab, newline, CR and NEL, which stands for a
    newline), format characters, variation selectors and U+034F."""
    drop = []
    for c in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(c))
        if (cat == "Cc" and chr(c) not in "\t\n\r" + _NEWLINE_LIKE) or cat == "Cf":
            drop.append(c)
    return dict.fromkeys([*drop, *_EXTRA_INVISIBLE])


@lru_cache(maxsize=1)
def _compat() -> dict[int, str]:
    """``str.translate`` table of the compatibility forms of letters and digits (NFKC when it gives
    letters or digits) and the Latin small capitals (by their Unicode names)."""
    out: dict[int, str] = {}
    for c in range(0xA0, sys.maxunicode + 1):
        ch = chr(c)
        cat = unicodedata.category(ch)
        if cat[0] not in "LNS":
            continue
        name = unicodedata.name(ch, "")
        if cat[0] == "S" and not any(w in name for w in ("CIRCLED", "PARENTHESIZED", "SQUARED")):
            continue  # a symbol only when it is an enclosed letter or digit (not TM or No)
        k = unicodedata.normalize("NFKC", ch)
        tag = unicodedata.decomposition(ch).split(" ")[0]
        # to ASCII letters or digits, or a styled form (math, wide, enclosed) of another script's
        # letter; not a <compat> variant such as Greek lunate sigma, whose look-alike is Latin c
        if k != ch and k.isalnum() and (k.isascii() or tag in _STYLE_TAGS):
            out[c] = k
            continue
        if name.startswith("LATIN LETTER SMALL CAPITAL ") and len(name) == 28:
            out[c] = name[-1].lower()
    return out


@lru_cache(maxsize=1)
def _words() -> tuple[frozenset[str], frozenset[str]]:
    """The English word list (lowercase) and the known mixed-case words (``wmkit/data/words_en.txt.gz``,
    made by ``scripts/make_wordlist.py`` from the default tokenizer's vocabulary)."""
    raw = gzip.decompress(resources.files("wmkit").joinpath("data/words_en.txt.gz").read_bytes()).decode("ascii")
    lower, _, mixed = raw.partition("#mixed\n")
    return frozenset(lower.split()), frozenset(mixed.split())


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, dict[str, str]], object]:
    """``{char: {script: prototype}}`` from Unicode's confusables (single-character prototypes) and the
    script lookup of the ``confusable-homoglyphs`` package."""
    from confusable_homoglyphs import categories, utils

    raw = utils.load("confusables.json")
    compat = _compat()
    fold: dict[str, dict[str, str]] = {}
    for ch, entries in raw.items():
        if len(ch) != 1:
            continue
        for e in entries:
            proto = e["c"]
            if len(proto) == 1:
                # straight to the final form: Greek tau's Latin prototype is a small capital T, which
                # step 2 folds to "t" -- folding in one pass what a second pass would fold again
                fold.setdefault(ch, {}).setdefault(categories.alias(proto), proto.translate(compat))
    return fold, categories


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    if ch.isascii():
        return "LATIN" if ch.isalpha() else "COMMON"
    return _tables()[1].alias(ch)  # type: ignore[attr-defined]


# -- the profile: additive counts behind the text-wide decisions ----------------------------------------


@dataclass
class TextProfile:
    """Counts over a text that the text-wide decisions read; ``a + b`` is the profile of the two
    texts together (a stream adds its chunks' profiles).

    Attributes:
        votes: words per script (:func:`_text_script`'s vote).
        marked, latin: Latin letters carrying a combining mark, and Latin letters.
        flipped, flippable: upper-case letters after the first in list words (3+ letters) that are
            not all upper case, and all their letters after the first (the flip rate's evidence).
        upper_inner: letters after the first of all-upper-case list words (3+ letters): flips too
            when the mixed words say most letters were flipped (a flipped lower-case word is upper).
        mid_words, mid_capitals: those list words not at a sentence start, and how many of them
            begin with a capital (the writer's capitals, through the flips: :meth:`capital_rate`).
    """

    votes: dict[str, int] = field(default_factory=dict)
    marked: int = 0
    latin: int = 0
    flipped: int = 0
    flippable: int = 0
    upper_inner: int = 0
    mid_words: int = 0
    mid_capitals: int = 0

    def __add__(self, other: "TextProfile") -> "TextProfile":
        votes = dict(self.votes)
        for k, v in other.votes.items():
            votes[k] = votes.get(k, 0) + v
        return TextProfile(votes, self.marked + other.marked, self.latin + other.latin,
                           self.flipped + other.flipped, self.flippable + other.flippable,
                           self.upper_inner + other.upper_inner, self.mid_words + other.mid_words,
                           self.mid_capitals + other.mid_capitals)

    def script(self) -> str | None:
        """``"LATIN"`` when most words that show their script are Latin, else ``None``."""
        return "LATIN" if self.votes and self.votes.get("LATIN", 0) > sum(self.votes.values()) / 2 else None

    def strip_marks(self) -> bool:
        """Whether more than 30% of the Latin letters (and at least 8) carry a combining mark."""
        return self.marked >= _MIN_MARKED and self.marked > _MARK_RATE * self.latin

    def flip_rate(self) -> float:
        """The estimated rate of case flips, shrunk toward 0.001 with a 10-letter pseudo-count. When
        most letters of the words that are not all upper case were flipped, the all-upper-case
        list words were flipped lower-case ones and count too (a genuine all-capitals text has
        almost no such mixed words, so its rate stays low)."""
        if self.flipped >= 3 and self.flipped > 0.5 * self.flippable:
            return (self.flipped + self.upper_inner + 0.01) / (self.flippable + self.upper_inner + 10)
        return (self.flipped + 0.01) / (self.flippable + 10)

    def capital_rate(self, p: float) -> float:
        """The share of list words a writer capitalised mid-sentence, from the observed share ``f``
        (shrunk toward 6% with 20 words) and the flip rate: ``f = t (1 - p) + (1 - t) p``; in [0.02, 0.5]."""
        f = (self.mid_capitals + 0.06 * 20) / (self.mid_words + 20)
        if abs(1 - 2 * p) < 0.1:
            return 0.06
        return min(max((f - p) / (1 - 2 * p), 0.02), 0.5)

    def restores_case(self) -> bool:
        """Whether any letter after a run's first is upper case (else no casing is odd)."""
        return self.flipped > 0


def _cleaned(text: str) -> str:
    """Steps 1-3 (word-local): NFC, CRLF, controls, invisibles, compatibility forms, spaces."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n")
    if not text.isascii():
        text = unicodedata.normalize("NFC", text.translate(_removals()).translate(_compat()))
    elif _ASCII_TROUBLE.search(text):
        text = text.translate(_removals())
    while (folded := _fold_spaces(text).replace("\r\n", "\n")) != text:  # a fold can change how a neighbour reads
        text = folded
    return text


def _space_like(ch: str) -> bool:
    return ch in _NEWLINE_LIKE or (ch != " " and unicodedata.category(ch) == "Zs")


_ODD = r"[\t\x85\u2028\u2029\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"  # a tab, NEL, LS, PS, every Zs but " "
_ODD_SPACE = re.compile(_ODD)
_SPAN = re.compile(rf"\S*(?:{_ODD}\S*)+")  # non-space text joined by them (\s holds them all)


def _dict_letters(text: str, shortest: int = 3) -> int:
    """Evidence of list words in ``text``: the sum of their squared lengths (marks on Latin letters
    ignored, as a mark rate strips them)."""
    words = _words()[0]
    if not text.isascii():  # read as a Latin text would be folded (marks, look-alikes)
        text = _fold_words(unicodedata.normalize("NFD", text), "LATIN")
        text = _LATIN_MARKED.sub(r"\1", text)
    # squared lengths: one long word outweighs the two fragments it splits into ("mist" + "aken")
    return sum(len(w) ** 2 for w in _ANY_WORD.findall(text) if len(w) >= shortest and w.lower() in words)


def _span_inserted(span: str, ch: str, chars: set[str]) -> bool:
    """Whether ``ch`` was inserted inside the words of ``span`` (a run of non-space text joined by
    space-like characters): read as removed, the span holds more list-word evidence
    (:func:`_dict_letters`) than read as a space (a tie, or no list word either way, reads it as a
    space)."""
    others = chars - {ch}
    base = "".join(" " if c in others else c for c in span) if others else span
    # a two-letter word counts for the joined reading only: split into "e" + "c", "ec" was a word,
    # while "of" + "it" is no evidence that a separator stood there
    return _dict_letters(base.replace(ch, ""), 2) > _dict_letters(base.replace(ch, " "))


@lru_cache(maxsize=65536)
def _vote(word: str) -> str | None:
    """The script a word votes for (:meth:`TextProfile.script`): Latin if it has an ASCII letter, none
    if every letter looks like an ASCII letter (an attacked English word or Russian "сор"), else its
    first letter's script."""
    if _LATIN_LETTER.search(word):
        return "LATIN"
    fold = _tables()[0]
    if all(fold.get(c, {}).get("LATIN", "\x80").isascii() for c in word if c.isalpha()):
        return None
    return next((_script(c) for c in word if c.isalpha()), None)


def _profile_of_cleaned(text: str, before: str = "") -> TextProfile:
    """The counts of one cleaned text. Votes and case evidence read the letters as the later steps
    leave them -- without marks on Latin letters (as a mark rate strips them) -- so that normalising
    twice changes nothing. Words are counted once per distinct word (C-speed counting)."""
    prof = TextProfile()
    if text.isascii():
        if _LATIN_LETTER.search(text):
            prof.votes["LATIN"] = len(_ANY_WORD.findall(text))
        _case_evidence(text, prof, before)
        return prof
    for word, n in Counter(_ANY_WORD.findall(_LATIN_MARKED.sub(r"\1", unicodedata.normalize("NFD", text)))).items():
        s = _vote(word)
        if s is not None:
            prof.votes[s] = prof.votes.get(s, 0) + n
    # marks and case are read on the words folded as a Latin text folds them
    base = unicodedata.normalize("NFD", _fold_words(text, "LATIN"))
    prof.latin = len(_LATIN_LETTER.findall(base))
    prof.marked = len(_LATIN_MARKED.findall(base))
    view = _LATIN_MARKED.sub(r"\1", base)
    _case_evidence(view, prof, before)
    return prof


_START_WORD = re.compile(r"(?:^|[.!?\n])[ \t\"'(\[]*([A-Za-z]+)")


def _case_evidence(text: str, prof: TextProfile, before: str = "") -> None:
    """The flip rate's counts (see :class:`TextProfile`) over the list words of 3+ letters that are
    not known mixed-case words or plural acronyms, and how many of them mid-sentence start with a
    capital (``before``: the text before this one, for the first word)."""
    words, mixed = _words()
    starts = Counter(_START_WORD.findall(text))
    first = _ASCII_WORD.search(text)
    if first is not None and first.group() in starts and text[: first.start()].strip(" \t\"'([") == "" \
            and not _at_start(text, first.start(), before):
        starts[first.group()] -= 1  # the text's first word continues the sentence before it
    for w, n in Counter(_ASCII_WORD.findall(text)).items():
        if len(w) < 3 or w.lower() not in words or w in mixed or _PLURAL_ACRONYM.fullmatch(w):
            continue
        if w.isupper():
            prof.upper_inner += n * (len(w) - 1)
        else:
            prof.flippable += n * (len(w) - 1)
            prof.flipped += n * sum(c.isupper() for c in w[1:])
        mid = n - starts.get(w, 0)
        prof.mid_words += mid
        prof.mid_capitals += mid * w[0].isupper()


def profile_text(pieces: Iterable[str]) -> TextProfile:
    """The :class:`TextProfile` of the text made of ``pieces`` (each cut before a word, as
    :func:`wmkit.watermark.text.stream.text_chunks` cuts them)."""
    total, before = TextProfile(), ""
    for piece in pieces:
        text = _cleaned(piece)
        total = total + _profile_of_cleaned(text, before)
        before = text[-64:]
    return total


# -- applying the decisions ---------------------------------------------------------------------------


def _wordish(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch)[0] == "M"


def _fold_spaces(text: str) -> str:
    """Space-like characters become the space or newline they stand for, or are removed where they
    were inserted inside words (:func:`_span_inserted`, per run of non-space text); a tab between two
    word characters is removed or kept. A fold next to whitespace adds none."""
    if not _ODD_SPACE.search(text):
        return text
    out: list[str] = []
    last = 0
    for m in _SPAN.finditer(text):
        out.append(text[last : m.start()])
        last = m.end()
        span = m.group()
        chars = {c for c in span if c == "\t" or _space_like(c)}
        drop = {c for c in chars if _span_inserted(span, c, chars)}
        prev = out[-1][-1:] if out and out[-1] else (out[-2][-1:] if len(out) > 1 else "")
        piece: list[str] = []
        for i, ch in enumerate(span):
            if ch not in chars:
                piece.append(ch)
            elif ch == "\t":
                if not (ch in drop and 0 < i < len(span) - 1 and _wordish(span[i - 1]) and _wordish(span[i + 1])):
                    piece.append(ch)
            elif ch not in drop:
                before = piece[-1] if piece else prev
                after = span[i + 1] if i + 1 < len(span) else text[m.end() : m.end() + 1]
                if ch in _NEWLINE_LIKE:
                    if not (before.isspace() or after.isspace()):  # beside a space it adds nothing a reader sees
                        piece.append("\n")
                elif not before.isspace() and not after.isspace():
                    piece.append(" ")  # next to whitespace the space it stands for is already there
        out.append("".join(piece))
    out.append(text[last:])
    return "".join(out)


_LATIN_MARKED = re.compile(rf"([A-Za-z])([{_MARKS}]+)")


def _fold_marks(text: str, prof: TextProfile) -> str:
    """Remove combining marks from Latin letters: all of them when the profile's mark rate says so,
    else those that do not compose with their letter (NFC leaves them apart)."""
    if text.isascii():
        return text
    if prof.strip_marks():
        base = unicodedata.normalize("NFD", text)
        return unicodedata.normalize("NFC", _LATIN_MARKED.sub(r"\1", base))
    return _LATIN_MARKED.sub(r"\1", text)  # NFC text: a mark still beside its letter did not compose


def _fold_words(text: str, text_script: str | None) -> str:
    """Every non-ASCII word of ``text`` through :func:`fold_mixed_script`."""
    return _FOLD_WORD.sub(lambda m: m.group() if m.group().isascii() else fold_mixed_script(m.group(), text_script), text)


def fold_mixed_script(word: str, text_script: str | None = None) -> str:
    """``word`` with confusable letters folded, or unchanged.

    In a text mostly in ``text_script`` (``"LATIN"``), a word with letters from other scripts is
    folded to ``text_script``'s prototypes when it also has letters of ``text_script`` (mixed) or
    when every foreign letter looks like an ASCII letter (a whole-script confusable: Cyrillic "а",
    "сор"; not an all-capitals one such as "СССР", which an attacker could not have made from a
    lower-case word); a genuine foreign word ("Москва") stays. Otherwise a word that mixes scripts
    is folded to its own majority script.
    """
    letters = [c for c in word if c.isalpha()]
    scripts = {_script(c) for c in letters} - {"COMMON", "INHERITED"}
    fold = _tables()[0]
    if text_script is not None and scripts - {text_script}:
        foreign = [c for c in letters if _script(c) != text_script]
        whole = any(c.islower() for c in foreign) and all(fold.get(c, {}).get(text_script, "\x80").isascii() for c in foreign)
        if text_script in scripts or whole:
            return "".join(fold.get(c, {}).get(text_script, c) if c in foreign else c for c in word)
        return word
    if len(scripts) < 2:
        return word
    major = max(scripts, key=lambda s: (sum(_script(c) == s for c in letters), s == "LATIN"))
    return "".join(fold.get(c, {}).get(major, c) if c.isalpha() and _script(c) != major else c for c in word)


# Priors of a word's original casing, mid-sentence and at a sentence start: for list words (the
# mid-sentence capital rate comes from the text, TextProfile.capital_rate) and for other words
# (names mostly). An odd pattern that looks like camelCase (setUp) is kept more readily than another.
_START_PRIORS = {"lower": 0.10, "title": 0.80, "upper": 0.05}
_NAME_PRIORS = {False: {"lower": 0.40, "title": 0.50, "upper": 0.10}, True: {"lower": 0.10, "title": 0.80, "upper": 0.10}}
_PLURAL_ACRONYM = re.compile(r"[A-Z]{2,}s")  # SEALs, CPUs: a writer's casing
_CAMEL = re.compile(r"[a-z]{2,}(?:[A-Z][a-z]+)+|(?:[A-Z][a-z]+){2,}|[A-Z][a-z]+[A-Z]+")  # setUp, DeLay, SpA
_ODD_PRIOR, _CAMEL_PRIOR = 0.001, 0.005


def _casing(word: str, priors: dict[str, float], p: float) -> str:
    """The most likely original of ``word`` under independent case flips at rate ``p``."""
    lp, lq = math.log(p), math.log1p(-p)

    def score(form: str, prior: float) -> float:
        k = sum(a != b for a, b in zip(form, word))
        return math.log(prior) + k * lp + (len(word) - k) * lq

    forms = {"lower": word.lower(), "title": word[0].upper() + word[1:].lower(), "upper": word.upper()}
    candidates = [(score(form, priors[name]), form) for name, form in forms.items()]
    if word not in forms.values():  # the word as it is, an odd casing that a writer may have meant
        candidates.append((score(word, _CAMEL_PRIOR if _CAMEL.fullmatch(word) else _ODD_PRIOR), word))
    return max(candidates, key=lambda c: (c[0], c[1] == word))[1]


def _at_start(text: str, pos: int, before: str) -> bool:
    """Whether the word at ``pos`` starts a sentence (after ``.!?``, a newline, or nothing), looking
    into ``before`` (the text before this one) at its start."""
    i = pos - 1
    while i >= 0 and text[i] in " \t\"'([":
        i -= 1
    if i >= 0:
        return text[i] in _SENTENCE_END
    prev = before.rstrip(" \t\"'([")
    return not prev or prev[-1] in _SENTENCE_END


def _restore_case(text: str, prof: TextProfile, before: str = "") -> str:
    """Give words whose casing a flip made their most likely original casing (see the module)."""
    if not prof.restores_case():
        return text
    words, mixed = _words()
    p = min(max(prof.flip_rate(), 0.0005), 0.9995)
    t = prof.capital_rate(p)
    mid = {"lower": 0.97 - t, "title": t, "upper": 0.03}

    def fix(m: re.Match[str]) -> str:
        w = m.group()
        if len(w) < 2 or w in mixed or _PLURAL_ACRONYM.fullmatch(w):
            return w
        known = w.lower() in words
        if p < 0.05 and (not known or len(w) < 3 or w.islower() or w.isupper() or w.istitle()):
            return w  # where flips are not evident: only list words of 3+ letters with an odd casing
        start = _at_start(text, m.start(), before)
        return _casing(w, (_START_PRIORS if start else mid) if known else _NAME_PRIORS[start], p)

    return _ASCII_WORD.sub(fix, text)


def normalize_text(text: str, profile: TextProfile | None = None, before: str = "") -> str:
    """``text`` with evasion characters undone (see the module).

    For one chunk of a longer text (a stream, cut before a word): ``profile`` is the whole text's
    :class:`TextProfile` (:func:`profile_text`) and ``before`` the end of the normalised text before
    the chunk; then the chunks' results concatenate to the whole text's.
    """
    text = _cleaned(text)
    if profile is None and text.isascii() and not _ASCII_TROUBLE.search(text):
        return text
    if profile is None:
        # a fold can change what the text-wide votes read (a word of five scripts folded to Latin now
        # votes Latin): fold again until nothing changes, so that normalising twice changes nothing.
        # A stream normalises in one pass with the whole text's profile, the same but in such texts
        for _ in range(4):
            out = _normalize_once(text, _profile_of_cleaned(text), before)
            if out == text:
                break
            text = _cleaned(out)
        return out
    return _normalize_once(text, profile, before)


def _normalize_once(text: str, prof: TextProfile, before: str) -> str:
    """Steps 4-6 of :func:`normalize_text` on a cleaned ``text`` with the profile ``prof``."""
    if not text.isascii():
        around = prof.script()
        text = _fold_words(text, around)
        text = _fold_marks(text, prof)
    text = _restore_case(text, prof, before)
    return unicodedata.normalize("NFC", text)  # removals and folds can bring a base and a mark together
