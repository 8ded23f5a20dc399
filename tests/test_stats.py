"""Detection statistics against closed forms, scipy and scikit-learn."""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score, roc_curve

from wmkit import stats


def exact_upper_tail(k, n, p):
    p = Fraction(p)
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def test_binomial_pvalue_closed_form():
    # 200 tokens, 100 green, gamma 0.25
    assert stats.binomial_pvalue(100, 200, 0.25) == pytest.approx(exact_upper_tail(100, 200, 0.25), rel=1e-9)
    assert stats.binomial_pvalue(0, 50, 0.25) == 1.0
    assert stats.binomial_pvalue(50, 50, 0.25) == pytest.approx(0.25**50, rel=1e-9)
    for k in (10, 13, 20):
        assert stats.binomial_pvalue(k, 40, 0.25) == pytest.approx(exact_upper_tail(k, 40, 0.25), rel=1e-9)


def test_z_score_closed_form():
    assert stats.z_score(100, 200, 0.25) == pytest.approx(50 / math.sqrt(37.5))
    assert stats.z_score(50, 200, 0.25) == 0.0
    assert stats.z_score(0, 0, 0.25) == 0.0


def test_binomial_detection_fields_and_decision():
    d = stats.binomial_detection("kgw", green=100, n=200, gamma=0.25, fpr=1e-4)
    assert d.decision and d.n_scored == 200 and d.details["green_fraction"] == 0.5
    assert d.p_value == pytest.approx(exact_upper_tail(100, 200, 0.25), rel=1e-9)
    weak = stats.binomial_detection("kgw", green=55, n=200, gamma=0.25, fpr=1e-4)
    assert not weak.decision and weak.statistic > 0
    assert set(d.to_dict()) == {"method", "n_scored", "statistic", "p_value", "fpr", "decision", "details", "p_floor", "verdict"}
    with pytest.raises(ValueError):
        stats.binomial_detection("kgw", green=1, n=2, gamma=0.25, fpr=0.0)


def test_pvalue_is_calibrated_under_null():
    rng = np.random.default_rng(0)
    n, gamma, fpr = 200, 0.25, 0.05
    greens = rng.binomial(n, gamma, size=20000)
    rate = np.mean([stats.binomial_pvalue(int(g), n, gamma) <= fpr for g in greens])
    assert rate <= fpr + 3 * math.sqrt(fpr * (1 - fpr) / greens.size)  # exact test is conservative
    assert rate > 0.02


def test_ks_2samp_exact_small_case():
    d, p = stats.ks_2samp([1, 2, 3], [4, 5, 6])
    assert d == 1.0 and p == pytest.approx(2 / math.comb(6, 3))  # exact permutation p-value
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(0.3, size=400)
    ref = sps.ks_2samp(a, b)
    assert stats.ks_2samp(a, b) == pytest.approx((ref.statistic, ref.pvalue))
    with pytest.raises(ValueError):
        stats.ks_2samp([], [1.0])


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 10, 300).astype(float) + 1, rng.integers(0, 10, 200).astype(float)
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    assert stats.roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]))
    assert stats.roc_auc([2, 3], [0, 1]) == 1.0 and stats.roc_auc([1], [1]) == 0.5


def test_threshold_and_tpr_at_fpr_brute_force():
    rng = np.random.default_rng(3)
    neg, pos = rng.normal(size=1000), rng.normal(2.0, size=500)
    for fpr in (0.0, 0.01, 0.05, 0.1):
        t = stats.threshold_at_fpr(neg, fpr)
        assert np.mean(neg > t) <= fpr
        # smallest such threshold: any lower observed negative lets more through
        lower = neg[neg < t]
        if lower.size:
            assert np.mean(neg > lower.max()) > fpr
        assert stats.tpr_at_fpr(pos, neg, fpr) == np.mean(pos > t)
    # sklearn's ROC: the best TPR with FPR <= 0.05 (strict '>' makes ours the same on continuous data)
    fp, tp, _ = roc_curve(np.r_[np.ones(500), np.zeros(1000)], np.r_[pos, neg])
    assert stats.tpr_at_fpr(pos, neg, 0.05) == pytest.approx(tp[fp <= 0.05].max(), abs=1 / 500)


def test_bonferroni_clopper_pearson_and_rank_pvalue_against_closed_forms():
    import math

    import pytest
    from scipy import stats as sps

    from wmkit import stats as S

    assert S.bonferroni(0.01, 4) == 0.04 and S.bonferroni(0.5, 4) == 1.0
    assert S.clopper_pearson_upper(0, 20, 0.95) == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-12)  # k = 0: closed form
    k, n = 3, 40  # the bound b solves P[Binomial(n, b) <= k] = 1 - confidence
    b = S.clopper_pearson_upper(k, n, 0.95)
    assert sps.binom.cdf(k, n, b) == pytest.approx(0.05, rel=1e-9)
    d = S.gaussian_null_detection("t", 2.5, [0.0, 1.0, 2.0, 3.0], fpr=0.5, p_value_from="rank")
    assert d.p_value == 2 / 5 and d.details["rank_p_value"] == 2 / 5
    assert S.gamma_pvalue(3.0, 2) == pytest.approx(math.exp(-3.0) * (1 + 3.0), rel=1e-12)
    assert S.normal_pvalue(1.959963984540054) == pytest.approx(0.025, rel=1e-9)
    assert (S.TEXT_FPR, S.EMBEDDING_FPR, S.FINGERPRINT_FPR) == (1e-4, 1e-3, 1e-6)


