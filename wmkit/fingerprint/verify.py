"""Does a suspect derive from the victim? One containment test on its output vectors, calibrated, through ``stats``.

**Statistic.** The suspect answers ``q`` random prompts with output vectors ``v_1..v_q``. Each is
centered on the suspect's own mean answer, ``v_i - mean_j v_j``, and its relative residual ``rho_i``
against the signature is taken (:meth:`Signature.residuals`). Centering removes whatever the
suspect adds to every answer alike -- an output bias, or the shift of its token frequencies that a
fine-tune on new text learns (on the default model, 200 steps of full fine-tuning on news at lr 1e-4:
median residual 0.21 without centering, 0.07 with) -- while an unrelated model's answers differ from
one another in directions of its own (random re-initializations: 0.99 either way).

**Calibration** (:func:`enroll`, stored in the signature). Two families of models built from the
victim at enrollment, never the ones a verdict is later judged on: *derived* -- the victim in
bfloat16 and float16 and its weights rounded to 8 and 5 bits per output row (:func:`round_weights`,
round to nearest) -- and *unrelated* -- random re-initializations of the architecture. ``tau`` is the geometric mean of the largest derived residual
and the smallest unrelated one; ``pi0`` is a 95% Clopper-Pearson upper bound on the rate of
unrelated vectors at or below ``tau``.

**Test.** With ``c`` of the ``q`` residuals at or below ``tau``, the p-value is the binomial tail
``P[Binomial(q, pi0) >= c]`` (:func:`wmkit.stats.binomial_detection`), and the verdict is
``p <= fpr``: the reported p-value is always that of the test that decided. Its null treats an
unrelated model's vectors as draws from the calibration models' residual distribution; a model
whose outputs are unlike every calibration model (an unrelated model trained long on this
tokenizer, say) is measured by ``benchmarks/fingerprint.py``, not covered by the bound.

Restricted access (top-k, top-1) recovers only some vocabulary entries (the signature's
dimension plus a margin of 128, :func:`query_rows`); residuals on those rows are smaller for every
model (about ``sqrt(margin / rows)`` for unrelated ones), so the signature holds a second
calibration for them (``meta["calibration_rows"]``) and the rows themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..stats import FINGERPRINT_FPR, Detection, binomial_detection, check_fpr, clopper_pearson_upper
from .signature import Signature

DEFAULT_FPR = FINGERPRINT_FPR
DEFAULT_QUERIES = 64
ROW_MARGIN = 128
STATISTIC = "centered-residual"  # what a calibration measured; older signatures are refused
CALIBRATION_BITS = (8, 5)
GUIDE_QUERIES = 16  # the victim's logits stored for the first query prompts (top-1 recovery's guide)
TOP1_QUERIES = 8  # top-1: at most 8 queries, decided as soon as it can be (verify_sequential)
FIRST_LOOK = 4  # the first query count at which verify_sequential looks


def query_prompts(vocab_size: int, n: int, length: int = 12, seed: int = 0) -> list[list[int]]:
    """``n`` random token-id prompts (seeded; ids below 1000 skipped to avoid special tokens)."""
    rng = np.random.default_rng(seed)
    lo = min(1000, vocab_size // 2)
    return [rng.integers(lo, vocab_size, size=length).tolist() for _ in range(n)]


def query_rows(sig: Signature, margin: int = ROW_MARGIN, seed: int = 0) -> np.ndarray:
    """Vocabulary entries to recover through a restricted API: the signature's dimension plus a margin."""
    m = min(sig.vocab_size, sig.basis.shape[1] + margin)
    return np.sort(np.random.default_rng(seed).permutation(sig.vocab_size)[:m])


