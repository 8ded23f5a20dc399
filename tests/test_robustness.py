"""Attacks, windowed detection and watermark stealing."""

import math
import random

import numpy as np
import pytest
import torch

from helpers import V, VocabOnly, marked_ids
from wmkit.errors import InputError
from wmkit.stats import binomial_pvalue, windowed_binomial_detection
from wmkit.watermark.text import KGW, Unigram
from wmkit.watermark.text.attacks import (
    CopyPaste, Lowercase, RenameIdentifiers, ReformatWhitespace, ReorderImports, Typos, WordDeletion,
)
from wmkit.watermark.text.stealing import spoof_scores

TEXT = " ".join(f"word{i}" for i in range(200))


def test_word_deletion_and_typos_rates():
    rng = random.Random(0)
    out = WordDeletion(0.3)([TEXT], rng)[0].split()
    assert len(out) == 140 and set(out) <= set(TEXT.split())
    typo = Typos(0.1)([TEXT], rng)[0].split()
    assert len(typo) == 200 and sum(a != b for a, b in zip(typo, TEXT.split(), strict=True)) in range(15, 21)
    assert Lowercase()(["Hello World"], rng) == ["hello world"]
    with pytest.raises(InputError):
        WordDeletion(1.5)


def test_copy_paste_keeps_length_and_a_contiguous_marked_span():
    human = ["the quick brown fox jumps over the lazy dog " * 20]
    out = CopyPaste(human, 0.25)([TEXT], random.Random(1))[0].split()
    assert len(out) == 200
    marked = [i for i, w in enumerate(out) if w.startswith("word")]
    assert len(marked) == 50 and marked == list(range(marked[0], marked[0] + 50))


CODE = '''import sys
import os
from collections import Counter


def count_words(text, minimum=2):
    """Count words.
        Indented docstring line stays."""
    counts = Counter(text.split())
    result = {w: c for w, c in counts.items() if c >= minimum}
    return dict(sorted(result.items()))
'''


def test_code_edits_keep_the_program_working():
    rng = random.Random(2)
    for attack in (RenameIdentifiers(1.0), ReformatWhitespace(), ReorderImports()):
        out = attack([CODE], rng)[0]
        assert out != CODE, attack.name
        env: dict = {}
        exec(out, env)  # our own test code, not model output
        assert env["count_words"]("a b a c c c", 2) == {"a": 2, "c": 3}
    renamed = RenameIdentifiers(1.0)([CODE], rng)[0]
    assert "counts" not in renamed and "Counter" in renamed and ".split()" in renamed
    with pytest.raises(InputError, match="not valid Python"):
        RenameIdentifiers()(["def (:"], rng)


def test_windowed_bonferroni_closed_form_and_null_calibration():
    flags = [0] * 300 + [1] * 60 + [0] * 340
    d = windowed_binomial_detection("kgw", flags, 0.25, 0.01, windows=(50, 100))
    n_tests = (700 - 50 + 1) + (700 - 100 + 1) + 1
    assert d.details["n_tests"] == n_tests
    assert d.p_value == pytest.approx(min(1.0, n_tests * binomial_pvalue(d.details["green"], d.details["window"], 0.25)))
    assert 300 <= d.details["start"] and d.details["end"] <= 360 + 40
    rng = np.random.default_rng(0)
    fp = [windowed_binomial_detection("kgw", rng.random(1000) < 0.25, 0.25, 0.05).decision for _ in range(300)]
    assert np.mean(fp) <= 0.05  # Bonferroni keeps the false-positive rate


def test_windowed_detector_locates_a_marked_splice(key):
    s = KGW(key, context_width=4, seeding="selfhash")
    rng = np.random.default_rng(5)
    human = rng.integers(0, V, 1000).tolist()
    marked = marked_ids(s, 250, rng)
    text = human[:400] + marked + human[650:]
    det = s.detector(VocabOnly(), fpr=0.01)
    whole = det.detect(text)
    win = det.detect_windowed(text)
    assert win.decision and win.statistic > whole.statistic
    assert 380 <= win.details["token_start"] and win.details["token_end"] <= 680
    clean = det.detect_windowed(human)
    assert not clean.decision


def test_stealing_unigram_learned_faster_than_kgw_selfhash_h4():
    v = 2000
    logp = torch.log(1.0 / torch.arange(1, v + 1).float() ** 1.1)
    logp = logp - torch.logsumexp(logp, 0)
    from wmkit.keys import SecretKey

    k = SecretKey.generate()
    uni = spoof_scores(Unigram(k, gamma=0.25), logp, [2000, 20000], n_spoof=16, length=200, seed=1)
    assert uni[-1]["median_z"] > 4 and uni[-1]["spoof_rate"] > 0.9  # one list: learned from 20k tokens
    h4 = spoof_scores(KGW(k, context_width=4, seeding="selfhash"), logp, [20000], n_spoof=16, length=200, seed=1)
    assert h4[-1]["median_z"] < uni[-1]["median_z"] - 3  # 4-token contexts: far more to learn
    assert math.isfinite(uni[0]["median_z"])
