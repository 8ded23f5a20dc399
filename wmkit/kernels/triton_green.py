"""Triton kernels for the wmkit PRF (spec: :mod:`wmkit.prf`), bit-identical to the torch reference.

* :func:`green_bias_triton` -- one launch for a whole batch: hash each row's context, evaluate
  the PRF for every vocabulary id, add ``delta`` to the green logits. Grid ``(rows, V / 1024)``;
  each program recomputes the row's context state (``ceil(h / 4)`` Philox calls) and makes one
  Philox call per 4 vocabulary entries (a ``[256, 4]`` tile), so nothing is written between launches and no ``[batch, vocab]`` temporary exists. In place, only green
  logits are written (``gamma`` of the row). Logits are float32, as samplers (transformers,
  vLLM) hand them to logits processors; other dtypes take the torch path. An optional per-row mask skips rows (IE's
  low-entropy steps, or requests that opted out).
* :func:`green_positions_triton` -- detection: the green flag of every token of a padded batch
  of sequences, given its ``h`` predecessors.

Everything runs under ``TRITON_INTERPRET=1`` on the CPU too, which is how CI checks parity.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl

from .. import prf

GEN_GROUPS = 256  # token calls per program: 1,024 vocabulary entries
DET_BLOCK = 256
PHILOX_M0: tl.constexpr = tl.constexpr(prf.PHILOX_M0)
PHILOX_M1: tl.constexpr = tl.constexpr(prf.PHILOX_M1)
PHILOX_W0: tl.constexpr = tl.constexpr(prf.PHILOX_W0)
PHILOX_W1: tl.constexpr = tl.constexpr(prf.PHILOX_W1)
CTX_DOMAIN: tl.constexpr = tl.constexpr(prf.CTX_DOMAIN)
TOKEN_DOMAIN: tl.constexpr = tl.constexpr(prf.TOKEN_DOMAIN)
SELECT_DOMAIN: tl.constexpr = tl.constexpr(prf.SELECT_DOMAIN)


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10, all four output words (uint32 arguments of matching or broadcastable shapes)."""
    for _ in tl.static_range(10):
        m0 = (c0 * 0 + PHILOX_M0).to(tl.uint32)
        m1 = (c2 * 0 + PHILOX_M1).to(tl.uint32)
        hi0 = tl.umulhi(c0, m0)
        lo0 = (c0 * m0).to(tl.uint32)
        hi1 = tl.umulhi(c2, m1)
        lo1 = (c2 * m1).to(tl.uint32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0).to(tl.uint32)
        k1 = (k1 + PHILOX_W1).to(tl.uint32)
    return c0, c1, c2, c3


