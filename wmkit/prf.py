"""The keyed pseudo-random function: the one definition of "green" in wmkit.

Specification (version 1). All arithmetic is on unsigned 32-bit words; ``M = 2**32``.

* ``philox(c0, c1, c2, c3; k0, k1)`` is Philox4x32-10 (Salmon et al. 2011, Random123), the
  counter-based generator that Triton, JAX and vLLM ship. Only its first output word is used.
* ``mix32(x)`` is murmur3's finaliser ``fmix32``: ``x ^= x >> 16; x *= 0x85EBCA6B;
  x ^= x >> 13; x *= 0xC2B2AE35; x ^= x >> 16``.
* ``anchor(t) = t * 0x9E3779B9 mod M`` spreads a token id over the word.
* The 64-bit PRF key ``(k0, k1)`` comes from the secret with HMAC-SHA256
  (:meth:`wmkit.keys.SecretKey.prf_key`), one per scheme label.

Lefthash (context width ``h >= 0``; ``h = 0`` is Unigram's one fixed list)::

    c = 0x811C9DC5;  for x in (x[i-h], ..., x[i-1]):  c = mix32(c ^ x)
    seed = philox(c, h, 0, 0; k0, k1)[0]
    u(t) = mix32(seed ^ anchor(t))

Selfhash (the candidate token takes part in its own seed; anchored min-hash over the context,
as in Kirchenbauer et al.'s Algorithm 3, but evaluated for every candidate at once)::

    r_j  = philox(x[i-j], h, 0, 1; k0, k1)[0]           for j = 1..h
    s(t) = min_j mix32(r_j ^ anchor(t))
    u(t) = mix32(s(t) ^ anchor(t))

Token ``t`` is green after that context iff ``u(t) < floor(gamma * 2**32)``.

Test vectors, key ``(k0, k1) = (0x01234567, 0x89ABCDEF)`` (``tests/test_prf.py`` checks them)::

    lefthash, context ()           token 0      -> u = 0x105F9DA2
    lefthash, context (42,)        token 7      -> u = 0xA1EC1720
    lefthash, context (1, 2, 3, 4) token 49151  -> u = 0x793BB3BA
    selfhash, context (1, 2, 3, 4) token 49151  -> u = 0xDCC068F9

The per-row work (one Philox call per row, or ``h`` for selfhash) is small; the per-token work is
one or two ``mix32`` calls, which ``torch.compile`` fuses into a single loop (see
:mod:`wmkit.kernels`). Everything here is eager torch on ``int64`` tensors holding 32-bit
values, so it runs on any device and is the reference the kernels must match bit for bit.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
GOLDEN = 0x9E3779B9
FNV_OFFSET = 0x811C9DC5
MODE_LEFTHASH = 0
MODE_SELFHASH = 1
SEEDING_SCHEMES = ("lefthash", "selfhash")

__all__ = [
    "philox4x32_10",
    "mix32",
    "anchor",
    "threshold",
    "lefthash_seeds",
    "selfhash_anchors",
    "lefthash_u32",
    "selfhash_u32",
    "position_u32",
]


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (hi, lo) words of ``a * m`` for 32-bit ``a`` and an odd 32-bit constant ``m``.

    ``a * m`` can reach 2**64 and overflow int64, so the high word is taken from
    ``a * (m >> 1) + (a >> 1)`` (< 2**63), using ``m`` odd: ``a*m = 2*(a*(m>>1) + (a>>1)) + (a&1)``.
    """
    lo = (a * m) & MASK32  # wraps in two's complement; the low word is exact
    hi = ((a * (m >> 1) + (a >> 1)) >> 31) & MASK32
    return hi, lo


def philox4x32_10(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32 with 10 rounds on int64 tensors holding 32-bit words (broadcasting).

    >>> z = torch.zeros(1, dtype=torch.int64)
    >>> [hex(int(w)) for w in philox4x32_10(z, z, z, z, 0, 0)]
    ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3 ``fmix32`` on int64 tensors holding 32-bit words (a bijection of the word)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & MASK32
    return x ^ (x >> 16)


def anchor(tokens: torch.Tensor) -> torch.Tensor:
    """``t * 0x9E3779B9 mod 2**32`` for token ids ``t``."""
    return (tokens.to(torch.int64) * GOLDEN) & MASK32


def threshold(gamma: float) -> int:
    """The 32-bit cut: a token is green iff its PRF word is below ``floor(gamma * 2**32)``."""
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    return int(gamma * 2**32)


def _const(like: torch.Tensor, value: int) -> torch.Tensor:
    return torch.full_like(like, value, dtype=torch.int64)


def lefthash_seeds(windows: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Per-context seeds for lefthash: ``windows[..., h]`` (oldest token first) -> ``[...]``.

    ``h = windows.shape[-1]`` may be 0 (Unigram: one seed for every position).
    """
    h = windows.shape[-1]
    c = torch.full(windows.shape[:-1], FNV_OFFSET, dtype=torch.int64, device=windows.device)
    for j in range(h):
        c = mix32(c ^ windows[..., j].to(torch.int64))
    return philox4x32_10(c, _const(c, h), _const(c, 0), _const(c, MODE_LEFTHASH), *key)[0]


def selfhash_anchors(tokens: torch.Tensor, key: tuple[int, int], h: int) -> torch.Tensor:
    """Per-token words ``r = philox(x, h, 0, 1)[0]`` that selfhash takes the min-hash over."""
    x = tokens.to(torch.int64)
    return philox4x32_10(x, _const(x, h), _const(x, 0), _const(x, MODE_SELFHASH), *key)[0]


def lefthash_u32(seeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """PRF words ``mix32(seed ^ anchor(t))``; ``seeds`` and ``tokens`` broadcast."""
    return mix32(seeds ^ anchor(tokens))


def selfhash_u32(anchors: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """PRF words for selfhash: ``anchors[..., h]`` (the context's r_j), ``tokens[...]``.

    ``anchors[..., j]`` broadcasts with ``tokens``: ``[B, 1, h]`` with ``[V]`` gives ``[B, V]``
    (generation); ``[N, h]`` with ``[N]`` gives ``[N]`` (detection).
    """
    a = anchor(tokens)
    s = None
    for j in range(anchors.shape[-1]):
        v = mix32(anchors[..., j] ^ a)
        s = v if s is None else torch.minimum(s, v)
    if s is None:
        raise ValueError("selfhash needs a context width h >= 1")
    return mix32(s ^ a)


def position_u32(
    token_ids: torch.Tensor, key: tuple[int, int], h: int, seeding: str
) -> torch.Tensor:
    """PRF word of every token given its ``h`` predecessors: ``[..., N] -> [..., N - h]``.

    Entry ``i`` belongs to token ``token_ids[..., h + i]``; this is what detection scores.
    """
    ids = token_ids.to(torch.int64)
    n = ids.shape[-1] - h
    if n <= 0:
        return ids.new_empty((*ids.shape[:-1], 0))
    targets = ids[..., h:]
    if seeding == "lefthash":
        windows = ids.unfold(-1, h, 1)[..., :n, :] if h else ids.new_empty((*ids.shape[:-1], n, 0))
        return lefthash_u32(lefthash_seeds(windows, key), targets)
    if seeding == "selfhash":
        r = selfhash_anchors(ids, key, h)
        return selfhash_u32(r.unfold(-1, h, 1)[..., :n, :], targets)
    raise ValueError(f"unknown seeding scheme {seeding!r}; expected one of {SEEDING_SCHEMES}")
