"""CPU kernels in C (``cpu_kernels.c``), compiled on first use and loaded with ctypes: the green-list
bias (:func:`green_bias_native`) and EXP-edit's edit-distance programme (:func:`levenshtein_prefix_native`).

:func:`green_bias_native` is the CPU counterpart of the Triton kernel: per row, the context
state (a few Philox calls) and one sweep over the vocabulary (one Philox call per 4 tokens, the
compare and the add fused, no ``[batch, vocab]`` temporaries); rows split across
``torch.get_num_threads()`` threads (ctypes releases the GIL). Parity with the torch spec is
tested bit for bit (``tests/test_kernels.py``).

The library is built with the system C compiler (``$CC``, else ``cc``) at ``-O3 -march=native``
with the spec's constants passed as ``-D`` flags (``prf.py`` stays their one source), into the
wmkit cache folder under a name that hashes the source, the flags and the machine; a second
process loads it in milliseconds. With no compiler, or ``WMKIT_NATIVE=0``, :func:`available`
is False: :func:`wmkit.kernels.green_bias` takes the ``torch.compile`` path and EXP-edit its torch
programme (same results; tested).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from .. import prf

_SOURCE = Path(__file__).with_name("cpu_kernels.c")
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_FAILED: str | None = None
_POOL: ThreadPoolExecutor | None = None
MIN_ROWS_PER_THREAD = 2
MAX_SELFHASH_H = 64  # cpu_kernels.c keeps the selfhash states on the stack


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has the pool object but none of its threads: it makes its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _flags() -> list[str]:
    names = ("PHILOX_M0", "PHILOX_M1", "PHILOX_W0", "PHILOX_W1", "CTX_DOMAIN", "TOKEN_DOMAIN", "SELECT_DOMAIN",
             "MODE_LEFTHASH", "MODE_SELFHASH")
    consts = {n: getattr(prf, n) for n in names}
    return ["-O3", "-march=native", "-fPIC", "-shared", "-std=c99", *(f"-D{k}={v:#x}u" for k, v in consts.items())]


def _cpu_flags() -> str:
    """The processor's feature flags (Linux), so a cache folder shared between machines never hands
    a ``-march=native`` build to a processor without its instructions."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _build() -> ctypes.CDLL:
    from ..models import cache_dir

    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc})")
    flags = _flags()
    tag = hashlib.sha256("\0".join([_SOURCE.read_text(), cc, *flags, platform.machine(), platform.processor(),
                                    _cpu_flags()]).encode()).hexdigest()[:16]
    folder = cache_dir() / "kernels"
    lib = folder / f"cpu_kernels-{tag}.so"
    if not lib.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            subprocess.run([cc, *flags, str(_SOURCE), "-o", tmp], check=True, capture_output=True, timeout=120)
            os.replace(tmp, lib)  # atomic: a concurrent builder leaves the same file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    dll = ctypes.CDLL(str(lib))
    f = dll.wmkit_green_bias
    p, i64, i32, u32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32
    f.argtypes = [p, i64, p, i64, p, i64, i64, i32, i32, p, i64, i64, i64, u32, u32, u32, u32, u32, ctypes.c_float]
    f.restype = None
    lev = dll.wmkit_levenshtein_prefix
    lev.argtypes = [p, i64, i64, ctypes.c_float, i64, i64, p]
    lev.restype = ctypes.c_int
    return dll


def available() -> bool:
    """Whether the native CPU kernel can run here (built and loaded once per process)."""
    global _LIB, _FAILED
    if os.environ.get("WMKIT_NATIVE", "1") == "0":
        return False
    if _LIB is not None:
        return True
    if _FAILED is not None:
        return False
    with _LOCK:
        if _LIB is None and _FAILED is None:
            try:
                _LIB = _build()
            except Exception as e:  # no compiler, a failed build: the torch path is exact too
                _FAILED = f"{type(e).__name__}: {e}"
    return _LIB is not None