@triton.jit
def _state(ctx_ptr, zero, k0, k1, d0, d1, H: tl.constexpr, HEND: tl.constexpr, MODE: tl.constexpr, HWORD: tl.constexpr):
    """The 128-bit context state of the ``H`` tokens at ``ctx_ptr`` (spec: :func:`wmkit.prf.context_state`);
    ``HEND = max(H, 1)`` (an empty context still takes one call).

    ``zero`` is a uint32 zero shaped like one context word (a scalar in generation, a vector of
    positions in detection)."""
    s0 = zero + d0
    s1 = zero + d1
    s2 = zero + (CTX_DOMAIN ^ MODE)
    s3 = zero + HWORD
    for off in tl.static_range(0, HEND, 4):
        w0 = zero + 0xFFFFFFFF
        w1 = zero + 0xFFFFFFFE
        w2 = zero + 0xFFFFFFFD
        w3 = zero + 0xFFFFFFFC
        if off < H:
            w0 = tl.load(ctx_ptr + off).to(tl.uint32)
        if off + 1 < H:
            w1 = tl.load(ctx_ptr + off + 1).to(tl.uint32)
        if off + 2 < H:
            w2 = tl.load(ctx_ptr + off + 2).to(tl.uint32)
        if off + 3 < H:
            w3 = tl.load(ctx_ptr + off + 3).to(tl.uint32)
        s0, s1, s2, s3 = _philox(s0 ^ w0, s1 ^ w1, s2 ^ w2, s3 ^ w3, zero + (k0 ^ (off // 4)), zero + k1)
    return s0, s1, s2, s3


@triton.jit
def _tile_words(groups, col, s0, s1, s2, s3, k0, k1, DOMAIN: tl.constexpr):
    """Words of the tokens ``4 * groups[:, None] + col[None, :]``: one Philox call per group."""
    w0, w1, w2, w3 = _philox(groups, groups * 0 + s0, groups * 0 + s1, groups * 0 + s2,
                             groups * 0 + (k0 ^ s3), groups * 0 + (k1 ^ DOMAIN))
    c = col[None, :]
    return tl.where(c == 0, w0[:, None], tl.where(c == 1, w1[:, None], tl.where(c == 2, w2[:, None], w3[:, None])))


@triton.jit
def _token_word(tok, s0, s1, s2, s3, k0, k1, DOMAIN: tl.constexpr):
    """Word of each token ``tok`` (a vector) under per-lane states."""
    w0, w1, w2, w3 = _philox(tok >> 2, s0, s1, s2, k0 ^ s3, (tok * 0 + k1) ^ DOMAIN)
    j = tok & 3
    return tl.where(j == 0, w0, tl.where(j == 1, w1, tl.where(j == 2, w2, w3)))


@triton.jit
def _green_bias_kernel(
    scores_ptr, out_ptr, ids_ptr, mask_ptr,
    stride_s, stride_o, stride_i, ctx_start, V,
    key_ptr, thr, delta,
    H: tl.constexpr, HEND: tl.constexpr, SELFHASH: tl.constexpr, HAS_MASK: tl.constexpr, INPLACE: tl.constexpr,
    GROUPS: tl.constexpr,
):
    row = tl.program_id(0)
    groups = (tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)).to(tl.uint32)
    col = tl.arange(0, 4).to(tl.uint32)
    offs = (groups[:, None] * 4 + col[None, :]).to(tl.int64)
    inb = offs < V
    zero = tl.program_id(0).to(tl.uint32) * 0
    k0 = tl.load(key_ptr).to(tl.uint32)
    k1 = tl.load(key_ptr + 1).to(tl.uint32)
    d0 = tl.load(key_ptr + 2).to(tl.uint32)
    d1 = tl.load(key_ptr + 3).to(tl.uint32)
    ctx = ids_ptr + row * stride_i + ctx_start
    if SELFHASH:
        best_sel = tl.full([GROUPS, 4], 0xFFFFFFFF, tl.uint32)
        u = best_sel
        for j in tl.static_range(H):
            s0, s1, s2, s3 = _state(ctx + j, zero, k0, k1, d0, d1, 1, 1, 1, H)
            sel = _tile_words(groups, col, s0, s1, s2, s3, k0, k1, SELECT_DOMAIN)
            colour = _tile_words(groups, col, s0, s1, s2, s3, k0, k1, TOKEN_DOMAIN)
            take = (sel < best_sel) | (j == 0)
            best_sel = tl.where(take, sel, best_sel)
            u = tl.where(take, colour, u)
    else:
        s0, s1, s2, s3 = _state(ctx, zero, k0, k1, d0, d1, H, HEND, 0, H)
        u = _tile_words(groups, col, s0, s1, s2, s3, k0, k1, TOKEN_DOMAIN)
    green = u.to(tl.int64) < thr
    live = inb
    if HAS_MASK:
        active = (tl.zeros([GROUPS, 4], dtype=tl.int32) + tl.load(mask_ptr + row).to(tl.int32)) != 0
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
    H: tl.constexpr, HEND: tl.constexpr, SELFHASH: tl.constexpr, BLOCK: tl.constexpr,
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
    d0 = tl.load(key_ptr + 2).to(tl.uint32)
    d1 = tl.load(key_ptr + 3).to(tl.uint32)
    ctx = row + safe - H
    if SELFHASH:
        best_sel = zero + 0xFFFFFFFF
        u = best_sel
        for j in tl.static_range(H):
            s0, s1, s2, s3 = _state(ctx + j, zero, k0, k1, d0, d1, 1, 1, 1, H)
            sel = _token_word(tok, s0, s1, s2, s3, zero + k0, k1, SELECT_DOMAIN)
            colour = _token_word(tok, s0, s1, s2, s3, zero + k0, k1, TOKEN_DOMAIN)
            take = (sel < best_sel) | (j == 0)
            best_sel = tl.where(take, sel, best_sel)
            u = tl.where(take, colour, u)
    else:
        s0, s1, s2, s3 = _state(ctx, zero, k0, k1, d0, d1, H, HEND, 0, H)
        u = _token_word(tok, s0, s1, s2, s3, zero + k0, k1, TOKEN_DOMAIN)
    green = (u.to(tl.int64) < thr) & valid
    tl.store(out_ptr + seq * stride_o + pos, green.to(tl.int8), mask=pos < n)


_KEYS: "OrderedDict[tuple[tuple[int, ...], str], torch.Tensor]" = OrderedDict()
_KEY_CACHE_SIZE = 16  # bounded: a server rotating keys keeps neither unbounded memory nor stale key material


def _key_tensor(key: prf.Key, device: torch.device) -> torch.Tensor:
    """The key as a device tensor, made once per (key, device): no host-to-device copy per step.

    A tensor rather than two int arguments, which Triton would specialize on (``== 1``)."""
    k = (tuple(int(w) for w in prf.check_key(key)), str(device))
    if k in _KEYS:
        _KEYS.move_to_end(k)
    else:
        _KEYS[k] = torch.tensor(k[0], dtype=torch.int64, device=device)
        while len(_KEYS) > _KEY_CACHE_SIZE:
            _KEYS.popitem(last=False)
    return _KEYS[k]


def green_bias_triton(
    scores: torch.Tensor, input_ids: torch.Tensor, key: prf.Key, h: int, seeding: str, gamma: float,
    delta: float, row_mask: torch.Tensor | None = None, out: torch.Tensor | None = None, *,
    groups: int = GEN_GROUPS, num_warps: int = 4,
) -> torch.Tensor:
    """Triton version of :func:`wmkit.kernels.green_bias_reference`; ``out=scores`` works in place.

    ``groups`` (Philox calls per program, a power of two: ``4 * groups`` vocabulary entries) and
    ``num_warps`` are launch tuning only (``benchmarks/kernel_speed.py --sweep``); the bits do not
    depend on them."""
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
    grid = (b, triton.cdiv(v, 4 * groups))
    _green_bias_kernel[grid](
        scores, out, ids, mask, scores.stride(0), out.stride(0), ids.stride(0), ids.shape[1] - h, v,
        _key_tensor(key, scores.device), prf.threshold(gamma), float(delta),
        H=h, HEND=max(h, 1), SELFHASH=seeding == "selfhash", HAS_MASK=row_mask is not None, INPLACE=inplace, GROUPS=groups,
        num_warps=num_warps,
    )
    return out


def green_positions_triton(
    ids: torch.Tensor, lengths: torch.Tensor, key: prf.Key, h: int, seeding: str, gamma: float, *,
    block: int = DET_BLOCK, num_warps: int = 4,
) -> torch.Tensor:
    """``[S, N]`` bool: token ``ids[s, i]`` is green after its ``h`` predecessors (False if ``i < h``
    or ``i >= lengths[s]``). ``block`` (positions per program) and ``num_warps``: launch tuning only."""
    s, n = ids.shape
    ids = ids.contiguous()
    out = torch.zeros((s, n), dtype=torch.int8, device=ids.device)
    if s and n:
        grid = (s, triton.cdiv(n, block))
        _green_positions_kernel[grid](
            ids, lengths.contiguous(), out, ids.stride(0), out.stride(0), _key_tensor(key, ids.device), prf.threshold(gamma),
            H=h, HEND=max(h, 1), SELFHASH=seeding == "selfhash", BLOCK=block,
            num_warps=num_warps,
        )
    return out.bool()