def guide_for(sig: Signature) -> dict[tuple[int, ...], np.ndarray] | None:
    """``{query prompt: the victim's logits}`` for the query prompts whose logits the signature holds
    (the first ``len(sig.guide)`` prompts of :func:`query_prompts` with seed 0), or None."""
    if sig.guide is None:
        return None
    return {tuple(p): g for p, g in zip(query_prompts(sig.vocab_size, len(sig.guide)), sig.guide)}


def centered_residuals(sig: Signature, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The statistic: relative residuals of ``vectors`` (one per query) after subtracting their mean."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    if len(v) < 2:
        raise InputError(f"need at least 2 output vectors to center, got {len(v)}")
    return sig.residuals(v - v.mean(axis=0, keepdims=True), rows)


def calibrate(
    sig: Signature,
    derived: Sequence[float],
    unrelated: Sequence[float],
    confidence: float = 0.95,
    rows: np.ndarray | None = None,
    **family: Any,
) -> dict[str, Any]:
    """Store ``tau`` and ``pi0`` from the residuals of derived and unrelated calibration models in
    ``sig.meta["calibration"]`` (full vectors) or, with ``rows``, in ``sig.meta["calibration_rows"]``
    together with the rows; ``family`` (the models' names) is recorded with it. Returns it."""
    der, unrel = np.asarray(derived, float), np.asarray(unrelated, float)
    if der.size == 0 or unrel.size == 0:
        raise InputError("calibration needs residuals of derived and of unrelated models")
    dmax, umin = float(der.max()), float(unrel.min())
    if not dmax < umin:
        raise InputError(f"the derived models' residuals (up to {dmax:.3g}) reach the unrelated models' ({umin:.3g})")
    tau = float(np.sqrt(max(dmax, 1e-12) * umin))
    k = int((unrel <= tau).sum())
    pi0 = clopper_pearson_upper(k, int(unrel.size), confidence)
    cal = {"statistic": STATISTIC, "tau": tau, "pi0": pi0, "derived_max": dmax, "unrelated_min": umin,
           "n_derived": int(der.size), "n_unrelated": int(unrel.size), "confidence": confidence, **family}
    if rows is None:
        sig.meta["calibration"] = cal
    else:
        sig.meta["calibration_rows"] = {**cal, "rows": [int(r) for r in rows]}
    return cal


@dataclass
class FingerprintReport:
    """The verdict on one suspect.

    Attributes:
        derived: the verdict: the containment test's p-value is at most the FPR.
        compatible: False if the suspect's vocabulary differs (then nothing else is meaningful).
        containment: the test as a :class:`~wmkit.stats.Detection` (``None`` if incompatible).
        residuals: per-query centered relative residuals (the statistic; empty for text access, whose
            ``containment`` counts matching answers).
        tau: the calibrated threshold the residuals are compared with.
        queries, api_calls: what the test cost.
    """

    derived: bool
    compatible: bool
    containment: Detection | None = None
    residuals: list[float] = field(default_factory=list)
    tau: float = float("nan")
    queries: int = 0
    api_calls: int = 0
    reason: str = ""

    @property
    def p_value(self) -> float:
        """The containment test's p-value (1.0 when incompatible): the one that decided the verdict."""
        return self.containment.p_value if self.containment else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``margin``: ``log10(tau / residual median)``, positive on the derived side;
        residuals, tau and margin are None when the vocabularies differ)."""
        if not self.residuals:  # incompatible, or a test without residuals (text access)
            return {"derived": self.derived, "compatible": self.compatible, "p_value": self.p_value, "queries": self.queries,
                    "api_calls": self.api_calls, "contained": self.containment.details["green"] if self.containment else 0,
                    "residual_median": None, "residual_max": None, "tau": None, "margin": None, "reason": self.reason}
        r = np.asarray(self.residuals)
        med = float(np.median(r))
        return {
            "derived": self.derived,
            "compatible": self.compatible,
            "p_value": self.p_value,
            "queries": self.queries,
            "api_calls": self.api_calls,
            "contained": self.containment.details["green"] if self.containment else 0,
            "residual_median": med,
            "residual_max": float(r.max()),
            "tau": self.tau,
            "margin": float(np.log10(self.tau / max(med, 1e-300))),
            "reason": self.reason,
        }


def _calibration(sig: Signature, restricted: bool) -> dict[str, Any]:
    cal = sig.meta.get("calibration_rows" if restricted else "calibration")
    if not cal:
        raise InputError("the signature is not calibrated (wm fingerprint enroll calibrates it)")
    if cal.get("statistic") != STATISTIC:
        raise InputError("the signature was calibrated by an older wmkit for another statistic: "
                         "enroll the model again (wm fingerprint enroll)")
    return cal


def _incompatible(sig: Signature, access: Any) -> FingerprintReport | None:
    """The "not derived" report for a suspect whose vocabulary is smaller than the signature's (else None).

    A larger vocabulary is tested on the signature's first ``|V|`` token ids: vocabulary extension
    appends tokens and keeps the old ids, so the old rows of a derivative's output layer are still
    in the victim's output space (log-probs normalised over the larger vocabulary move by a constant,
    which the all-ones direction absorbs). An unrelated model with a larger vocabulary gains nothing:
    its first ``|V|`` rows are as far from the victim's space as any others."""
    if access.vocab_size >= sig.vocab_size:
        return None
    return FingerprintReport(
        derived=False, compatible=False,
        reason=f"incompatible vocabulary: the suspect has {access.vocab_size} tokens, the signature {sig.vocab_size}",
    )


