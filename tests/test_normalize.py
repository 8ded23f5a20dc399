"""Detection-side normalisation: evasion characters do not evade, genuine scripts keep their tokens.

The attacks come from wmkit.watermark.text.evasion, which builds every class from the homoglyphs
package and the Unicode database, not from the confusables table the normaliser folds with."""

from __future__ import annotations

import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import marked_text
from wmkit.keys import SecretKey
from wmkit.watermark.text import KGW, normalize_text
from wmkit.watermark.text.evasion import EVASION_CLASSES, EVASION_KINDS, Evasion, substitutions
from wmkit.watermark.text.normalize import profile_text
from wmkit.watermark.text.reference import reference_texts

KEY = SecretKey(bytes(range(32)))


@pytest.mark.parametrize("rate", [0.5, 1.0])
@pytest.mark.parametrize("kind", [k for k in EVASION_KINDS if k != "case"])
def test_each_evasion_is_undone_and_the_mark_is_found(kind, rate, tokenizer):
    text = marked_text(KGW(KEY), tokenizer, 120, seed=11)
    attacked = Evasion(kind, rate)([text], random.Random(0))[0]
    assert attacked != text
    assert normalize_text(attacked) == normalize_text(text)
    det = KGW(KEY).detector(tokenizer)
    assert det.detect(attacked).p_value == det.detect(text).p_value < 1e-10


@pytest.mark.parametrize("rate", [0.1, 0.3, 1.0])
def test_case_flips_are_restored(rate, tokenizer):
    """A published remover flips the case of a fraction of letters (z 9.0 -> 0.1 at 100% before).
    The text has sentences (a writer's capitals) so that a full flip shows itself."""
    words = marked_text(KGW(KEY), tokenizer, 150, seed=13).split(" ")
    text = " ".join(w.capitalize() if i % 12 == 1 else w + ("." if i % 12 == 0 and i else "") for i, w in enumerate(words))
    attacked = Evasion("case", rate)([text], random.Random(1))[0]
    restored = normalize_text(attacked)
    same = sum(a == b for a, b in zip(restored.split(), normalize_text(text).split())) / len(text.split())
    assert same >= 0.95, (same, restored[:300])
    det = KGW(KEY).detector(tokenizer)
    assert det.detect(attacked).p_value < 1e-10


def test_classes_come_from_independent_sources():
    """Each look-alike class has glyphs, and none of them is the normaliser's own table's doing:
    the classes' glyphs are named by their Unicode names (scripts) or decomposition tags."""
    for cls, prefix in (("cyrillic", "CYRILLIC"), ("greek", "GREEK"), ("armenian", "ARMENIAN"), ("cherokee", "CHEROKEE"),
                        ("smallcaps", "LATIN LETTER SMALL CAPITAL")):
        table = substitutions(cls)
        assert len(table) >= 5 and all(unicodedata.name(g).startswith(prefix) for gs in table.values() for g in gs), cls
    assert len(substitutions("fullwidth")) == 52 and len(substitutions("circled")) == 52
    assert len(substitutions("math")) == 52 and all(len(v) >= 8 for v in substitutions("math").values())
    assert set(EVASION_CLASSES) >= {"cyrillic", "greek", "armenian", "cherokee", "fullwidth", "math", "smallcaps",
                                    "combining", "invisible", "bidi", "tags", "variation", "spaces", "controls", "case"}


@pytest.mark.parametrize("genre", ["news", "reviews", "code"])
def test_genuine_reference_text_is_unchanged(genre):
    """Every shipped reference document (human news, reviews, code) comes out as it went in (NFC):
    the space, control, mark and case steps touch nothing a writer produced."""
    changed = [d for d in reference_texts(genre) if normalize_text(d) != unicodedata.normalize("NFC", d)]
    assert changed == []


def test_a_stream_normalises_as_the_whole_text(tokenizer):
    """Mixed-script text whose first part is Russian and whose English part carries Cyrillic
    look-alikes: a chunk alone would take the Russian vote; the whole text's profile is Latin."""
    russian = "Москва — столица России, и мы жили там долго. " * 30
    english = marked_text(KGW(KEY), tokenizer, 400, seed=14)
    attacked = Evasion("cyrillic", 1.0)([english], random.Random(2))[0]
    text = russian + attacked
    whole = profile_text([text])
    assert whole.script() == "LATIN" and profile_text([russian]).script() is None
    det = KGW(KEY).detector(tokenizer)
    full = det.detect(text)
    streamed = det.detect_stream(lambda: iter([text[i : i + 997] for i in range(0, len(text), 997)]), chunk_chars=2000)
    assert (streamed.n_scored, streamed.statistic, streamed.p_value) == (full.n_scored, full.statistic, full.p_value)
    assert full.p_value < 1e-10


def test_every_other_character_a_confusable_with_joiners_is_still_detected(tokenizer):
    text = marked_text(KGW(KEY), tokenizer, 120, seed=12)
    glyphs = {k: substitutions("cyrillic").get(k, []) + substitutions("greek").get(k, [])
              for k in set(substitutions("cyrillic")) | set(substitutions("greek"))}
    out = []
    for i, c in enumerate(text):
        out.append(glyphs[c][0] if i % 2 == 0 and c in glyphs else c)
        out.append("\u200d")
    attacked = "".join(out)
    assert sum(ord(c) > 127 for c in attacked) > len(text)
    det = KGW(KEY).detector(tokenizer)
    assert det.detect(attacked).decision and det.detect(attacked).n_scored == det.detect(text).n_scored


@pytest.mark.parametrize("text", [
    "Москва — столица России, а Афины — столица Греции. Сорок лет спустя.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και ο Ρ είναι γράμμα.",
    "Café naïve résumé — déjà vu; Straße, ZÜRICH, São Paulo.",
    "東京は日本の首都です。",
    "Mixed: English text quoting Москва and Αθήνα by name.",
])
def test_genuine_scripts_keep_their_tokens(text, tokenizer):
    assert normalize_text(text) == unicodedata.normalize("NFC", text)
    assert tokenizer(normalize_text(text)).input_ids == tokenizer(text).input_ids


def test_invisible_characters_of_every_kind_are_removed():
    hidden = "a\u200bb\u202ec\u2066d\ufe0fe\U000e0041f\u034fg\u2060h\ufeffi\u00adj\U000e0100k"
    assert normalize_text(hidden) == "abcdefghijk"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_normalisation_never_fails_and_is_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert unicodedata.is_normalized("NFC", once)


@pytest.mark.parametrize("text", [
    "Aτ",  # tau's Latin prototype is a small capital T, which the compatibility step folds to "t"
    "𝙺̊𝛜糨𝈕𝜺",  # a mark or a symbol between letters must not change where a second pass cuts words
    "а⧄С𝛓Ⅎ頋ս",  # the fold turns a word's vote to Latin, which changes the text's script
])
def test_normalisation_is_idempotent_where_hypothesis_found_it_was_not(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
