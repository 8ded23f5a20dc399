"""Does a suspect derive from the victim? Two tests on its output vectors, calibrated, through ``stats``.

**Test 1 (containment).** Each query's output vector has a relative residual ``rho`` against the
signature (:meth:`Signature.residuals`). The victim and models that keep its output layer (other
dtypes, re-quantization, LoRA on attention/MLP, short fine-tunes) stay near the numeric noise
floor; unrelated models sit near ``sqrt(1 - h/|V|)``. The calibration stored in the signature
(:func:`calibrate`) fixes the threshold ``tau`` as the geometric mean of the victim's own noise
floor (its outputs in bfloat16 and float16) and the smallest residual seen on unrelated models, and ``pi0``,
a 95% Clopper-Pearson upper bound on the chance that an unrelated model's vector falls below
``tau``. With ``c`` of ``q`` queries contained, the p-value is the exact binomial tail
``P[Binomial(q, pi0) >= c]`` (:func:`wmkit.stats.binomial_detection`).

**Test 2 (joint space, for PEFT that changes the output layer).** Queries are taken one by one;
a vector whose residual against the growing basis exceeds ``tau`` adds its residual direction.
``L_sum - h`` = directions added. The same greedy count from the all-ones direction alone gives
the suspect's own output rank ``r_s`` at that tolerance. A LoRA of rank ``r`` on the output layer
adds at most ``r`` (its outputs lie in ``span(W) + span(B)``) while its own rank grows with the
queries; an unrelated model adds every direction it has (``added = r_s``), whether its outputs
are diverse (a trained model: ``r_s = q``) or not (a barely trained one whose outputs are all
near its unigram distribution: ``r_s = 1``). Rule: derived iff ``added <= r_s / 2`` and
``r_s >= 4`` -- at least half of the suspect's own output space is ours. With ``q`` queries this
catches output-layer LoRA of rank up to ``q / 2`` and cannot be fooled by low-rank outputs.

Restricted access (top-k, top-1) recovers only some vocabulary entries (the signature's
dimension plus a margin of 128, :func:`query_rows`). Residuals on those rows are smaller for
unrelated models (about ``sqrt(margin / rows)``), so the signature holds a second calibration
for them (``meta["calibration_rows"]``) and the rows themselves. Report both tests; the verdict
is derived if either says so.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..stats import FINGERPRINT_FPR, Detection, binomial_detection, check_fpr, clopper_pearson_upper
from .signature import Signature

DEFAULT_FPR = FINGERPRINT_FPR
DEFAULT_QUERIES = 64
ROW_MARGIN = 128
MIN_OWN_RANK = 4


def query_prompts(vocab_size: int, n: int, length: int = 12, seed: int = 0) -> list[list[int]]:
    """``n`` random token-id prompts (seeded; ids below 1000 skipped to avoid special tokens)."""
    rng = np.random.default_rng(seed)
    lo = min(1000, vocab_size // 2)
    return [rng.integers(lo, vocab_size, size=length).tolist() for _ in range(n)]


def query_rows(sig: Signature, margin: int = ROW_MARGIN, seed: int = 0) -> np.ndarray:
    """Vocabulary entries to recover through a restricted API: the signature's dimension plus a margin."""
    m = min(sig.vocab_size, sig.basis.shape[1] + margin)
    return np.sort(np.random.default_rng(seed).permutation(sig.vocab_size)[:m])