def verify_fingerprint(
    sig: Signature,
    access: Any,
    queries: int = DEFAULT_QUERIES,
    restricted: bool = False,
    fpr: float = DEFAULT_FPR,
    seed: int = 0,
) -> FingerprintReport:
    """Run the containment test on ``access`` (a :mod:`.access` level) with ``queries`` random prompts.

    ``restricted``: recover only the signature's calibrated rows (for top-k / top-1 access).
    """
    check_fpr(fpr)
    _calibration(sig, restricted)
    if (bad := _incompatible(sig, access)) is not None:
        return bad
    if queries < 2:
        raise InputError(f"queries must be at least 2, got {queries}")
    before = access.calls
    vecs = suspect_vectors(sig, access, queries, restricted, seed)
    return dataclasses.replace(score_fingerprint(sig, vecs, restricted, fpr), api_calls=access.calls - before)


def verify_sequential(
    sig: Signature,
    access: Any,
    max_queries: int = TOP1_QUERIES,
    first_look: int = FIRST_LOOK,
    fpr: float = DEFAULT_FPR,
    seed: int = 0,
    record: list[np.ndarray] | None = None,
) -> FingerprintReport:
    """The containment test on the signature's rows, asked one query at a time and decided as soon as it can be.

    For an access level whose every query is expensive (top-1: about 1,500 API calls). The test looks
    after each of the queries ``first_look..max_queries`` (``m`` looks): with ``c`` of the ``k``
    centered residuals so far at or below ``tau``, look ``k`` rejects when
    ``m * P[Binomial(k, pi0) >= c] <= fpr`` (Bonferroni over the looks, so the chance that an unrelated
    model is rejected at *any* look is at most ``fpr``), and the report's p-value is that adjusted
    tail at the look that decided. It stops without rejecting once no later look could reject even if
    every remaining query were contained (counting the residuals as they stand). The default model,
    ``pi0`` 0.0155: 4 of 4 contained decide at the first look (4 queries instead of a fixed 6).
    ``record``: a list the suspect's vectors are appended to (evidence keeps them; :func:`score_sequential`
    replays the test on them).
    """
    check_fpr(fpr)
    rows = np.asarray(_calibration(sig, True)["rows"])
    if not 2 <= first_look <= max_queries:
        raise InputError(f"the first look must be in 2..max_queries, got {first_look} (max {max_queries})")
    if (bad := _incompatible(sig, access)) is not None:
        return bad
    before, vecs = access.calls, [] if record is None else record
    for k, prompt in enumerate(query_prompts(sig.vocab_size, max_queries, seed=seed), 1):
        vecs.append(access.vectors([prompt], rows)[0])
        if k >= first_look and (rep := _look(sig, np.stack(vecs), max_queries, first_look, fpr)) is not None:
            return dataclasses.replace(rep, api_calls=access.calls - before)
    raise AssertionError("unreachable: the last look always decides")


