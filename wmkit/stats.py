"""Shared detection statistics: one result type and the tests every detector reports through.

Conventions, the same for text, embedding and fingerprint methods: a larger ``statistic`` always
means more evidence of the mark, and ``p_value`` is the probability, under the null hypothesis
(no mark), of a statistic at least as extreme. Decisions are made at a stated false-positive
rate: ``decision = p_value <= fpr``. The verdict rule, stated once (:func:`verdict`): "watermarked"
when ``p_value <= fpr``; "undecided" when not and the test could not have reached the FPR
(``p_floor > fpr``: a resampling test with too few draws, a calibration bucket too small);
"not watermarked" otherwise.

FPR policy (the defaults, one per family, each overridable per call and on the command line):
``TEXT_FPR = 1e-4`` for text detectors (a verdict on one document); ``EMBEDDING_FPR = 1e-3`` for
the EaaS ownership test (its decoy-calibrated p-value is no finer than ``1 / (n_decoys + 1)`` in
target-free mode); ``FINGERPRINT_FPR = 1e-6`` for model fingerprints (a claim about a whole model,
with thousands of scored vectors).

>>> d = binomial_detection("kgw", green=100, n=200, gamma=0.25, fpr=1e-4)
>>> round(d.statistic, 3), d.decision
(8.165, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import special as _special
from scipy import stats as _sps

TEXT_FPR = 1e-4
EMBEDDING_FPR = 1e-3
FINGERPRINT_FPR = 1e-6

__all__ = [
    "TEXT_FPR",
    "EMBEDDING_FPR",
    "FINGERPRINT_FPR",
    "bonferroni",
    "holm",
    "clopper_pearson_upper",
    "clopper_pearson_interval",
    "weighted_z_detection",
    "Detection",
    "z_score",
    "binomial_pvalue",
    "binomial_pvalues",
    "binomial_detection",
    "ks_2samp",
    "gaussian_null_detection",
    "mean_t_detection",
    "roc_auc",
    "threshold_at_fpr",
    "tpr_at_fpr",
    "check_fpr",
    "verdict",
    "floor_note",
    "VERDICTS",
    "windowed_binomial_detection",
    "normal_pvalue",
    "gamma_pvalue",
    "gamma_detection",
    "permutation_detection",
    "weighted_binomial_sf",
    "weighted_binomial_detection",
]


def check_fpr(fpr: float) -> float:
    """Validate a false-positive rate: a float in (0, 1)."""
    if not (isinstance(fpr, (int, float)) and 0.0 < float(fpr) < 1.0):
        raise ValueError(f"fpr must be in (0, 1), got {fpr!r}")
    return float(fpr)


VERDICTS = ("watermarked", "not watermarked", "undecided")


def verdict(p_value: float, fpr: float, p_floor: float = 0.0) -> str:
    """The verdict of a test, one rule for every mode: ``"watermarked"`` if ``p_value <= fpr``;
    ``"undecided"`` if not and the smallest p-value the test can give, ``p_floor``, is above ``fpr``
    (no evidence could have reached the verdict's FPR, so "not watermarked" would say more than the
    test can); ``"not watermarked"`` otherwise.

    >>> verdict(0.01, 1e-4, p_floor=0.01), verdict(0.5, 1e-4), verdict(1e-5, 1e-4)
    ('undecided', 'not watermarked', 'watermarked')
    """
    if p_value <= fpr:
        return "watermarked"
    return "undecided" if p_floor > fpr else "not watermarked"


def floor_note(p_floor: float, fpr: float, why: str) -> str:
    """The one-line reason for an undecided verdict."""
    return f"undecided: {why} gives no p-value below {p_floor:.3g}, above the FPR {fpr:g}"


@dataclass(frozen=True)
class Detection:
    """The result of any wmkit detector.

    Attributes:
        method: the scheme or test that produced it (``"kgw"``, ``"unigram"``, ...).
        n_scored: how many units (tokens, embeddings, ...) entered the statistic.
        statistic: the test statistic; larger means more evidence of the mark.
        p_value: exact p-value of ``statistic`` under the no-mark hypothesis.
        fpr: the false-positive rate the decision was made at.
        decision: ``p_value <= fpr``: the mark is declared present.
        p_floor: the smallest p-value the test can give (0 for the exact tests; ``1 / (1 + draws)``
            for a resampling test). Above ``fpr`` the verdict is "undecided" (:func:`verdict`).
        details: method-specific numbers (for green-list schemes ``green``, ``green_fraction``,
            ``gamma``).
        evidence: optional per-unit evidence, e.g. ``{"token_ids": [...], "scored": [...],
            "green": [...]}`` for highlighting.
    """

    method: str
    n_scored: int
    statistic: float
    p_value: float
    fpr: float
    decision: bool
    details: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, list] | None = field(default=None, repr=False)
    p_floor: float = 0.0

    @property
    def verdict(self) -> str:
        """``"watermarked"``, ``"not watermarked"`` or ``"undecided"`` (:func:`verdict`)."""
        return verdict(self.p_value, self.fpr, self.p_floor)

    def to_dict(self, evidence: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (with the verdict); per-unit evidence only when asked for."""
        d = asdict(self)
        if not evidence:
            d.pop("evidence")
        d["verdict"] = self.verdict
        return d


