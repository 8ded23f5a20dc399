"""The victim's signature: an orthonormal basis of the space its output vectors live in.

A causal LM's logits are ``s = W z (+ b)`` with ``W`` its output layer (``|V| x h``), so every logit
vector lies in the column space of ``[W | b]``; log-probs ``s - logsumexp(s) 1`` lie in that of
``[W | b | 1]``, and so do logits up to the constant shift that softmax ignores. The signature is
an orthonormal basis ``Q`` (float64 on use, float32 on disk) of ``[W | b | 1]``, from the weights
(:func:`signature_from_weights`) or, without weights, estimated from stacked output vectors
(:func:`signature_from_outputs`, which also reports the recovered hidden size ``h``).

The *relative residual* of a vector ``v`` is ``|v - Q Q^T v| / |v - mean(v)|`` (float64): about the
float rounding of the computation for the victim and models that keep its output layer, near
``sqrt(1 - h / |V|)`` for a model whose outputs live elsewhere.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> W = rng.standard_normal((500, 8))
>>> sig = signature_from_matrix(W)
>>> v_in, v_out = W @ rng.standard_normal(8) + 3.0, rng.standard_normal(500)
>>> r_in, r_out = sig.residuals(np.stack([v_in, v_out]))
>>> bool(r_in < 1e-12), round(float(r_out), 2)
(True, 0.99)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..files import write_file

SIG_FORMAT = "wmkit-fingerprint-signature/1"


@dataclass
class Signature:
    """An orthonormal basis of the victim's output space.

    Attributes:
        basis: ``[|V|, k]`` orthonormal columns (k = h + 1 with the all-ones direction).
        hidden_size: ``h``: the output layer's rank (estimated when built from outputs).
        meta: provenance and calibration (``source``, ``model``, ``calibration``, ...).
        guide: the victim's own logits ``[G, |V|]`` on the first ``G`` query prompts (enrollment
            stores them; top-1 recovery centres its searches on them), or None.
    """

    basis: np.ndarray
    hidden_size: int
    meta: dict[str, Any] = field(default_factory=dict)
    guide: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        """Length of the output vectors this signature checks."""
        return int(self.basis.shape[0])

    def residuals(self, vectors: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Relative residual of each row of ``vectors`` (``[m, |V|]``, or ``[m, len(rows)]`` with ``rows``).

        With ``rows``, only those vocabulary entries are compared: the least-squares fit uses the
        basis restricted to them (needs ``len(rows)`` well above ``k``).
        """
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        q = self.basis.astype(np.float64) if rows is None else self.basis[np.asarray(rows)].astype(np.float64)
        if v.shape[1] != q.shape[0]:
            raise InputError(f"vectors have {v.shape[1]} entries; the signature expects {q.shape[0]}")
        if not np.isfinite(v).all():
            raise InputError("output vectors contain NaN or infinite values")
        v = v - v.mean(axis=1, keepdims=True)
        if rows is None:
            res = v - (v @ q) @ q.T
        else:  # the restricted basis is not orthonormal: least squares
            coef, *_ = np.linalg.lstsq(q, v.T, rcond=None)
            res = v - (q @ coef).T
        return np.linalg.norm(res, axis=1) / np.maximum(np.linalg.norm(v, axis=1), 1e-300)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a new ``.safetensors`` file (never overwrites)."""
        from safetensors.numpy import save

        header = {"format": SIG_FORMAT, "hidden_size": str(self.hidden_size), "meta": json.dumps(self.meta)}
        arrays = {"basis": np.ascontiguousarray(self.basis, dtype=np.float32)}
        if self.guide is not None:
            arrays["guide"] = np.ascontiguousarray(self.guide, dtype=np.float32)
        return write_file(path, save(arrays, metadata=header))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Signature":
        """Read a signature written by :meth:`save`, with a clear error for anything else."""
        from safetensors import safe_open

        p = Path(path)
        if p.is_dir():
            raise InputError(f"signature {p} is a folder, expected a .safetensors file")
        if not p.is_file():
            raise InputError(f"signature {p} does not exist (make one with: wm fingerprint enroll MODEL -o {p})")
        try:
            with safe_open(str(p), framework="np") as f:
                header = f.metadata() or {}
                basis = f.get_tensor("basis")
                guide = f.get_tensor("guide") if "guide" in f.keys() else None
        except Exception:  # noqa: BLE001 - any parse failure is the same user error
            raise InputError(f"{p} is not a wmkit signature file (safetensors)") from None
        if header.get("format") != SIG_FORMAT:
            raise InputError(f"{p} is not a wmkit signature file (format {header.get('format')!r})")
        if guide is not None and (guide.ndim != 2 or guide.shape[1] != basis.shape[0]):
            raise InputError(f"{p}: its guide has shape {list(guide.shape)}, not [G, {basis.shape[0]}]")
        return cls(basis, int(header["hidden_size"]), json.loads(header.get("meta", "{}")), guide)


def _orthonormal(cols: np.ndarray) -> np.ndarray:
    q, r = np.linalg.qr(cols)
    keep = np.abs(np.diag(r)) > 1e-10 * np.abs(np.diag(r)).max()
    return q[:, keep]


def signature_from_matrix(weight: np.ndarray, bias: np.ndarray | None = None, **meta: Any) -> Signature:
    """The signature of an output layer given as a ``[|V|, h]`` matrix (and optional bias)."""
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] <= w.shape[1]:
        raise InputError(f"output layer must be [vocab, hidden] with vocab > hidden, got {list(w.shape)}")
    cols = [w, np.ones((w.shape[0], 1))]
    if bias is not None:
        cols.append(np.asarray(bias, dtype=np.float64).reshape(-1, 1))
    return Signature(_orthonormal(np.hstack(cols)), int(w.shape[1]), {"source": "weights", **meta})


def signature_from_weights(model: Any, **meta: Any) -> Signature:
    """The signature of a transformers causal LM, from its output layer (``get_output_embeddings``)."""
    head = model.get_output_embeddings()
    if head is None:
        raise InputError("the model has no output layer (get_output_embeddings() is None)")
    w = head.weight.detach().float().cpu().numpy()
    b = head.bias.detach().float().cpu().numpy() if getattr(head, "bias", None) is not None else None
    return signature_from_matrix(w, b, **meta)


def signature_from_outputs(vectors: np.ndarray, rel_tol: float = 1e-4, **meta: Any) -> Signature:
    """Estimate the signature from stacked output vectors ``[m, |V|]`` (m > h) by SVD.

    The rank is the number of singular values above ``rel_tol`` times the largest (after adding
    the all-ones direction); ``hidden_size`` = rank - 1. Needs more vectors than the hidden size,
    and ``rel_tol`` above the outputs' numeric noise (float32: ~1e-6 relative).
    """
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    if v.shape[0] < 2 or not np.isfinite(v).all():
        raise InputError("need at least two finite output vectors")
    a = np.hstack([v.T, np.ones((v.shape[1], 1)) * np.abs(v).max()])
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    rank = int((s > rel_tol * s[0]).sum())
    if rank >= v.shape[0]:
        raise InputError(
            f"all {v.shape[0]} vectors are independent: the hidden size is at least that; query more vectors"
        )
    return Signature(u[:, :rank], rank - 1, {"source": "outputs", "n_vectors": int(v.shape[0]), **meta})