def score_sequential(sig: Signature, vecs: np.ndarray, max_queries: int = TOP1_QUERIES, first_look: int = FIRST_LOOK,
                     fpr: float = DEFAULT_FPR) -> FingerprintReport:
    """:func:`verify_sequential` replayed on recorded vectors (the signature's rows, one per query, in
    the order asked): the report of the look that decided. The record must end exactly there -- one
    that goes on past the deciding look, or stops before any look decides, is refused."""
    check_fpr(fpr)
    v = np.atleast_2d(np.asarray(vecs, dtype=np.float64))
    if not 2 <= first_look <= max_queries:
        raise InputError(f"the first look must be in 2..max_queries, got {first_look} (max {max_queries})")
    for k in range(first_look, min(len(v), max_queries) + 1):
        if (rep := _look(sig, v[:k], max_queries, first_look, fpr)) is not None:
            if k != len(v):
                raise InputError(f"the sequential test decides after {k} queries but {len(v)} were recorded")
            return rep
    raise InputError(f"{len(v)} recorded queries are not enough for the sequential test to decide")


def _look(sig: Signature, vecs: np.ndarray, max_queries: int, first_look: int, fpr: float) -> FingerprintReport | None:
    """The sequential test's look after ``len(vecs)`` queries: its report if it decides there, else None."""
    from ..stats import binomial_pvalue

    cal = _calibration(sig, True)
    rows, tau, pi0 = np.asarray(cal["rows"]), cal["tau"], cal["pi0"]
    looks, k = list(range(first_look, max_queries + 1)), len(vecs)
    rho = centered_residuals(sig, vecs, rows)
    c = int((rho <= tau).sum())
    p = min(1.0, len(looks) * binomial_pvalue(c, k, pi0))
    hopeless = all(len(looks) * binomial_pvalue(c + j - k, j, pi0) > fpr for j in looks if j > k)
    if not (p <= fpr or k == max_queries or hopeless):
        return None
    det = binomial_detection("fingerprint-containment", c, k, pi0, fpr, p_value=p, tau=tau, looks=len(looks),
                             max_queries=max_queries)
    return FingerprintReport(derived=bool(det.decision), compatible=True, containment=det,
                             residuals=[float(x) for x in rho], tau=float(tau), queries=k)


def suspect_vectors(sig: Signature, access: Any, queries: int, restricted: bool = False, seed: int = 0) -> np.ndarray:
    """The suspect's output vectors for the ``queries`` random prompts (only the calibrated rows when
    ``restricted``): what :func:`score_fingerprint` tests."""
    cal = _calibration(sig, restricted)
    rows = np.asarray(cal["rows"]) if restricted else np.arange(sig.vocab_size)
    return access.vectors(query_prompts(sig.vocab_size, queries, seed=seed), rows)


def score_fingerprint(sig: Signature, vecs: np.ndarray, restricted: bool = False, fpr: float = DEFAULT_FPR) -> FingerprintReport:
    """The containment test on the suspect's output vectors ``vecs`` (one row per query prompt; with
    ``restricted``, only the signature's calibrated rows)."""
    check_fpr(fpr)
    cal = _calibration(sig, restricted)
    rows = np.asarray(cal["rows"]) if restricted else None
    queries = len(vecs)
    rho = centered_residuals(sig, vecs, rows)
    contained = int((rho <= cal["tau"]).sum())
    det = binomial_detection("fingerprint-containment", contained, queries, cal["pi0"], fpr, tau=cal["tau"])
    return FingerprintReport(derived=bool(det.decision), compatible=True, containment=det,
                             residuals=[float(x) for x in rho], tau=float(cal["tau"]), queries=queries)