def z_score(k: float, n: int, p0: float) -> float:
    """One-proportion z: ``(k - p0 n) / sqrt(n p0 (1 - p0))``; 0 for ``n = 0``."""
    if n <= 0:
        return 0.0
    return (k - p0 * n) / math.sqrt(n * p0 * (1.0 - p0))


def binomial_pvalue(k: int, n: int, p0: float) -> float:
    """Exact upper tail ``P[Binomial(n, p0) >= k]`` (1 for ``n = 0``)."""
    if n <= 0:
        return 1.0
    return float(_sps.binom.sf(k - 1, n, p0))


def binomial_pvalues(k: Sequence[int], n: Sequence[int], p0: float) -> np.ndarray:
    """:func:`binomial_pvalue` for many items in one vectorized call (a corpus scan's batch)."""
    k, n = np.asarray(k, dtype=np.int64), np.asarray(n, dtype=np.int64)
    return np.where(n > 0, _sps.binom.sf(k - 1, np.maximum(n, 1), p0), 1.0)


def bonferroni(p: float, m: int) -> float:
    """``min(1, m p)``: a p-value corrected for choosing the best of ``m`` tests (valid under any dependence)."""
    if m < 1:
        raise ValueError(f"bonferroni needs m >= 1, got {m}")
    return min(1.0, float(p) * m)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): with ``p_(1) <= ... <= p_(m)``,
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting where ``adj <= alpha`` controls the
    family-wise error rate at ``alpha`` under any dependence; the smallest equals Bonferroni's ``m p_(1)``.

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def poisson_binomial_sf(k: int, probs: Sequence[float]) -> float:
    """``P(sum_i X_i >= k)`` for independent ``X_i ~ Bernoulli(probs[i])`` (exact, by convolution).

    >>> round(poisson_binomial_sf(2, [0.5, 0.5]), 6), poisson_binomial_sf(0, [0.3])
    (0.25, 1.0)
    """
    if k <= 0:
        return 1.0
    dist = np.zeros(len(probs) + 1)
    dist[0] = 1.0
    for i, q in enumerate(probs):
        q = min(1.0, max(0.0, float(q)))
        dist[1:i + 2] = dist[1:i + 2] * (1 - q) + dist[:i + 1] * q
        dist[0] *= 1 - q
    return float(min(1.0, dist[k:].sum()))


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a binomial rate after ``k`` hits in ``n`` trials."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(_sps.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(_sps.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial rate after ``k`` hits in ``n`` trials.

    >>> round(clopper_pearson_upper(0, 10, 0.95), 4)  # 1 - 0.05 ** (1 / 10)
    0.2589
    """
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    return 1.0 if k == n else float(_sps.beta.ppf(confidence, k + 1, n - k))


def weighted_z_detection(method: str, green: Sequence[float], weights: Sequence[float], gamma: float, fpr: float,
                         **details: Any) -> Detection:
    """Weighted z of Bernoulli(gamma) hits (EWD): ``(sum w g - gamma sum w) / sqrt(gamma (1 - gamma) sum w^2)``.

    A weighted sum of Bernoulli(gamma) has no closed-form tail; ``p_value`` is the normal upper tail of
    z (``details["p_value_method"] = "normal"``), accurate once the weight is spread over a few dozen units.
    """
    check_fpr(fpr)
    w, g = np.asarray(weights, dtype=float), np.asarray(green, dtype=float)
    sw, sw2, swg = float(w.sum()), float((w * w).sum()), float((w * g).sum())
    z = (swg - gamma * sw) / math.sqrt(gamma * (1 - gamma) * sw2) if sw2 > 0 else 0.0
    n = int((w > 0).sum())
    p = normal_pvalue(z)
    return Detection(method=method, n_scored=n, statistic=z, p_value=p, fpr=fpr, decision=bool(n > 0 and p <= fpr),
                     details={"gamma": gamma, "weight_sum": sw, "green_weight": swg,
                              "green_fraction": swg / sw if sw > 0 else 0.0, "p_value_method": "normal", **details})


def normal_pvalue(z: float) -> float:
    """Upper normal tail ``P[N(0, 1) >= z]``."""
    return float(_sps.norm.sf(z))


def gamma_pvalue(score: float, shape: float, scale: float = 1.0) -> float:
    """Upper tail ``P[Gamma(shape, scale) >= score]`` (regularized upper incomplete gamma; 1 if ``score <= 0``).

    The null of the Gumbel-max detectors: a sum of ``n`` independent Exp(1) scores is Gamma(n, 1).

    >>> round(gamma_pvalue(1.0, 1), 6) == round(math.exp(-1.0), 6)
    True
    """
    if shape <= 0 or score <= 0:
        return 1.0
    return float(_special.gammaincc(shape, score / scale))


def gamma_detection(method: str, score: float, n: int, fpr: float, shape: float | None = None, scale: float = 1.0,
                    evidence: dict[str, list] | None = None, **details: Any) -> Detection:
    """A :class:`Detection` for a score whose null is ``Gamma(shape, scale)`` (default ``Gamma(n, 1)``).

    ``statistic`` is the score itself (larger = more evidence); ``details["z"]`` its standardised value.
    """
    check_fpr(fpr)
    k = float(n if shape is None else shape)
    p = gamma_pvalue(score, k, scale) if n > 0 else 1.0
    z = (score - k * scale) / (math.sqrt(k) * scale) if k > 0 else 0.0
    return Detection(method=method, n_scored=int(n), statistic=float(score), p_value=p, fpr=fpr,
                     decision=bool(n > 0 and p <= fpr), details={"z": z, "null_shape": k, "null_scale": scale, **details},
                     evidence=evidence)


def permutation_detection(method: str, observed: float, null: Sequence[float], fpr: float, n_scored: int = 0,
                          **details: Any) -> Detection:
    """A :class:`Detection` for ``observed`` against the same statistic under ``len(null)`` exchangeable
    null draws (a permutation / resampling test): ``p = (1 + #{null >= observed}) / (1 + len(null))``.

    Exact (valid at every FPR), but never below ``1 / (1 + len(null))``; ``details["p_value_normal"]``
    is the normal tail of ``observed`` against the null's mean and spread (approximate, finer).

    >>> d = permutation_detection("t", 3.0, [0.0, 1.0, 2.0, 3.0], fpr=0.5)
    >>> d.p_value, d.decision
    (0.4, True)
    """
    check_fpr(fpr)
    x = np.asarray(null, dtype=float)
    if x.size < 1 or not np.isfinite(x).all() or not math.isfinite(observed):
        raise ValueError("permutation_detection needs a finite statistic and at least one finite null draw")
    p = float((1 + np.sum(x >= observed)) / (1 + x.size))
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    z = (observed - float(x.mean())) / sd if sd > 0 else 0.0
    return Detection(method=method, n_scored=int(n_scored), statistic=float(observed), p_value=p, fpr=fpr,
                     decision=bool(p <= fpr), details={"z": z, "p_value_normal": normal_pvalue(z), "null_samples": int(x.size),
                                                      "p_min": 1 / (1 + x.size), **details},
                     p_floor=1 / (1 + x.size))


def weighted_binomial_sf(x: float, weights: Sequence[float], n: int, q: float) -> float:
    """Upper tail ``P[S >= x]`` of ``S = sum_d w_d B_d`` with independent ``B_d ~ Binomial(n, q)``
    (SynthID's weighted-mean score under no mark), by the Lugannani-Rice saddlepoint approximation.

    With cumulant generating function ``K(t) = n sum_d log(1 - q + q e^(w_d t))`` and ``t`` solving
    ``K'(t) = x``: ``P ~ 1 - Phi(r) + phi(r) (1/u - 1/r)``, ``r = sign(t) sqrt(2 (t x - K(t)))``,
    ``u = t sqrt(K''(t))``. Its relative error in the tail is O(1/n) and, for the sums of hundreds of
    terms a text gives, about 1e-5 where tests check it against the exact distribution (rational
    weights put ``S`` on a lattice; the half-step continuity correction is applied). Equal weights
    give the exact binomial tail instead.

    >>> round(weighted_binomial_sf(60, [1.0], 100, 0.5), 4) == round(binomial_pvalue(60, 100, 0.5), 4)
    True
    """
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w <= 0) or not 0.0 < q < 1.0:
        raise ValueError("weighted_binomial_sf needs positive weights and q in (0, 1)")
    if n <= 0 or x <= 0:
        return 1.0
    if np.all(w == w[0]):
        return binomial_pvalue(int(math.ceil(x / w[0] - 1e-9)), n * w.size, q)
    top = n * float(w.sum())
    if x > top * (1 + 1e-12):
        return 0.0
    if x >= top * (1 - 1e-12):
        return float(q ** (n * w.size))
    span = _lattice_span(w)
    if span is not None:  # S lives on a lattice: continuity correction, the atom at x is in the tail
        x = math.ceil(x / span - 1e-9) * span - span / 2
    mean, var = n * q * float(w.sum()), n * q * (1 - q) * float((w**2).sum())
    if abs(x - mean) < 1e-6 * math.sqrt(var):
        return 0.5

    def pi(t: float) -> np.ndarray:  # success probability per depth under the tilted law
        return _special.expit(w * t + math.log(q / (1 - q)))

    def k1(t: float) -> float:
        return n * float(np.sum(w * pi(t)))

    lo, hi = -1.0, 1.0
    while k1(lo) > x:
        lo *= 2
    while k1(hi) < x:
        hi *= 2
    from scipy.optimize import brentq

    t = brentq(lambda s: k1(s) - x, lo, hi, xtol=1e-14, rtol=1e-14)
    p = pi(t)
    k2 = n * float(np.sum(w**2 * p * (1 - p)))
    kt = n * float(np.sum(np.logaddexp(math.log(1 - q), math.log(q) + w * t)))  # K(t), stable for large |t|
    r = math.copysign(math.sqrt(max(2 * (t * x - kt), 0.0)), t)
    u = t * math.sqrt(k2)
    if abs(r) < 1e-8 or abs(u) < 1e-8:
        return normal_pvalue((x - mean) / math.sqrt(var))
    return float(min(1.0, max(0.0, _sps.norm.sf(r) + _sps.norm.pdf(r) * (1 / u - 1 / r))))


def _lattice_span(w: np.ndarray) -> float | None:
    """The step of the lattice ``sum_d w_d k_d`` lives on, when the weights are rational with small
    denominators (SynthID's 10..1 weights: 2/319); ``None`` otherwise."""
    from fractions import Fraction

    fr = [Fraction(float(v)).limit_denominator(10**6) for v in w]
    if any(abs(float(f) - float(v)) > 1e-9 * max(1.0, abs(float(v))) for f, v in zip(fr, w)):
        return None
    den = math.lcm(*(f.denominator for f in fr))
    return math.gcd(*(int(f * den) for f in fr)) / den


def weighted_binomial_detection(method: str, total: float, weights: Sequence[float], n: int, q: float, fpr: float,
                                **details: Any) -> Detection:
    """A :class:`Detection` for a weighted count ``total = sum_d w_d k_d`` over ``n`` units whose
    per-depth hits are Binomial(n, q) under no mark (:func:`weighted_binomial_sf`)."""
    check_fpr(fpr)
    w = np.asarray(weights, dtype=np.float64)
    mean, sd = n * q * float(w.sum()), math.sqrt(n * q * (1 - q) * float((w**2).sum()))
    p = weighted_binomial_sf(total, w, n, q)
    return Detection(method=method, n_scored=int(n), statistic=(total - mean) / sd if sd > 0 else 0.0, p_value=p,
                     fpr=fpr, decision=bool(n > 0 and p <= fpr), details={"weighted_hits": total, "null_rate": q, **details})


def binomial_detection(
    method: str,
    green: int,
    n: int,
    gamma: float,
    fpr: float,
    evidence: dict[str, list] | None = None,
    p_value: float | None = None,
    **details: Any,
) -> Detection:
    """A :class:`Detection` for "``green`` of ``n`` scored units hit a set of null rate ``gamma``"
    (``p_value``: the exact tail when the caller computed it already, e.g. by :func:`binomial_pvalues`)."""
    check_fpr(fpr)
    p = binomial_pvalue(green, n, gamma) if p_value is None else float(p_value)
    return Detection(
        method=method,
        n_scored=int(n),
        statistic=z_score(green, n, gamma),
        p_value=p,
        fpr=fpr,
        decision=bool(n > 0 and p <= fpr),
        details={
            "green": int(green),
            "green_fraction": (green / n) if n else 0.0,
            "gamma": gamma,
            **details,
        },
        evidence=evidence,
    )


def ks_2samp(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: (D statistic, exact/asymptotic p-value).

    ``alternative="greater"`` tests whether ``a`` is stochastically *larger* than ``b`` (one-sided),
    e.g. backdoor cosines above benign ones.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("ks_2samp needs two non-empty samples")
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be 'two-sided' or 'greater', got {alternative!r}")
    # scipy's "less" means: the CDF of a lies below that of b, i.e. a is stochastically larger.
    r = _sps.ks_2samp(a, b, alternative="less" if alternative == "greater" else "two-sided")
    return float(r.statistic), float(r.pvalue)


def gaussian_null_detection(
    method: str, observed: float, null: Sequence[float], fpr: float, n_scored: int = 0, p_value_from: str = "normal",
    **details: Any
) -> Detection:
    """A :class:`Detection` for ``observed`` against a sampled null distribution of the same statistic.

    The null samples (e.g. the statistic recomputed with random decoy keys) give a mean and a
    standard deviation; ``statistic`` is the z-score and ``p_value`` its upper normal tail
    (``p_value_from="normal"``), or the upper tail of the Student-t predictive law of one more
    Gaussian draw, ``(observed - mean) / (sd sqrt(1 + 1/k))`` with ``k - 1`` degrees of freedom
    (``"t"``: exact for a Gaussian null of unknown mean and variance, and the honest choice for a
    few null samples, where the normal tail overstates the evidence). The rank p-value ``(1 + #{null >= observed}) / (1 + len(null))``, exact but no smaller than
    ``1 / (1 + len(null))``, is reported in ``details["rank_p_value"]``.

    >>> d = gaussian_null_detection("t", 5.0, [0.0, 1.0, -1.0, 0.5, -0.5], fpr=1e-3)
    >>> round(d.statistic, 2), d.decision, d.details["rank_p_value"]
    (6.32, True, 0.16666666666666666)
    """
    check_fpr(fpr)
    x = np.asarray(null, dtype=float)
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError("gaussian_null_detection needs at least two finite null samples")
    if p_value_from not in ("normal", "t", "rank"):
        raise ValueError(f"p_value_from must be 'normal', 't' or 'rank', got {p_value_from!r}")
    mu, sd = float(x.mean()), float(x.std(ddof=1))
    z = (observed - mu) / sd if sd > 0 else (math.inf if observed > mu else 0.0)
    rank_p = float((1 + np.sum(x >= observed)) / (1 + x.size))
    rank_p_floor = 1 / (1 + x.size)
    if p_value_from == "t":
        p = float(_sps.t.sf(z / math.sqrt(1 + 1 / x.size), df=x.size - 1))
    else:
        p = float(_sps.norm.sf(z)) if p_value_from == "normal" else rank_p
    return Detection(
        method=method,
        n_scored=int(n_scored),
        statistic=float(z),
        p_value=p,
        fpr=fpr,
        decision=bool(p <= fpr),
        p_floor=rank_p_floor if p_value_from == "rank" else 0.0,
        details={
            "observed": float(observed),
            "null_mean": mu,
            "null_sd": sd,
            "null_samples": int(x.size),
            "rank_p_value": rank_p,
            "p_value_from": p_value_from,
            **details,
        },
    )


def mean_t_detection(method: str, scores: Sequence[float], fpr: float, mu0: float = 0.0, **details: Any) -> Detection:
    """A :class:`Detection` for "the mean of independent ``scores`` exceeds ``mu0``": the one-sided
    one-sample Student-t test, ``t = (mean - mu0) / (sd / sqrt(n))`` with ``n - 1`` degrees of freedom
    (exact for Gaussian scores, asymptotically valid for any scores of finite variance; scores whose
    means differ only inflate ``sd``, which makes it conservative). ``details["positive"]``: how many
    scores exceed ``mu0``.

    >>> d = mean_t_detection("t", [1.0, 2.0, 3.0, 2.0], fpr=0.05)
    >>> round(d.statistic, 3), round(d.p_value, 4), d.decision
    (4.899, 0.0081, True)
    """
    check_fpr(fpr)
    x = np.asarray(scores, dtype=float)
    if x.size < 2 or not np.isfinite(x).all():
        raise ValueError("mean_t_detection needs at least two finite scores")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    t = (mean - mu0) / (sd / math.sqrt(x.size)) if sd > 0 else (math.inf if mean > mu0 else -math.inf if mean < mu0 else 0.0)
    p = float(_sps.t.sf(t, df=x.size - 1))
    return Detection(method=method, n_scored=int(x.size), statistic=float(t), p_value=p, fpr=fpr, decision=bool(p <= fpr),
                     details={"mean": mean, "sd": sd, "mu0": float(mu0), "positive": int(np.sum(x > mu0)), **details})


def _scores(pos: Sequence[float], neg: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    p, n = np.asarray(pos, dtype=float).ravel(), np.asarray(neg, dtype=float).ravel()
    if p.size == 0 or n.size == 0:
        raise ValueError("need at least one positive and one negative score")
    if np.isnan(p).any() or np.isnan(n).any():
        raise ValueError("scores contain NaN")
    return p, n


def roc_auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Area under the ROC curve = P[pos > neg] + 0.5 P[pos == neg] (Mann-Whitney U / n_p n_n)."""
    p, n = _scores(pos, neg)
    ranks = _sps.rankdata(np.concatenate([p, n]))  # average ranks handle ties
    u = ranks[: p.size].sum() - p.size * (p.size + 1) / 2.0
    return float(u / (p.size * n.size))


def threshold_at_fpr(neg: Sequence[float], fpr: float) -> float:
    """Smallest threshold ``t`` with ``mean(neg > t) <= fpr`` (the decision is ``score > t``)."""
    _, n = _scores([0.0], neg)
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr!r}")
    allowed = int(math.floor(fpr * n.size + 1e-9))
    return float(np.sort(n)[::-1][allowed])


def tpr_at_fpr(pos: Sequence[float], neg: Sequence[float], fpr: float) -> float:
    """True-positive rate at the empirical threshold :func:`threshold_at_fpr` of the negatives."""
    p, n = _scores(pos, neg)
    t = threshold_at_fpr(n, fpr)
    return float(np.mean(p > t))


DEFAULT_WINDOWS = (50, 100, 150, 200, 300, 400)


def windowed_binomial_detection(
    method: str,
    flags: Sequence[bool] | np.ndarray,
    gamma: float,
    fpr: float,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    min_window: int = 16,
    trials: int = 1,
) -> Detection:
    """Scan every window of every size in ``windows`` (plus the whole sequence) over per-unit
    hit flags; report the most significant one with a Bonferroni-corrected p-value.

    With ``trials > 1`` each unit holds a count of hits out of ``trials`` (SynthID's g-values of
    one token over its layers): a window of ``w`` units is Binomial(``w * trials``, gamma).

    The statistic is the largest window z-score; ``p_value = min(1, m * p_min)`` where ``p_min``
    is that window's exact binomial tail and ``m`` the number of windows scanned. Bonferroni is
    valid whatever the dependence between overlapping windows (it is conservative), so the
    decision ``p_value <= fpr`` keeps its false-positive rate. ``details`` gives the located
    span (``start``, ``end`` in units: the best window, its ends then moved by up to half a window
    to the highest-z segment) with its own counts (``span_scored`` units, ``span_green`` hits: what
    a report shows beside the location), the grid window the p-value is computed on
    (``window_start``, ``window``, ``green``) with its raw p-value, and ``n_tests``.

    >>> d = windowed_binomial_detection("kgw", [0] * 300 + [1] * 100 + [0] * 300, 0.25, 0.01, windows=(100,))
    >>> d.decision, d.details["start"], d.details["end"]
    (True, 300, 400)
    """
    check_fpr(fpr)
    x = np.asarray(flags).ravel()
    n = x.size
    sizes = sorted({w for w in windows if min_window <= w < n} | {n})
    if n < 1:
        raise ValueError("windowed detection needs at least one scored unit")
    csum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(x, dtype=np.int64, out=csum[1:])
    best = None
    n_tests = 0
    for w in sizes:
        counts = csum[w:] - csum[:-w]  # hits in windows [i, i + w)
        n_tests += counts.size
        i = int(np.argmax(counts))  # z is increasing in the count at a fixed w: no z array needed
        hits = int(counts[i])
        z = (hits - gamma * w * trials) / math.sqrt(w * trials * gamma * (1 - gamma))
        p = binomial_pvalue(hits, w * trials, gamma)
        if best is None or p < best[0] or (p == best[0] and z > best[1]):
            best = (p, float(z), w, i, hits)
    p_min, z_max, w, start, hits = best
    p_adj = min(1.0, n_tests * p_min)
    span = _refine_span(csum, start, start + w, gamma, min_window, trials)
    span_hits = int(csum[span[1]] - csum[span[0]])
    return Detection(
        method=f"{method}-window",
        n_scored=int(n),
        statistic=z_max,
        p_value=p_adj,
        fpr=fpr,
        decision=bool(p_adj <= fpr),
        details={"start": span[0], "end": span[1], "span_scored": span[1] - span[0], "span_green": span_hits,
                 "window": w, "window_start": start, "green": hits,
                 "gamma": gamma, "p_window": p_min, "n_tests": n_tests, "trials": trials},
    )


def _refine_span(csum: np.ndarray, start: int, end: int, gamma: float, min_len: int, trials: int = 1) -> tuple[int, int]:
    """The highest-z segment whose ends lie within half a window of the best window's ends.

    Only the reported location uses it; the p-value stays the grid scan's, so the refinement
    costs no power and needs no correction.
    """
    n, half = csum.size - 1, (end - start) // 2
    starts = np.arange(max(0, start - half), min(n, start + half) + 1)
    ends = np.arange(max(0, end - half), min(n, end + half) + 1)
    length = ends[None, :] - starts[:, None]
    hits = csum[ends][None, :] - csum[starts][:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(length >= min(min_len, end - start),
                     (hits - gamma * trials * length) / np.sqrt(np.maximum(length, 1) * trials * gamma * (1 - gamma)),
                     -np.inf)
    i, j = np.unravel_index(int(np.argmax(z)), z.shape)
    return int(starts[i]), int(ends[j])