def calibrate(
    sig: Signature,
    victim_noise: Sequence[float],
    unrelated: Sequence[float],
    confidence: float = 0.95,
    rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """Store ``tau`` and ``pi0`` from measured residuals in ``sig.meta["calibration"]`` (full vectors)
    or, with ``rows``, in ``sig.meta["calibration_rows"]`` together with the rows; returns it."""
    noise, unrel = np.asarray(victim_noise, float), np.asarray(unrelated, float)
    if noise.size == 0 or unrel.size == 0:
        raise InputError("calibration needs residuals of the victim's own variants and of unrelated models")
    floor, umin = float(noise.max()), float(unrel.min())
    if not floor < umin:
        raise InputError(f"victim noise floor {floor:.3g} is not below the unrelated models' residuals ({umin:.3g})")
    tau = float(np.sqrt(max(floor, 1e-12) * umin))
    k = int((unrel <= tau).sum())
    pi0 = clopper_pearson_upper(k, int(unrel.size), confidence)
    cal = {"tau": tau, "pi0": pi0, "noise_floor": floor, "unrelated_min": umin, "n_unrelated": int(unrel.size),
           "confidence": confidence}
    if rows is None:
        sig.meta["calibration"] = cal
    else:
        sig.meta["calibration_rows"] = {**cal, "rows": [int(r) for r in rows]}
    return cal


@dataclass
class FingerprintReport:
    """The verdict on one suspect.

    Attributes:
        derived: the verdict (test 1 or test 2).
        compatible: False if the suspect's vocabulary differs (then nothing else is meaningful).
        containment: test 1 as a :class:`~wmkit.stats.Detection` (``None`` if incompatible).
        residuals: per-query relative residuals.
        added: test 2's directions added (``L_sum - h``); ``own_rank`` the suspect's own output
            rank at the same tolerance; ``joint_derived`` test 2's decision.
        queries, api_calls: what the test cost.
    """

    derived: bool
    compatible: bool
    containment: Detection | None = None
    residuals: list[float] = field(default_factory=list)
    added: int = 0
    own_rank: int = 0
    joint_derived: bool = False
    queries: int = 0
    api_calls: int = 0
    reason: str = ""

    @property
    def p_value(self) -> float:
        """Test 1's p-value (1.0 when incompatible)."""
        return self.containment.p_value if self.containment else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        r = np.asarray(self.residuals) if self.residuals else np.zeros(1)
        return {
            "derived": self.derived,
            "compatible": self.compatible,
            "p_value": self.p_value,
            "queries": self.queries,
            "api_calls": self.api_calls,
            "contained": self.containment.details["green"] if self.containment else 0,
            "residual_median": float(np.median(r)),
            "residual_max": float(r.max()),
            "l_sum_minus_h": self.added,
            "own_rank": self.own_rank,
            "joint_derived": self.joint_derived,
            "reason": self.reason,
        }


def greedy_added(start: np.ndarray, vectors: np.ndarray, tau: float) -> int:
    """How many directions ``vectors`` add to the orthonormal ``start``: one per vector whose residual
    against the growing basis exceeds ``tau`` times its (centered) norm."""
    q = start
    added = 0
    for v in np.atleast_2d(vectors).astype(np.float64):
        v = v - v.mean()
        res = v - q @ (q.T @ v)
        res = res - q @ (q.T @ res)  # re-orthogonalize (Gram-Schmidt twice)
        if np.linalg.norm(res) > tau * np.linalg.norm(v):
            q = np.hstack([q, (res / np.linalg.norm(res))[:, None]])
            added += 1
    return added


def joint_space(sig: Signature, vectors: np.ndarray, tau: float, rows: np.ndarray | None = None) -> tuple[int, int]:
    """Test 2: ``(added, own_rank)``: directions the suspect adds to the signature, and its own rank."""
    q = sig.basis.astype(np.float64) if rows is None else np.linalg.qr(sig.basis[rows].astype(np.float64))[0]
    ones = np.ones((q.shape[0], 1)) / np.sqrt(q.shape[0])
    return greedy_added(q, vectors, tau), greedy_added(ones, vectors, tau)


def verify_fingerprint(
    sig: Signature,
    access: Any,
    queries: int = DEFAULT_QUERIES,
    restricted: bool = False,
    fpr: float = DEFAULT_FPR,
    seed: int = 0,
) -> FingerprintReport:
    """Run both tests on ``access`` (a :mod:`.access` level) with ``queries`` random prompts.

    ``restricted``: recover only the signature's calibrated rows (for top-k / top-1 access).
    """
    check_fpr(fpr)
    cal = sig.meta.get("calibration_rows" if restricted else "calibration")
    if not cal:
        raise InputError("the signature is not calibrated (wm fingerprint enroll calibrates it)")
    if access.vocab_size != sig.vocab_size:
        return FingerprintReport(
            derived=False, compatible=False,
            reason=f"incompatible vocabulary: the suspect has {access.vocab_size} tokens, the signature {sig.vocab_size}",
        )
    if queries < 2:
        raise InputError(f"queries must be at least 2, got {queries}")
    before = access.calls
    vecs = suspect_vectors(sig, access, queries, restricted, seed)
    return dataclasses.replace(score_fingerprint(sig, vecs, restricted, fpr), api_calls=access.calls - before)


def suspect_vectors(sig: Signature, access: Any, queries: int, restricted: bool = False, seed: int = 0) -> np.ndarray:
    """The suspect's output vectors for the ``queries`` random prompts (only the calibrated rows when
    ``restricted``): what :func:`score_fingerprint` tests."""
    cal = sig.meta.get("calibration_rows" if restricted else "calibration")
    if not cal:
        raise InputError("the signature is not calibrated (wm fingerprint enroll calibrates it)")
    rows = np.asarray(cal["rows"]) if restricted else None
    return access.vectors(query_prompts(sig.vocab_size, queries, seed=seed), rows)


def score_fingerprint(sig: Signature, vecs: np.ndarray, restricted: bool = False, fpr: float = DEFAULT_FPR) -> FingerprintReport:
    """Both tests on the suspect's output vectors ``vecs`` (one row per query prompt; with
    ``restricted``, only the signature's calibrated rows)."""
    check_fpr(fpr)
    cal = sig.meta.get("calibration_rows" if restricted else "calibration")
    if not cal:
        raise InputError("the signature is not calibrated (wm fingerprint enroll calibrates it)")
    rows = np.asarray(cal["rows"]) if restricted else None
    queries = len(vecs)
    rho = sig.residuals(vecs, rows)
    contained = int((rho <= cal["tau"]).sum())
    det = binomial_detection("fingerprint-containment", contained, queries, cal["pi0"], fpr, tau=cal["tau"])
    added, own = joint_space(sig, vecs, cal["tau"], rows)
    joint = own >= MIN_OWN_RANK and added <= own / 2
    return FingerprintReport(
        derived=bool(det.decision or joint),
        compatible=True,
        containment=det,
        residuals=[float(x) for x in rho],
        added=added,
        own_rank=own,
        joint_derived=bool(joint),
        queries=queries,
    )


def random_init_like(model: Any, seed: int) -> Any:
    """A model of ``model``'s architecture and vocabulary with fresh random weights (an unrelated model)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model.config).eval()


def enroll(model: Any, unrelated: Sequence[Any] | None = None, queries: int = 16, seed: int = 0, **meta: Any) -> Signature:
    """The calibrated signature of ``model`` (float32 weights).

    The noise floor comes from the model's own outputs in bfloat16 and float16 (the coarsest
    dtypes a derivative is served in); the unrelated residuals from ``unrelated`` models (default:
    two random re-initializations of the same architecture).
    """
    import copy

    import torch

    from .access import ModelAccess
    from .signature import signature_from_weights

    sig = signature_from_weights(model, **meta)
    prompts = query_prompts(sig.vocab_size, queries, seed=seed + 1)
    rows = query_rows(sig)
    variants = [copy.deepcopy(model).to(dtype) for dtype in (torch.bfloat16, torch.float16)]
    others = list(unrelated) if unrelated is not None else [random_init_like(model, 1000 + i) for i in range(2)]
    noise = [ModelAccess(m, "logits").vectors(prompts) for m in variants]
    unrel = [ModelAccess(m, "logits").vectors(prompts) for m in others]
    del variants
    for r in (None, rows):
        calibrate(
            sig,
            np.concatenate([sig.residuals(v if r is None else v[:, r], r) for v in noise]),
            np.concatenate([sig.residuals(v if r is None else v[:, r], r) for v in unrel]),
            rows=r,
        )
    return sig
