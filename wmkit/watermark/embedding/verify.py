"""The ownership test: does a suspect encoder carry our embedding watermark?

Verification texts follow EmbMarker: a **backdoor** set of texts made of ``m`` distinct trigger
words, and a **benign** set of ``m`` non-trigger words. Here the benign words come from the same
document-frequency band as the triggers, so the two sets differ only in *which* words they hold.
The suspect embeds both; with ``t`` the target embedding:

- ``delta_cos = mean cos(e_b, t) - mean cos(e_n, t)``, ``delta_l2 = mean |e_b - t|^2 - mean |e_n - t|^2``
  (for unit vectors ``|e - t|^2 = 2 - 2 cos``, so ``delta_l2 = -2 delta_cos``; both reported, as in the papers);
- ``ks_p``: the papers' Kolmogorov-Smirnov test of the two cosine samples (here one-sided: the
  backdoor cosines larger).

The KS test compares two fixed word sets; with enough texts it flags *any* model under which the
trigger words happen to sit closer to the target sentence than the benign words do -- a property
of the words, not of a watermark. The **decoy test** (the verdict) fixes that: it recomputes
``delta_cos`` for ``n_decoys`` decoy trigger sets drawn from the same band (keyed), and asks how
far the real triggers' ``delta_cos`` lies above that null (z-score, normal tail p-value, see
:func:`wmkit.stats.gaussian_null_detection`). Without a watermark the real triggers are just one
more random draw from the band, so the p-value is honest; with one, they stand out by many
standard deviations.

Four modes say what is compared:

- ``"target"``: the provider's target embedding (the papers' test);
- ``"copy-target"``: the suspect's own embedding of the target sentence, so a stealer that
  rotates or shuffles dimensions (keeping distances) can still be caught -- if it embeds the
  target sentence well, which a low-fidelity stealer does not;
- ``"target-free"`` (ours): no target at all. A mark pulls every backdoor embedding toward one
  (possibly rotated) point, so backdoor texts become similar *to each other*. The statistic is
  the mean pairwise cosine within the backdoor set minus that within the benign set, calibrated on
  the decoy sets as above. It is invariant to any rotation or dimension shuffle and needs neither
  the target nor the suspect's view of it. Its null is heavy-tailed (coherent word sets make
  similar texts: an unmarked stealer reached a normal-tail p of 6e-4 on SST-2), so its p-value is
  the exact rank p-value ``(1 + #{decoys >= observed}) / (1 + n_decoys)``: to reach a small FPR it
  needs many decoys (999 for 1e-3; cheap for a local suspect). It finds marks with a shared direction (EmbMarker, and
  what a stealer learns from one); ESpeW's mark, by design, has no shared component, so use
  ``copy-target`` for it.
- ``"positions"`` (ours, ESpeW only): uses ESpeW's structure. The provider still has its clean
  model, so for every verification text it knows the positions ESpeW would overwrite (the clean
  embedding's smallest ``|value|``); the per-text score is the cosine between the suspect's
  embedding and ``t`` on those positions only. The other 75% of positions, which carry no mark
  and only add noise to the full cosine, are left out, so the same texts give a larger z.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputError
from ...stats import EMBEDDING_FPR, Detection, check_fpr, gaussian_null_detection, ks_2samp
from ...encoders import Encoder, check_embeddings
from .schemes import EaaSScheme, ESpeW, Warden
from ...keys import keyed_rng
from .triggers import default_vocabulary

DEFAULT_TEXTS = 128
DEFAULT_DECOYS = 32
DEFAULT_FPR = EMBEDDING_FPR
MIN_TEXTS, MIN_DECOYS = 8, 2
DEFAULT_LOOKS = 4  # a budgeted test looks at the answers this many times (at most)
MODES = ("target", "copy-target", "target-free", "positions")


@dataclass(frozen=True)
class VerificationSet:
    """The texts of one ownership test (all keyed: the same key gives the same texts)."""

    backdoor: list[str]
    benign: list[str]
    decoys: list[list[str]]


def verification_texts(scheme: EaaSScheme, n_texts: int = DEFAULT_TEXTS, n_decoys: int = DEFAULT_DECOYS) -> VerificationSet:
    """Backdoor, benign and decoy-backdoor texts of ``scheme.max_triggers`` words each."""
    if n_texts < MIN_TEXTS or n_decoys < MIN_DECOYS:
        raise InputError(f"need at least {MIN_TEXTS} texts and {MIN_DECOYS} decoy sets, got {n_texts} and {n_decoys}")
    rng = keyed_rng(scheme.key, "eaas/verify")
    triggers = list(scheme.triggers())
    excluded = scheme.excluded_words()
    others = [w for w in default_vocabulary().band(*scheme.band) if w not in excluded]
    m = scheme.max_triggers
    if len(others) < max(m, scheme.n_triggers):
        raise InputError(f"the band {list(scheme.band)} has too few non-trigger words for the test")

    def texts(words: list[str]) -> list[str]:
        return [" ".join(rng.choice(words, size=m, replace=False)) for _ in range(n_texts)]

    backdoor = texts(triggers)
    benign = texts(others)
    decoys = [texts(list(rng.choice(others, size=scheme.n_triggers, replace=False))) for _ in range(n_decoys)]
    return VerificationSet(backdoor, benign, decoys)


@dataclass(frozen=True)
class OwnershipReport:
    """The result of :func:`verify_ownership`.

    Attributes:
        delta_cos: mean backdoor minus mean benign cosine to the target (``target-free``: mean
            pairwise cosine within the backdoor set minus within the benign set).
        delta_l2: the same for squared L2 distance (negative when marked; ``-2 delta_cos``).
        ks_p: one-sided KS p-value of backdoor vs benign cosines (the papers' test); ``None`` in
            ``target-free`` mode.
        detection: the decoy test; ``detection.decision`` is the verdict, ``detection.p_value`` its p.
        mode: one of :data:`MODES`.
        queries: texts the suspect embedded for the test.
    """

    delta_cos: float
    delta_l2: float
    ks_p: float | None
    detection: Detection
    mode: str
    queries: int = 0

    @property
    def p_value(self) -> float:
        """The verdict's p-value (decoy test)."""
        return self.detection.p_value

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "derived": self.detection.decision,
            "p_value": self.detection.p_value,
            "z": self.detection.statistic,
            "ks_p": self.ks_p,
            "delta_cos": self.delta_cos,
            "delta_l2": self.delta_l2,
            "mode": self.mode,
            "queries": self.queries,
            "fpr": self.detection.fpr,
            "details": self.detection.details,
        }


