"""Triton kernels for the wmkit PRF (spec: :mod:`wmkit.prf`), bit-identical to the torch reference.

* :func:`green_bias_triton` -- one launch for a whole batch: hash each row's context, evaluate
  the PRF for every vocabulary id, add ``delta`` to the green logits. Grid ``(rows, V / BLOCK)``;
  the per-row Philox is recomputed by each block (a few dozen integer ops), so nothing is
  written between launches and no ``[batch, vocab]`` temporary exists. In place, only green
  logits are written (``gamma`` of the row). Logits are float32, as samplers (transformers,
  vLLM) hand them to logits processors; other dtypes take the torch path. An optional per-row mask skips rows (IE's
  low-entropy steps, or requests that opted out).
* :func:`green_positions_triton` -- detection: the green flag of every token of a padded batch
  of sequences, given its ``h`` predecessors.

Everything runs under ``TRITON_INTERPRET=1`` on the CPU too, which is how CI checks parity.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import prf

GEN_BLOCK = 1024
DET_BLOCK = 256


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B).to(tl.uint32)
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35).to(tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def _philox_w0(c0, c1, c2, c3, k0, k1):
    """First output word of Philox4x32-10 (all arguments uint32, any matching shapes)."""
    for _ in tl.static_range(10):
        m0 = (c0 * 0 + 0xD2511F53).to(tl.uint32)
        m1 = (c2 * 0 + 0xCD9E8D57).to(tl.uint32)
        hi0 = tl.umulhi(c0, m0)
        lo0 = (c0 * m0).to(tl.uint32)
        hi1 = tl.umulhi(c2, m1)
        lo1 = (c2 * m1).to(tl.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9).to(tl.uint32)
        k1 = (k1 + 0xBB67AE85).to(tl.uint32)
    return c0


@triton.jit
def _prf_words(ctx_ptr, tok, zero, k0, k1, H: tl.constexpr, SELFHASH: tl.constexpr):
    """PRF words of tokens ``tok`` after the ``H`` tokens at ``ctx_ptr`` (scalar or per-lane pointers).

    ``zero`` is a uint32 zero shaped like the context words (a scalar for one row's context in
    generation, a vector of positions in detection).
    """
    a = (tok * 0x9E3779B9).to(tl.uint32)
    if SELFHASH:
        s = a * 0 + 0xFFFFFFFF
        s = s.to(tl.uint32)
        for j in tl.static_range(H):
            x = tl.load(ctx_ptr + j).to(tl.uint32)
            r = _philox_w0(x, zero + H, zero, zero + 1, zero + k0, zero + k1)
            s = tl.minimum(s, _mix32(r ^ a))
        return _mix32(s ^ a)
    else:
        c = (zero + 0x811C9DC5).to(tl.uint32)
        for j in tl.static_range(H):
            x = tl.load(ctx_ptr + j).to(tl.uint32)
            c = _mix32(c ^ x)
        seed = _philox_w0(c, zero + H, zero, zero, zero + k0, zero + k1)
        return _mix32(seed ^ a)


@triton.jit
def _green_bias_kernel(
    scores_ptr, out_ptr, ids_ptr, mask_ptr,
    stride_s, stride_o, stride_i, ctx_start, V,
    key_ptr, thr, delta,
    H: tl.constexpr, SELFHASH: tl.constexpr, HAS_MASK: tl.constexpr, INPLACE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < V
    zero = tl.program_id(0).to(tl.uint32) * 0
    k0 = tl.load(key_ptr).to(tl.uint32)
    k1 = tl.load(key_ptr + 1).to(tl.uint32)
    u = _prf_words(ids_ptr + row * stride_i + ctx_start, offs.to(tl.uint32), zero, k0, k1, H, SELFHASH)
    green = u.to(tl.int64) < thr
    live = inb
    if HAS_MASK:
        active = (tl.zeros([BLOCK], dtype=tl.int32) + tl.load(mask_ptr + row).to(tl.int32)) != 0
        green = green & active
        if INPLACE:
            live = inb & active
    x = tl.load(scores_ptr + row * stride_s + offs, mask=live, other=0.0)
    y = tl.where(green, x + delta, x)
    if INPLACE:
        tl.store(out_ptr + row * stride_o + offs, y, mask=live & green)
    else:
        tl.store(out_ptr + row * stride_o + offs, y, mask=inb)


@triton.jit
def _green_positions_kernel(
    ids_ptr, len_ptr, out_ptr, stride_i, stride_o, key_ptr, thr,
    H: tl.constexpr, SELFHASH: tl.constexpr, BLOCK: tl.constexpr,
):
    seq = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    n = tl.load(len_ptr + seq)
    valid = (pos >= H) & (pos < n)
    row = ids_ptr + seq * stride_i
    safe = tl.where(valid, pos, H)  # keep every context load in bounds
    tok = tl.load(row + safe, mask=valid, other=0).to(tl.uint32)
    zero = pos.to(tl.uint32) * 0
    k0 = tl.load(key_ptr).to(tl.uint32)
    k1 = tl.load(key_ptr + 1).to(tl.uint32)
    u = _prf_words(row + safe - H, tok, zero, k0, k1, H, SELFHASH)
    green = (u.to(tl.int64) < thr) & valid
    tl.store(out_ptr + seq * stride_o + pos, green.to(tl.int8), mask=pos < n)


_KEYS: dict[tuple[tuple[int, int], str], torch.Tensor] = {}


def _key_tensor(key: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The key as a device tensor, made once per (key, device): no host-to-device copy per step.

    A tensor rather than two int arguments, which Triton would specialize on (``== 1``)."""
    k = (tuple(key), str(device))
    if k not in _KEYS:
        _KEYS[k] = torch.tensor(key, dtype=torch.int64, device=device)
    return _KEYS[k]


