"""Detection-side normalisation: evasion characters do not evade, genuine scripts keep their tokens."""

from __future__ import annotations

import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import marked_text
from wmkit.keys import SecretKey
from wmkit.watermark.text import KGW, normalize_text
from wmkit.watermark.text.attacks import EVASION_KINDS, Evasion, _homoglyphs

KEY = SecretKey(bytes(range(32)))


@pytest.mark.parametrize("kind", EVASION_KINDS)
def test_each_evasion_is_undone_and_the_mark_is_found(kind, tokenizer):
    text = marked_text(KGW(KEY), tokenizer, 120, seed=11)
    attacked = Evasion(kind, 0.5)([text], random.Random(0))[0]
    assert attacked != text
    assert normalize_text(attacked) == normalize_text(text)
    det = KGW(KEY).detector(tokenizer)
    assert det.detect(attacked).p_value == det.detect(text).p_value < 1e-10


def test_every_other_character_a_confusable_with_joiners_is_still_detected(tokenizer):
    text = marked_text(KGW(KEY), tokenizer, 120, seed=12)
    glyphs = _homoglyphs()
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