def _masked_cos(e: np.ndarray, t: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Per row: cosine between ``e[i, pos[i]]`` and ``t[pos[i]]``."""
    a, b = np.take_along_axis(e, pos, axis=1), t[pos]
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _mean_pairwise_cos(e: np.ndarray) -> float:
    n = len(e)
    s = e.sum(0)
    return float((s @ s - np.einsum("ij,ij->", e, e)) / (n * (n - 1)))


def verify_ownership(
    suspect: Encoder,
    scheme: EaaSScheme,
    target: np.ndarray | None = None,
    mode: str = "target",
    clean: Encoder | None = None,
    n_texts: int = DEFAULT_TEXTS,
    n_decoys: int = DEFAULT_DECOYS,
    fpr: float = DEFAULT_FPR,
    budget: int | None = None,
    looks: int = DEFAULT_LOOKS,
) -> OwnershipReport:
    """Run the ownership test of ``scheme`` against ``suspect``: query it (:func:`ownership_queries`),
    then score its answers (:func:`score_ownership`); with a ``budget``, the sequential test of
    :func:`sequential_ownership` instead.

    Args:
        suspect: the encoder under test (local model, URL, stealer).
        scheme: the provider's scheme, with its key.
        target: the provider's target embedding (its clean model's embedding of
            ``scheme.target_text()``); needed in ``"target"`` and ``"positions"`` modes.
        mode: ``"target"``, ``"copy-target"``, ``"target-free"`` or ``"positions"`` (module docstring).
        clean: the provider's clean encoder; needed in ``"positions"`` mode.
        n_texts: texts in each of the backdoor, benign and decoy sets.
        n_decoys: decoy trigger sets for the null distribution.
        fpr: false-positive rate of the verdict.
        budget: at most this many suspect queries (``n_texts`` and ``n_decoys`` then come from
            :func:`plan_budget`); the test stops as soon as its verdict is decided.
        looks: with a budget, how many times the test looks at the answers so far.
    """
    check_fpr(fpr)
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if budget is not None:
        return sequential_ownership(suspect, scheme, target, mode, clean, budget, fpr, looks)
    texts = ownership_queries(scheme, n_texts, n_decoys)
    t = _test_target(suspect, scheme, target, mode)
    positions = _positions(scheme, clean, texts) if mode == "positions" else None
    rep = score_ownership(suspect.encode(texts), scheme, t, mode, n_texts, n_decoys, fpr, positions)
    return dataclasses.replace(rep, queries=len(texts) + (mode == "copy-target"))


def _test_target(suspect: Encoder, scheme: EaaSScheme, target: np.ndarray | None, mode: str) -> np.ndarray | None:
    """The embedding the test compares with: the suspect's own view of the target sentence
    (``copy-target``: one query), the provider's target, or none (``target-free``)."""
    if mode == "copy-target":
        return suspect.encode([scheme.target_text()])[0]
    if mode in ("target", "positions"):
        if target is None:
            raise InputError(f"verify_ownership: {mode} mode needs the provider's target embedding")
        return check_embeddings(np.asarray(target).reshape(1, -1), suspect.dim, "target")[0]
    return None