def random_init_like(model: Any, seed: int) -> Any:
    """A model of ``model``'s architecture and vocabulary with fresh random weights (an unrelated model).
    It has its own copy of the config: resizing it (``resize_token_embeddings``) leaves ``model``'s alone."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(copy.deepcopy(model.config)).eval()


def round_weights(model: Any, bits: int) -> Any:
    """A copy of ``model`` whose 2-D weights are rounded to ``bits`` bits per output row (symmetric,
    round to nearest: weight-only quantization as int8 serving does it, and coarser)."""
    import copy

    import torch

    if not 2 <= bits <= 16:
        raise InputError(f"bits must be in 2..16, got {bits}")
    m = copy.deepcopy(model)
    q = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for p in m.parameters():  # tied weights are listed once
            if p.ndim == 2:
                scale = p.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / q
                p.copy_(torch.round(p / scale).clamp(-q, q) * scale)
    return m


def enroll(model: Any, unrelated: Sequence[Any] | None = None, queries: int = DEFAULT_QUERIES, seed: int = 0,
           on_model: Callable[[str, int], None] | None = None, **meta: Any) -> Signature:
    """The calibrated signature of ``model`` (float32 weights); see the module docstring.

    The signature also keeps the victim's own logits on the first :data:`GUIDE_QUERIES` query prompts
    (the guide of top-1 recovery). Derived calibration models: ``model`` in bfloat16 and float16 and rounded to
    :data:`CALIBRATION_BITS` bits per row; unrelated: ``unrelated`` (default: three random
    re-initializations of the same architecture). Each answers ``queries`` random prompts.
    ``on_model(name, total)`` is called as each calibration model has answered (progress).
    """
    import copy

    import torch

    from .access import ModelAccess
    from .signature import signature_from_weights

    if queries < 4:
        raise InputError(f"queries must be at least 4, got {queries}")
    sig = signature_from_weights(model, **meta)
    sig.guide = ModelAccess(model, "logits").vectors(query_prompts(sig.vocab_size, GUIDE_QUERIES)).astype(np.float32)
    prompts = query_prompts(sig.vocab_size, queries, seed=seed + 1)
    rows = query_rows(sig)
    derived = {"bfloat16": lambda: copy.deepcopy(model).to(torch.bfloat16),
               "float16": lambda: copy.deepcopy(model).to(torch.float16),
               **{f"rtn{b}": (lambda b=b: round_weights(model, b)) for b in CALIBRATION_BITS}}
    others = list(unrelated) if unrelated is not None else None
    n_unrel = len(others) if others is not None else 3
    total = len(derived) + n_unrel

    def answered(name: str, vecs: Any) -> Any:
        if on_model is not None:
            on_model(name, total)
        return vecs

    d_vecs = [answered(name, ModelAccess(make(), "logits").vectors(prompts)) for name, make in derived.items()]
    u_vecs = [answered(f"unrelated-{i}", ModelAccess(others[i] if others is not None else random_init_like(model, 1000 + i),
                                                     "logits").vectors(prompts))
              for i in range(n_unrel)]
    family = {"derived_models": list(derived), "unrelated_models": (
        [f"given-{i}" for i in range(n_unrel)] if others is not None else [f"random-init-{1000 + i}" for i in range(n_unrel)])}
    for r in (None, rows):
        calibrate(
            sig,
            np.concatenate([centered_residuals(sig, v if r is None else v[:, r], r) for v in d_vecs]),
            np.concatenate([centered_residuals(sig, v if r is None else v[:, r], r) for v in u_vecs]),
            rows=r, **family,
        )
    return sig
