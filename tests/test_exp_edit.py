"""EXP-edit: the keyed sequence follows the PRF spec, the edit distance equals a brute-force
Levenshtein, marked text is found after insertions and deletions, and the permutation null is valid."""

import random

import numpy as np
import pytest
import torch

import prf_reference as ref
from helpers import VocabOnly
from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.stats import permutation_detection
from wmkit.watermark.text import ExpEdit
from wmkit.watermark.text.exp_edit import levenshtein_prefix_scores


def test_key_sequence_follows_the_spec(key):
    s = ExpEdit(key, key_length=8)
    k = s.prf_keys()[0]
    got = s.uniforms(torch.tensor([0, 5]), torch.tensor([[3, 49151]]).T.reshape(1, 2), k)  # positions x tokens
    for r, p in enumerate((0, 5)):
        st = ref.state([p], k, 2)
        assert got[r].tolist() == [(ref.word(st, ref.TOK, t, k) + 0.5) / 2**32 for t in (3, 49151)]


def _brute_levenshtein(cost, gap):
    m, k = len(cost), len(cost[0])
    d = [[0.0] * (k + 1) for _ in range(m + 1)]
    for i in range(m + 1):
        for j in range(k + 1):
            if i == 0 or j == 0:
                d[i][j] = gap * (i + j)
            else:
                d[i][j] = min(d[i - 1][j - 1] + cost[i - 1][j - 1], d[i - 1][j] + gap, d[i][j - 1] + gap)
    return [d[i][i] for i in range(1, m + 1)]


def test_prefix_scores_equal_brute_force_levenshtein():
    g = torch.Generator().manual_seed(0)
    cost = torch.log(torch.rand(3, 12, 12, generator=g, dtype=torch.float64))  # lanes x text x key
    got = levenshtein_prefix_scores(lambda i: cost[:, i, :], 12, 0.4)
    for lane in range(3):
        assert got[lane].tolist() == pytest.approx(_brute_levenshtein(cost[lane].tolist(), 0.4), abs=1e-12)


def test_native_programme_equals_brute_force_over_rotations():
    """The C programme (rotations as lanes, key row wrapped) against the brute-force DP of every
    rotation, minimised: float32 sums, so equal to 1e-4."""
    from wmkit.kernels import native

    assert native.available(), native._FAILED
    g = torch.Generator().manual_seed(1)
    r, m, n = 3, 9, 5  # a text longer than the key: columns wrap around it
    cost = torch.log(torch.rand(r, m, n, generator=g))  # [key row, token, key position]
    got = native.levenshtein_prefix_native(cost, 0.4)
    for k in range(r):
        per_rot = [_brute_levenshtein([[float(cost[k, i, (rot + j) % n]) for j in range(m)] for i in range(m)], 0.4)
                   for rot in range(n)]
        assert got[k].tolist() == pytest.approx([min(col) for col in zip(*per_rot)], abs=1e-4)


def test_detection_same_with_and_without_the_native_programme(key, monkeypatch):
    """EXP-edit's statistic and every prefix p-value agree between the C and the torch programme."""
    s = ExpEdit(key, key_length=32, n_resamples=19)
    det = s.detector(VocabOnly(), min_tokens=1)
    ids = torch.tensor(_generate(s, 40))
    ids[10:14] = torch.tensor([5, 6, 7, 8])  # a few substitutions
    a = det.score_ids(ids)
    monkeypatch.setenv("WMKIT_NATIVE", "0")
    b = det.score_ids(ids)
    assert a.statistic == pytest.approx(b.statistic, abs=1e-3)
    assert a.details["prefix_p_values"] == b.details["prefix_p_values"] and a.p_value == b.p_value


def _generate(scheme, steps, seed=0, vocab=49152):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    proc, ids = scheme.processor(VocabOnly()), torch.randint(0, vocab, (1, 3), generator=g)
    for _ in range(steps):
        out = proc(ids, torch.randn(1, vocab, generator=g) * 3)
        assert torch.isfinite(out).sum() == 1
        ids = torch.cat([ids, torch.multinomial(out.softmax(-1), 1, generator=g)], 1)
    return ids[0, 3:].tolist()


def test_marked_text_survives_insertions_and_deletions_null_does_not_fire(key):
    s = ExpEdit(key, key_length=32, n_resamples=19)
    det = s.detector(VocabOnly(), fpr=0.05, min_tokens=8)
    ids = _generate(s, 40)
    assert det.detect(ids).p_value == pytest.approx(1 / 20)  # the smallest p a 19-draw test can give
    rng = random.Random(1)
    edited = list(ids)
    for _ in range(6):
        del edited[rng.randrange(len(edited))]
    for _ in range(4):
        edited.insert(rng.randrange(len(edited)), rng.randrange(49152))
    assert det.detect(edited).decision  # 25% of the tokens deleted or inserted


def test_permutation_null_is_uniform_on_its_grid(key):
    """Unmarked texts: P(p <= k/20) = k/20 for a 19-draw test. 400 texts over two keys, one-sided
    binomial tests at the nominal 5% and 25% (an excess of false positives fails at 1e-3), and a
    chi-square test that the p-values are uniform over the 20 values they can take."""
    from scipy import stats

    nulls = []
    for k, s in enumerate((ExpEdit(key, key_length=32, n_resamples=19), ExpEdit(SecretKey.generate(), key_length=32, n_resamples=19))):
        det = s.detector(VocabOnly(), fpr=0.05, min_tokens=8)
        nulls += [det.detect(torch.randint(0, 49152, (30,), generator=torch.Generator().manual_seed(1000 * k + i))).p_value
                  for i in range(200)]
    p = np.array(nulls)
    for nominal in (0.05, 0.25):
        assert stats.binomtest(int((p <= nominal + 1e-12).sum()), len(p), nominal, alternative="greater").pvalue > 1e-3
    counts = np.bincount(np.rint(p * 20).astype(int) - 1, minlength=20)
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_permutation_pvalue_closed_form():
    d = permutation_detection("t", 2.0, [1.0, 2.0, 3.0, 0.0], fpr=0.5)
    assert d.p_value == (1 + 2) / 5 and d.details["p_min"] == 0.2


def test_parameters_validated(key):
    for params, msg in (({"key_length": 1}, "key_length"), ({"gap": -1}, "gap"), ({"n_resamples": 3}, "n_resamples"),
                        ({"prf_version": 1}, "PRF spec v1")):
        with pytest.raises(InputError, match=msg):
            ExpEdit(key, **params)
    with pytest.raises(InputError, match="at least 16"):
        ExpEdit(key, key_length=8, n_resamples=9).detector(VocabOnly()).detect([1, 2, 3])