def _positions(scheme: EaaSScheme, clean: Encoder | None, texts: list[str]) -> np.ndarray:
    if not isinstance(scheme, ESpeW) or clean is None:
        raise InputError("positions mode is for ESpeW and needs the provider's clean encoder (clean=...)")
    return scheme.positions(clean.encode(texts))


def plan_budget(budget: int) -> tuple[int, int]:
    """``(texts per set, decoy sets)`` for a test of at most ``budget`` queries: as many texts per
    set as leave 32 decoy sets (at least 8, at most 128), then as many decoy sets as the rest pays
    for. 256 queries: 8 texts x (2 + 30 sets); 4,352: the default 128 x (2 + 32)."""
    least = MIN_TEXTS * (2 + MIN_DECOYS)
    if not isinstance(budget, int) or budget < least:
        raise InputError(f"the query budget must be an integer of at least {least}, got {budget!r}")
    n = min(DEFAULT_TEXTS, max(MIN_TEXTS, budget // (2 + DEFAULT_DECOYS)))
    return n, budget // n - 2


def sequential_ownership(
    suspect: Encoder, scheme: EaaSScheme, target: np.ndarray | None, mode: str, clean: Encoder | None,
    budget: int, fpr: float = DEFAULT_FPR, looks: int = DEFAULT_LOOKS,
) -> OwnershipReport:
    """The ownership test within ``budget`` queries, stopping once its verdict is decided.

    The texts are those of :func:`verification_texts` for :func:`plan_budget`'s ``(n, k)``. At look
    ``j`` of ``looks``, every set has been sent its first ``ceil(j n / looks)`` texts; the decoy
    test's p-value there is the Student-t predictive one (few decoy sets: the normal tail would
    overstate the evidence, see :func:`~wmkit.stats.gaussian_null_detection`), and the test stops
    at the first look whose p-value is at most ``fpr / looks``. The reported p-value is ``looks``
    times the smallest p-value seen (Bonferroni over the looks), so the FPR holds whichever look
    decides. ``target-free`` mode has no place here: its rank p-value needs hundreds of decoy sets.
    """
    check_fpr(fpr)
    if mode == "target-free":
        raise InputError("a query budget needs a test with a target (target, copy-target or positions); "
                         "target-free mode needs hundreds of decoy sets")
    if not isinstance(looks, int) or looks < 1:
        raise InputError(f"looks must be a positive integer, got {looks!r}")
    if mode == "copy-target" and isinstance(budget, int) and budget - 1 < MIN_TEXTS * (2 + MIN_DECOYS):
        raise InputError(f"copy-target mode spends one query on the target sentence: the budget must be at least "
                         f"{MIN_TEXTS * (2 + MIN_DECOYS) + 1}, got {budget}")
    n, k = plan_budget(budget - (mode == "copy-target"))
    looks = min(looks, n // 2)  # every look adds at least two texts to each set
    vs = verification_texts(scheme, n, k)
    sets = [vs.backdoor, vs.benign, *vs.decoys]
    t = _test_target(suspect, scheme, target, mode)
    queries = int(mode == "copy-target")
    scores: list[list[float]] = [[] for _ in sets]
    best, done, p_adj = math.inf, 0, 1.0
    trail = []
    for j in range(1, looks + 1):
        upto = math.ceil(j * n / looks)
        batch = [x for st in sets for x in st[done:upto]]
        emb = suspect.encode(batch)
        queries += len(batch)
        if mode == "positions":
            score = _masked_cos(emb, t, _positions(scheme, clean, batch))
        else:
            score = emb @ t
        for i, row in enumerate(score.reshape(len(sets), upto - done)):
            scores[i].extend(row.tolist())
        done = upto
        s_b, s_n, s_d = np.asarray(scores[0]), np.asarray(scores[1]), np.asarray(scores[2:])
        det = gaussian_null_detection("look", float(s_b.mean() - s_n.mean()), list(s_d.mean(1) - s_n.mean()), fpr,
                                      p_value_from="t")
        best = min(best, det.p_value)
        p_adj = min(1.0, looks * best)
        trail.append({"texts_per_set": upto, "queries": queries, "p_value": det.p_value, "z": det.statistic})
        if p_adj <= fpr:
            break
    _, ks_p = ks_2samp(s_b, s_n, alternative="greater")
    observed = float(s_b.mean() - s_n.mean())
    null = [float(x) for x in s_d.mean(1) - s_n.mean()]
    final = gaussian_null_detection(f"{scheme.name}-ownership", observed, null, fpr, n_scored=queries,
                                    p_value_from="t", mode=mode, ks_p=ks_p, null_samples=null, budget=budget,
                                    looks=trail, texts_per_set=n, decoy_sets=k)
    det = dataclasses.replace(final, p_value=p_adj, decision=bool(p_adj <= fpr))
    return OwnershipReport(delta_cos=observed, delta_l2=-2.0 * observed, ks_p=ks_p, detection=det, mode=mode,
                           queries=queries)


def ownership_queries(scheme: EaaSScheme, n_texts: int = DEFAULT_TEXTS, n_decoys: int = DEFAULT_DECOYS) -> list[str]:
    """The texts the ownership test sends the suspect: backdoor, benign, then each decoy set (all
    derived from the key, so a third party with the revealed key derives the same ones)."""
    vs = verification_texts(scheme, n_texts, n_decoys)
    return vs.backdoor + vs.benign + [x for d in vs.decoys for x in d]


def score_ownership(emb: np.ndarray, scheme: EaaSScheme, target: np.ndarray | None, mode: str, n_texts: int,
                    n_decoys: int, fpr: float, positions: np.ndarray | None = None) -> OwnershipReport:
    """The ownership test on the suspect's embeddings ``emb`` of :func:`ownership_queries` (rows in
    that order); ``target``: the target embedding (``None`` in ``target-free`` mode); ``positions``:
    ESpeW's positions in ``positions`` mode. ``detection.details["null_samples"]`` holds the decoy statistics."""
    check_fpr(fpr)
    n = n_texts
    if emb.shape[0] != n * (2 + n_decoys):
        raise InputError(f"expected {n * (2 + n_decoys)} embeddings ({n} texts x (2 + {n_decoys} decoy sets)), got {emb.shape[0]}")
    ks_p = None
    if target is None:
        back, benign, decoy = emb[:n], emb[n : 2 * n], emb[2 * n :].reshape(n_decoys, n, -1)
        observed = _mean_pairwise_cos(back) - _mean_pairwise_cos(benign)
        null = [_mean_pairwise_cos(d) - _mean_pairwise_cos(benign) for d in decoy]
    else:
        score = _masked_cos(emb, target, positions) if positions is not None else emb @ target
        s_b, s_n, s_d = score[:n], score[n : 2 * n], score[2 * n :].reshape(n_decoys, n)
        _, ks_p = ks_2samp(s_b, s_n, alternative="greater")
        observed = float(s_b.mean() - s_n.mean())
        null = list(s_d.mean(1) - s_n.mean())
    delta_l2 = -2.0 * observed  # unit vectors: |e - t|^2 = 2 - 2 cos(e, t)
    # target-free: a heavy-tailed null, where only the exact rank p-value is honest (>= 1/(n_decoys+1))
    det = gaussian_null_detection(
        f"{scheme.name}-ownership", observed, null, fpr, n_scored=n * (2 + n_decoys),
        p_value_from="rank" if mode == "target-free" else "normal", mode=mode, ks_p=ks_p,
        null_samples=[float(x) for x in null],
    )
    return OwnershipReport(delta_cos=observed, delta_l2=delta_l2, ks_p=ks_p, detection=det, mode=mode)


def verify_warden(
    suspect: Encoder, scheme: Warden, targets: np.ndarray | None, mode: str = "target", n_texts: int = DEFAULT_TEXTS,
    n_decoys: int = DEFAULT_DECOYS, fpr: float = DEFAULT_FPR, budget: int | None = None,
) -> OwnershipReport:
    """WARDEN's ownership test: :func:`verify_ownership` on each direction (its triggers against its
    target; ``budget`` split evenly), the verdict's p-value ``directions x`` the smallest (Bonferroni),
    so one direction that survives an attack is enough. ``details["directions"]`` holds each one's."""
    check_fpr(fpr)
    if mode not in ("target", "copy-target"):
        raise InputError(f"warden: the test runs in target or copy-target mode, got {mode!r}")
    r = scheme.directions
    if mode == "target":
        if targets is None:
            raise InputError("verify_warden: target mode needs the provider's targets (Warden.target_embedding)")
        targets = check_embeddings(np.asarray(targets).reshape(r, -1), suspect.dim, "targets")
    least = MIN_TEXTS * (2 + MIN_DECOYS) + (mode == "copy-target")
    if budget is not None and (not isinstance(budget, int) or budget < r * least):
        raise InputError(f"warden splits the budget over its {r} directions: it must be at least {r * least}, got {budget!r}")
    per = None if budget is None else budget // r
    reps = [verify_ownership(suspect, scheme.direction(i), None if targets is None else targets[i], mode,
                             n_texts=n_texts, n_decoys=n_decoys, fpr=fpr, budget=per) for i in range(r)]
    best = min(range(r), key=lambda i: reps[i].p_value)
    p = min(1.0, r * reps[best].p_value)
    det = dataclasses.replace(reps[best].detection, method="warden-ownership", p_value=p, decision=bool(p <= fpr),
                              details={**reps[best].detection.details, "directions": [x.to_dict() for x in reps]})
    return OwnershipReport(delta_cos=reps[best].delta_cos, delta_l2=reps[best].delta_l2, ks_p=reps[best].ks_p,
                           detection=det, mode=mode, queries=sum(x.queries for x in reps))
