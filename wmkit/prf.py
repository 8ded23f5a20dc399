"""The keyed pseudo-random function: the one definition of "green" (and of every keyed uniform) in wmkit.

Specification, version 2 (``PRF_VERSION``). All words are unsigned 32-bit; ``M = 2**32``.

* ``philox(c0, c1, c2, c3; k0, k1)`` is Philox4x32-10 (Salmon et al. 2011, Random123): all four
  output words are used.
* The PRF key is four words ``K = (k0, k1, d0, d1)``: the first 16 bytes, little-endian, of
  HMAC-SHA256(secret, ``"wmkit/v2/" + label``) (:meth:`wmkit.keys.SecretKey.prf_key`). ``(k0, k1)``
  is the Philox key, ``(d0, d1)`` are secret domain words: the effective secret is 128 bits.

**Context state** (a context is ``h`` token ids, oldest first; ``mode`` names its use)::

    S = (d0, d1, CTX_DOMAIN ^ mode, h)
    for b in 0 .. max(1, ceil(h / 4)) - 1:              # at least one call, also for h = 0
        w_i = x[4b + i]  if 4b + i < h  else  M - 1 - i   (i = 0..3)
        S = philox(S ^ w; k0 ^ b, k1)

**Token words**: a state ``S`` and a domain ``D`` give every token ``t`` one word, one Philox
call per block of 4 candidate tokens (vLLM's ``philox4x32-10-v1`` layout)::

    W = philox(t >> 2, S0, S1, S2; k0 ^ S3, k1 ^ D);   word(S, D, t) = W[t & 3]

**Lefthash** (context width ``h >= 0``; ``h = 0`` is Unigram's one fixed list):
``u(t) = word(state(x[i-h..i-1], LEFTHASH), TOKEN_DOMAIN, t)``.

**Selfhash** (the candidate takes part in its own list: an anchored min-hash over the context,
after Kirchenbauer et al., "On the Reliability of Watermarks", Algorithm 3)::

    S_j  = state((x[i-j],), SELFHASH) with the h word set to the scheme's h,  j = 1..h
    j*   = argmin_j word(S_j, SELECT_DOMAIN, t)          (the smallest j on ties)
    u(t) = word(S_j*, TOKEN_DOMAIN, t)

**SynthID g-values** (``synthid``, ``gvalues=prf``): layer ``d`` of the tournament gives candidate
``t`` after context ``c`` the bit ``d mod 32`` of ``word(state(c, LEFTHASH), GVALUE_DOMAIN ^ floor(d / 32), t)``.

Token ``t`` is green after a context iff ``u(t) < floor(gamma * 2**32)``. Keyed uniforms in (0, 1)
(Gumbel-max, EXP-edit) are ``(u + 1/2) / 2**32`` in float64.

**Why v2.** Spec v1 reduced each context to one public-map 32-bit seed: from a few hundred marked
tokens an attacker recovered a context's whole list by trying all 2^32 seeds (``tests/test_prf.py``
shows it at 20 bits). In v2 nothing narrower than the 128-bit state lies between the secret and
a colour: predicting one unseen token's colour needs the state's 96 counter bits plus the 64-bit
token-call key, and recovering the key needs 2^128 trials (the work factor of the 128-bit
``(k0, k1, d0, d1)``); Philox4x32-10 has no known distinguisher. The selector word in selfhash is a
32-bit value, but it only picks which keyed state colours ``t``; it is never a seed.

Where the truth comes from. The permutation is checked against Random123's published known-answer
vectors for Philox4x32-10 (``tests/test_prf.py``: ``KAT``); the layout -- absorbing a context into
the 128-bit state (:func:`absorb`) and one call per block of 4 candidate tokens
(:func:`token_words`) -- is the code that also gives vLLM's ``philox4x32-10-v1`` words, checked
against words recorded from vLLM's own ``PhiloxPRF`` (``tests/test_prf.py``:
``test_the_layout_gives_vllms_own_words``) and live against the vLLM wheel. The spec vectors below
are *not* independent: they were computed by wmkit's own pure-Python reference
(``tests/prf_reference.py``) and frozen, so they catch a change to the definition of "green", not
a shared misreading of it.

Known-answer vectors, key ``K = (0x01234567, 0x89ABCDEF, 0x0BADF00D, 0xFEEDFACE)``
(``tests/test_prf.py`` checks them against this code and the pure-Python second implementation)::

    lefthash, context ()           token 0      -> u = 0x63E96A48
    lefthash, context (42,)        token 7      -> u = 0x50241DC7
    lefthash, context (1, 2, 3, 4) token 49151  -> u = 0xC2BECBB7
    lefthash, context (1, .., 5)   token 262143 -> u = 0xBDC8EE65
    selfhash, context (1, 2, 3, 4) token 49151  -> u = 0xE71C7401

Everything here is eager torch on ``int64`` tensors holding 32-bit words, so it runs on any device
and is the reference the kernels (:mod:`wmkit.kernels`) must match bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import torch

PRF_VERSION = 2
MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
CTX_DOMAIN = 0x574B4358  # "WKCX"
TOKEN_DOMAIN = 0x574B544B  # "WKTK"
SELECT_DOMAIN = 0x574B534C  # "WKSL"
GVALUE_DOMAIN = 0x574B4756  # "WKGV": SynthID's g-value bits (gvalues=prf), XOR the block of 32 layers
MODE_LEFTHASH = 0
MODE_SELFHASH = 1
MODE_POSITION = 2  # EXP-edit's keyed sequence: the "context" is a position in the key sequence
SEEDING_SCHEMES = ("lefthash", "selfhash")

Key = Sequence  # (k0, k1, d0, d1): ints, or 0-d int64 tensors

__all__ = [
    "PRF_VERSION",
    "philox4x32_10",
    "threshold",
    "absorb",
    "context_state",
    "token_words",
    "vocab_words",
    "vocab_groups",
    "lefthash_vocab_words",
    "selfhash_vocab_words",
    "selfhash_anchors",
    "repeat_keys",
    "position_u32",
    "uniform",
    "check_key",
]


def check_key(key: Key) -> tuple[int, int, int, int]:
    """``key`` as four 32-bit ints; a :class:`ValueError` for anything else (a v1 two-word key too)."""
    k = tuple(int(w) for w in key)
    if len(k) != 4 or any(not 0 <= w <= MASK32 for w in k):
        raise ValueError("a PRF v2 key is four 32-bit words (k0, k1, d0, d1); see SecretKey.prf_key")
    return k  # type: ignore[return-value]


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) words of ``a * m`` for a 32-bit word ``a`` and an odd 32-bit constant ``m``.

    No intermediate reaches 2**63: a 64-bit product would overflow int64, and signed overflow is
    undefined in the C++ that ``torch.compile`` emits. ``hi`` uses ``a*m = 2*(a*(m>>1) + (a>>1)) + (a&1)``
    (``m`` odd); ``lo`` adds the two 16-bit halves of ``m``.
    """
    hi = ((a * (m >> 1) + (a >> 1)) >> 31) & MASK32
    lo = (a * (m & 0xFFFF) + (((a * (m >> 16)) & 0xFFFF) << 16)) & MASK32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):  # type: ignore[no-untyped-def]
    """Philox4x32 with 10 rounds on int64 tensors holding 32-bit words (broadcasting); the key
    words may be ints or tensors.

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


def threshold(gamma: float) -> int:
    """The 32-bit cut: a token is green iff its PRF word is below ``floor(gamma * 2**32)``."""
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    return int(gamma * 2**32)


def absorb(windows: torch.Tensor, state: Sequence, k0, k1, key_step: int, min_blocks: int) -> tuple[torch.Tensor, ...]:  # type: ignore[no-untyped-def]
    """Absorb contexts ``windows[..., h]`` into 128-bit states, 4 words per Philox call.

    ``state`` is the initial four words (ints or tensors broadcasting to ``windows.shape[:-1]``);
    block ``b`` is padded with ``M - 1 - i`` past the context and keyed ``(k0 ^ key_step * b, k1)``;
    at least ``min_blocks`` calls are made. wmkit's spec uses ``key_step = 1, min_blocks = 1``;
    vLLM's ``philox4x32-10-v1`` uses ``key_step = 4, min_blocks = 0``.
    """
    h = windows.shape[-1]
    w = windows.to(torch.int64) & MASK32
    zero = torch.zeros(w.shape[:-1], dtype=torch.int64, device=w.device)
    full = lambda v: zero + v  # noqa: E731
    s = tuple(full(x) for x in state)
    for b in range(max(min_blocks, -(-h // 4))):
        block = [w[..., 4 * b + i] if 4 * b + i < h else full(MASK32 - i) for i in range(4)]
        s = philox4x32_10(*(s[i] ^ block[i] for i in range(4)), k0 ^ (key_step * b), k1)
    return s


def context_state(windows: torch.Tensor, key: Key, mode: int, h_word: int | None = None) -> tuple[torch.Tensor, ...]:
    """The 128-bit state (four ``[...]`` word tensors) of each context ``windows[..., h]`` (oldest first).

    ``h_word`` is the state's length word (default ``h``; selfhash sets the scheme's width).
    """
    k0, k1, d0, d1 = key  # ints, or 0-d int64 tensors (a compiled graph then serves every key)
    h = windows.shape[-1]
    return absorb(windows, (d0, d1, CTX_DOMAIN ^ mode, h if h_word is None else h_word), k0, k1, 1, 1)


def _token_call(state: Sequence[torch.Tensor], groups: torch.Tensor, key: Key, domain: int) -> tuple[torch.Tensor, ...]:
    k0, k1 = key[0], key[1]
    s0, s1, s2, s3 = state
    return philox4x32_10(groups, s0, s1, s2, k0 ^ s3, k1 ^ domain)


def token_words(state: Sequence[torch.Tensor], tokens: torch.Tensor, key: Key, domain: int = TOKEN_DOMAIN) -> torch.Tensor:
    """``word(S, D, t)`` for tokens ``t``; ``state`` words broadcast with ``tokens``."""
    t = tokens.to(torch.int64)
    w = _token_call(state, t >> 2, key, domain)
    j = t & 3
    return torch.where(j == 0, w[0], torch.where(j == 1, w[1], torch.where(j == 2, w[2], w[3])))


def vocab_groups(vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The block numbers ``0 .. ceil(vocab / 4) - 1`` of the token calls that cover a vocabulary.

    Compiled callers make it outside the graph: inductor narrows an in-graph ``arange`` to 32-bit
    indices, and the Philox products then overflow (seen with torch 2.13).
    """
    return torch.arange(-(-vocab // 4), device=device, dtype=torch.int64)


def vocab_words(state: Sequence[torch.Tensor], vocab: int, key: Key, domain: int = TOKEN_DOMAIN,
                groups: torch.Tensor | None = None) -> torch.Tensor:
    """``[..., vocab]`` words of every token id for states ``[...]``: one Philox call per 4 tokens."""
    groups = vocab_groups(vocab, state[0].device) if groups is None else groups
    w = _token_call([s.unsqueeze(-1) for s in state], groups, key, domain)
    return torch.stack(w, dim=-1).flatten(-2)[..., :vocab]


def _selfhash_states(windows: torch.Tensor, key: Key) -> list[tuple[torch.Tensor, ...]]:
    h = windows.shape[-1]
    if h < 1:
        raise ValueError("selfhash needs a context width h >= 1")
    return [context_state(windows[..., j : j + 1], key, MODE_SELFHASH, h) for j in range(h)]


def _min_select(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The colour word of the pair whose selector is smallest (the first on ties)."""
    best_sel, best_u = pairs[0]
    for sel, u in pairs[1:]:
        take = sel < best_sel
        best_sel, best_u = torch.where(take, sel, best_sel), torch.where(take, u, best_u)
    return best_u


def selfhash_vocab_words(windows: torch.Tensor, vocab: int, key: Key, groups: torch.Tensor | None = None) -> torch.Tensor:
    """``[..., vocab]`` selfhash words of every token after each context ``windows[..., h]``."""
    states = _selfhash_states(windows, key)
    return _min_select([(vocab_words(s, vocab, key, SELECT_DOMAIN, groups), vocab_words(s, vocab, key, TOKEN_DOMAIN, groups))
                        for s in states])


def lefthash_vocab_words(windows: torch.Tensor, vocab: int, key: Key, groups: torch.Tensor | None = None) -> torch.Tensor:
    """``[..., vocab]`` lefthash words of every token after each context ``windows[..., h]``."""
    return vocab_words(context_state(windows, key, MODE_LEFTHASH), vocab, key, TOKEN_DOMAIN, groups)


def position_u32(token_ids: torch.Tensor, key: Key, h: int, seeding: str) -> torch.Tensor:
    """PRF word of every token given its ``h`` predecessors: ``[..., N] -> [..., N - h]``.

    Entry ``i`` belongs to token ``token_ids[..., h + i]``; this is what detection scores.
    """
    if seeding not in SEEDING_SCHEMES:
        raise ValueError(f"unknown seeding scheme {seeding!r}; expected one of {SEEDING_SCHEMES}")
    ids = token_ids.to(torch.int64)
    n = ids.shape[-1] - h
    if n <= 0:
        return ids.new_empty((*ids.shape[:-1], 0))
    targets = ids[..., h:]
    windows = ids.unfold(-1, h, 1)[..., :n, :] if h else ids.new_empty((*ids.shape[:-1], n, 0))
    if seeding == "lefthash":
        return token_words(context_state(windows, key, MODE_LEFTHASH), targets, key, TOKEN_DOMAIN)
    states = _selfhash_states(windows, key)
    return _min_select([(token_words(s, targets, key, SELECT_DOMAIN), token_words(s, targets, key, TOKEN_DOMAIN))
                        for s in states])


def selfhash_anchors(token_ids: torch.Tensor, key: Key, h: int) -> torch.Tensor:
    """The context token whose selector wins for every scored token (selfhash): ``[..., N] -> [..., N - h]``.

    A selfhash colour is the TOKEN_DOMAIN word of (anchor, token), so two positions with the same
    (anchor, token) pair show the same coin whatever the rest of their contexts: detection counts
    each pair once (:func:`repeat_keys`).
    """
    ids = token_ids.to(torch.int64)
    n = ids.shape[-1] - h
    if n <= 0:
        return ids.new_empty((*ids.shape[:-1], 0))
    targets = ids[..., h:]
    windows = ids.unfold(-1, h, 1)[..., :n, :]
    sels = [token_words(s, targets, key, SELECT_DOMAIN) for s in _selfhash_states(windows, key)]
    best, best_j = sels[0], torch.zeros_like(targets)
    for j, sel in enumerate(sels[1:], start=1):
        take = sel < best
        best, best_j = torch.where(take, sel, best), torch.where(take, torch.full_like(best_j, j), best_j)
    return torch.gather(windows, -1, best_j.unsqueeze(-1)).squeeze(-1)


def repeat_keys(token_ids: torch.Tensor, key: Key, h: int, seeding: str) -> torch.Tensor | None:
    """What makes two scored positions the same coin, as one int64 per position ``[..., N - h]``:
    for selfhash the (anchor, token) pair (``anchor * 2**31 + token``); ``None`` for lefthash, where
    it is the whole (context, token) n-gram (the PRF's input)."""
    if seeding != "selfhash":
        return None
    anchors = selfhash_anchors(token_ids, key, h)
    return anchors * 2**31 + token_ids.to(torch.int64)[..., h:]


def uniform(words: torch.Tensor) -> torch.Tensor:
    """Keyed uniforms in (0, 1) from PRF words: ``(u + 1/2) / 2**32`` in float64 (never 0 or 1)."""
    return (words.to(torch.float64) + 0.5) * 2.0**-32