@pytest.mark.parametrize("n,q", [(20, 0.5), (150, 0.5), (60, 0.46)])
def test_weighted_binomial_sf_against_the_exact_distribution(n, q):
    """SynthID's 10..1 weights are (2/319) * (290 - 9 d): the exact law of the weighted sum is a
    convolution of scaled binomials on that lattice."""
    from scipy.signal import fftconvolve

    from wmkit.stats import weighted_binomial_sf

    a = 290 - 9 * np.arange(30)
    w = np.linspace(10, 1, 30) * 30 / np.linspace(10, 1, 30).sum()
    np.testing.assert_allclose(w, a * 2 / 319)
    pmf = np.array([1.0])
    for ad in a:
        v = np.zeros(ad * n + 1)
        v[::ad] = sps.binom.pmf(np.arange(n + 1), n, q)
        pmf = np.clip(fftconvolve(pmf, v), 0, None)
    sf = np.cumsum(pmf[::-1])[::-1]
    mean, sd = n * q * a.sum(), np.sqrt(n * q * (1 - q) * (a**2).sum())
    for z in (0.5, 1, 2, 3, 4, 5):
        k = int(np.ceil(mean + z * sd))
        assert weighted_binomial_sf(k * 2 / 319, w, n, q) == pytest.approx(sf[k], rel=1e-4), z


def test_weighted_binomial_sf_edges_and_equal_weights():
    from wmkit.stats import weighted_binomial_detection, weighted_binomial_sf

    assert weighted_binomial_sf(37, [2.0, 2.0], 30, 0.3) == pytest.approx(sps.binom.sf(18, 60, 0.3))
    w = [1.0, 0.5]
    assert weighted_binomial_sf(1.5 * 10, w, 10, 0.4) == pytest.approx(0.4**20)  # the all-ones atom
    assert weighted_binomial_sf(16, w, 10, 0.4) == 0.0
    assert weighted_binomial_sf(0, w, 10, 0.4) == pytest.approx(1.0)
    d = weighted_binomial_detection("x", 15.0, w, 10, 0.4, 1e-3)
    assert d.decision and d.statistic > 0 and d.details["weighted_hits"] == 15.0


def test_windowed_binomial_with_counts_per_unit():
    rng = np.random.default_rng(0)
    counts = np.concatenate([rng.binomial(30, 0.5, 200), rng.binomial(30, 0.7, 60), rng.binomial(30, 0.5, 200)])
    d = stats.windowed_binomial_detection("synthid", counts, 0.5, 1e-3, windows=(32, 64), min_window=16, trials=30)
    assert d.decision and abs(d.details["start"] - 200) <= 16 and abs(d.details["end"] - 260) <= 16
    null = stats.windowed_binomial_detection("synthid", rng.binomial(30, 0.5, 460), 0.5, 1e-3, windows=(32, 64), trials=30)
    assert not null.decision


def test_holm_against_its_definition_by_brute_force():
    """Holm's adjusted p for hypothesis i: the smallest alpha at which the step-down procedure rejects it."""
    from wmkit.stats import holm

    rng = np.random.default_rng(3)
    for _ in range(200):
        p = list(rng.uniform(0, 0.2, rng.integers(1, 7)))
        adj = holm(p)
        order = sorted(range(len(p)), key=lambda i: p[i])
        for alpha in np.linspace(0.001, 1, 60):
            rejected = set()
            for rank, i in enumerate(order):  # step down: stop at the first non-rejection
                if p[i] > alpha / (len(p) - rank):
                    break
                rejected.add(i)
            assert rejected == {i for i in range(len(p)) if adj[i] <= alpha + 1e-12}


def test_clopper_pearson_interval_covers_at_its_level():
    from wmkit.stats import clopper_pearson_interval

    assert clopper_pearson_interval(0, 10)[0] == 0.0 and clopper_pearson_interval(10, 10)[1] == 1.0
    lo, hi = clopper_pearson_interval(7, 50)
    assert sps.binom.cdf(7, 50, hi) == pytest.approx(0.025, rel=1e-6) and sps.binom.sf(6, 50, lo) == pytest.approx(0.025, rel=1e-6)


def test_binomial_pvalues_vectorized_equals_scalar():
    from wmkit.stats import binomial_pvalue, binomial_pvalues

    rng = np.random.default_rng(4)
    n = rng.integers(0, 300, 500)
    k = (rng.uniform(size=500) * (n + 1)).astype(int)
    got = binomial_pvalues(k, n, 0.25)
    assert got.tolist() == [binomial_pvalue(int(a), int(b), 0.25) for a, b in zip(k, n)]


def test_student_t_predictive_p_value_is_exact_for_a_gaussian_null_and_the_normal_tail_is_not():
    """With k = 6 null samples, P[p <= 0.01] over fresh Gaussian draws is 0.01 for ``p_value_from="t"``
    (its predictive law is exact), while the normal tail of the same z rejects several times as often."""
    from wmkit import stats as S

    rng = np.random.default_rng(7)
    reps, k, level = 20000, 6, 0.01
    draws = rng.normal(3.0, 2.0, size=(reps, k + 1))
    p_t = np.array([S.gaussian_null_detection("t", d[0], d[1:], fpr=level, p_value_from="t").p_value for d in draws])
    p_n = np.array([S.gaussian_null_detection("t", d[0], d[1:], fpr=level).p_value for d in draws])
    se = math.sqrt(level * (1 - level) / reps)
    assert abs((p_t <= level).mean() - level) < 4 * se
    assert (p_n <= level).mean() > 3 * level