def accepts(scores: torch.Tensor, out: torch.Tensor | None, h: int, seeding: str) -> bool:
    """Whether :func:`green_bias_native` takes these arguments: float32 CPU logits (and ``out``, if
    given, of the same shape) contiguous along the vocabulary; selfhash up to ``MAX_SELFHASH_H``."""
    def fits(t: torch.Tensor) -> bool:
        return t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 and t.stride(-1) == 1

    return (fits(scores) and (out is None or (fits(out) and out.shape == scores.shape))
            and (seeding != "selfhash" or 1 <= h <= MAX_SELFHASH_H))


def green_bias_native(
    scores: torch.Tensor, input_ids: torch.Tensor, key: prf.Key, h: int, seeding: str, gamma: float,
    delta: float, row_mask: torch.Tensor | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`wmkit.kernels.green_bias` on float32 CPU logits through the C kernel (checked by the caller)."""
    if not available():
        raise RuntimeError(f"the native CPU kernel is unavailable ({_FAILED or 'WMKIT_NATIVE=0'})")
    if not accepts(scores, out, h, seeding):
        raise ValueError("the native kernel takes float32 CPU logits (and out) contiguous along the vocabulary, "
                         f"selfhash widths 1..{MAX_SELFHASH_H}")
    if out is None:
        out = torch.empty_like(scores)
    b, v = scores.shape
    ids = input_ids.to(torch.int64).contiguous()
    active = row_mask.to(torch.uint8).contiguous() if row_mask is not None else None
    args = (scores.data_ptr(), scores.stride(0), out.data_ptr(), out.stride(0), ids.data_ptr(), ids.shape[1],
            ids.shape[1] - h, h, seeding == "selfhash", active.data_ptr() if active is not None else None)
    tail = (v, *prf.check_key(key), prf.threshold(gamma), float(delta))
    fn = _LIB.wmkit_green_bias  # type: ignore[union-attr]
    threads = max(1, min(torch.get_num_threads(), b // MIN_ROWS_PER_THREAD))
    _in_threads(b, threads, lambda lo, hi: fn(*args, lo, hi, *tail))
    return out


def _in_threads(rows: int, threads: int, call: Callable[[int, int], object]) -> list[object]:
    """``call(lo, hi)`` over ``threads`` contiguous slices of ``range(rows)``, in the shared pool."""
    global _POOL
    if threads <= 1:
        return [call(0, rows)]
    if _POOL is None or _POOL._max_workers < threads:  # noqa: SLF001
        _POOL = ThreadPoolExecutor(threads, thread_name_prefix="wmkit-native")
    cuts = [rows * i // threads for i in range(threads + 1)]
    return [f.result() for f in [_POOL.submit(call, lo, hi) for lo, hi in zip(cuts, cuts[1:])]]


def levenshtein_prefix_native(g: torch.Tensor, gap: float) -> torch.Tensor:
    """EXP-edit's prefix edit distances (:func:`wmkit.watermark.text.exp_edit.levenshtein_prefix_scores`,
    minimised over rotations) in C: ``g[R, m, n]`` float32, ``g[r, i, p]`` = the match cost of text token
    ``i`` at key position ``p`` under key ``r``; returns ``[R, m]``, entry ``k - 1`` the smallest distance
    between ``y[:k]`` and the first ``k`` positions of any rotation of key ``r``'s sequence."""
    if not available():
        raise RuntimeError(f"the native CPU kernel is unavailable ({_FAILED or 'WMKIT_NATIVE=0'})")
    if g.dim() != 3 or g.dtype != torch.float32 or g.device.type != "cpu":
        raise ValueError(f"expected float32 CPU costs [R, m, n], got {tuple(g.shape)} {g.dtype} on {g.device}")
    g = g.contiguous()
    r, m, n = g.shape
    out = torch.empty((r, m), dtype=torch.float32)
    fn = _LIB.wmkit_levenshtein_prefix  # type: ignore[union-attr]
    codes = _in_threads(r, max(1, min(torch.get_num_threads(), r)),
                        lambda lo, hi: fn(g.data_ptr(), m, n, float(gap), lo, hi, out.data_ptr()))
    if any(codes):
        raise MemoryError("the native edit-distance kernel could not allocate its rows")
    return out