def green_bias_triton(
    scores: torch.Tensor, input_ids: torch.Tensor, key: tuple[int, int], h: int, seeding: str, gamma: float,
    delta: float, row_mask: torch.Tensor | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of :func:`wmkit.kernels.green_bias_reference`; ``out=scores`` works in place."""
    if scores.dtype != torch.float32:
        raise ValueError(f"the Triton kernel takes float32 logits, got {scores.dtype}")
    b, v = scores.shape
    inplace = out is not None and out.data_ptr() == scores.data_ptr()
    if out is None:
        out = torch.empty_like(scores)
    if scores.stride(1) != 1 or out.stride(1) != 1:
        raise ValueError("scores and out must be contiguous along the vocabulary")
    ids = input_ids if input_ids.stride(-1) == 1 else input_ids.contiguous()
    mask = row_mask.to(torch.int8) if row_mask is not None else ids  # dummy pointer when unused
    grid = (b, triton.cdiv(v, GEN_BLOCK))
    _green_bias_kernel[grid](
        scores, out, ids, mask, scores.stride(0), out.stride(0), ids.stride(0), ids.shape[1] - h, v,
        _key_tensor(key, scores.device), prf.threshold(gamma), float(delta),
        H=h, SELFHASH=seeding == "selfhash", HAS_MASK=row_mask is not None, INPLACE=inplace, BLOCK=GEN_BLOCK,
    )
    return out


def green_positions_triton(
    ids: torch.Tensor, lengths: torch.Tensor, key: tuple[int, int], h: int, seeding: str, gamma: float
) -> torch.Tensor:
    """``[S, N]`` bool: token ``ids[s, i]`` is green after its ``h`` predecessors (False if ``i < h``
    or ``i >= lengths[s]``)."""
    s, n = ids.shape
    ids = ids.contiguous()
    out = torch.zeros((s, n), dtype=torch.int8, device=ids.device)
    if s and n:
        grid = (s, triton.cdiv(n, DET_BLOCK))
        _green_positions_kernel[grid](
            ids, lengths.contiguous(), out, ids.stride(0), out.stride(0), _key_tensor(key, ids.device), prf.threshold(gamma),
            H=h, SELFHASH=seeding == "selfhash", BLOCK=DET_BLOCK,
        )
    return out.bool()
