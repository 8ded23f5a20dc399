"""The PRF: Random123 known-answer vectors, a pure-Python second implementation, statistics."""

import random

import pytest
import torch

import prf_reference as ref
from wmkit import kernels, prf

KAT = [  # Random123 kat_vectors, philox4x32_10: counter words, key words -> output words
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

# Spec v2 vectors, key (k0, k1, d0, d1) below: computed by wmkit's own pure-Python reference
# (tests/prf_reference.py) and frozen, so that any change to the definition of "green" is caught
# (wmkit/prf.py's docstring lists them). They are not an independent truth: that is KAT above (the
# permutation) and vLLM's own words below (the absorb / token-call layout).
SPEC_KEY = (0x01234567, 0x89ABCDEF, 0x0BADF00D, 0xFEEDFACE)
SPEC_VECTORS = {
    ("lefthash", (), 0): 0x63E96A48,
    ("lefthash", (42,), 7): 0x50241DC7,
    ("lefthash", (1, 2, 3, 4), 49151): 0xC2BECBB7,
    ("lefthash", (1, 2, 3, 4, 5), 262143): 0xBDC8EE65,
    ("selfhash", (1, 2, 3, 4), 49151): 0xE71C7401,
}


@pytest.mark.parametrize("ctr,key,out", KAT)
def test_philox_known_answers(ctr, key, out):
    t = [torch.tensor([c], dtype=torch.int64) for c in ctr]
    got = tuple(int(w) for w in prf.philox4x32_10(*t, *key))
    assert got == out
    assert ref.philox4x32_10(ctr, key) == out  # the reference implementation agrees too


def test_the_layout_gives_vllms_own_words():
    """The layout code of spec v2 (prf.absorb: a context absorbed into the 128-bit state; prf.token_words:
    one Philox call per block of 4 candidates) with vLLM's constants gives the words recorded from
    vllm==0.30.0's PhiloxPRF.uniform (tests/test_vllm_native.py), an implementation that is not ours."""
    from test_vllm_native import CTX, TOK, U42

    k0, k1 = 42 & prf.MASK32, 42 >> 32
    state = prf.absorb(CTX, (0x574D4358, CTX.shape[-1], 0, 0), k0, k1, key_step=4, min_blocks=0)
    words = prf.token_words([s.unsqueeze(-1) for s in state], TOK, (k0, k1), 0x574D544B)
    u = (((words & prf.MASK32) >> 8).to(torch.float64) + 1.0).div(2**24 + 1).to(torch.float32)
    assert u.tolist() == U42


def test_philox_matches_reference_on_random_words():
    rng = random.Random(1)
    ctrs = [[rng.getrandbits(32) for _ in range(4)] for _ in range(500)]
    key = (rng.getrandbits(32), rng.getrandbits(32))
    cols = [torch.tensor([c[i] for c in ctrs], dtype=torch.int64) for i in range(4)]
    got = torch.stack(prf.philox4x32_10(*cols, *key), dim=1).tolist()
    assert got == [list(ref.philox4x32_10(c, key)) for c in ctrs]


def test_spec_text_names_the_vectors():
    for (seeding, ctx, tok), expected in SPEC_VECTORS.items():
        assert f"0x{expected:08X}" in prf.__doc__


@pytest.mark.parametrize("spec,expected", list(SPEC_VECTORS.items()))
def test_spec_vectors(spec, expected):
    seeding, ctx, tok = spec
    f = ref.lefthash_u32 if seeding == "lefthash" else ref.selfhash_u32
    assert f(list(ctx), tok, SPEC_KEY) == expected
    ids = torch.tensor(list(ctx) + [tok])
    assert int(prf.position_u32(ids, SPEC_KEY, len(ctx), seeding)[-1]) == expected


@pytest.mark.parametrize("seeding,h", [("lefthash", 0), ("lefthash", 1), ("lefthash", 3), ("lefthash", 6), ("selfhash", 1),
                                       ("selfhash", 4)])
def test_position_u32_matches_reference(seeding, h):
    rng = random.Random(h)
    key = tuple(rng.getrandbits(32) for _ in range(4))
    ids = [rng.randrange(262144) for _ in range(60)]
    got = prf.position_u32(torch.tensor(ids), key, h, seeding).tolist()
    f = ref.lefthash_u32 if seeding == "lefthash" else ref.selfhash_u32
    assert got == [f(ids[i - h : i], ids[i], key) for i in range(h, len(ids))]


def test_vocab_words_equal_per_token_words():
    key = (5, 6, 7, 8)
    win = torch.tensor([[3, 1, 4], [1, 5, 9]])
    for fn, seeding in ((prf.lefthash_vocab_words, "lefthash"), (prf.selfhash_vocab_words, "selfhash")):
        full = fn(win, 1001, key)  # 1001: the last block of 4 is partial
        for r in range(2):
            ids = torch.cat([win[r].expand(1001, 3), torch.arange(1001).unsqueeze(1)], 1)
            assert torch.equal(full[r], prf.position_u32(ids, key, 3, seeding)[:, 0])


def test_v1_two_word_key_is_refused():
    with pytest.raises(ValueError, match="four 32-bit words"):
        prf.check_key((1, 2))
    with pytest.raises(ValueError, match="four 32-bit words"):
        kernels.green_bias(torch.zeros(1, 8), torch.zeros(1, 1, dtype=torch.long), (1, 2), 1, "lefthash", 0.25, 2.0)


BIAS_CASES = [("lefthash", 1), ("lefthash", 4), ("selfhash", 4), ("lefthash", 0)]


@pytest.mark.parametrize("seeding,h,path", [(s, h, p) for s, h in BIAS_CASES for p in ("native", "eager")]
                         + [("lefthash", 1, "compiled"), ("selfhash", 2, "compiled")])
def test_green_bias_matches_reference_bit_for_bit(seeding, h, path, monkeypatch):
    """The C kernel, the torch.compile path and eager torch against the pure-Python spec
    (WMKIT_NATIVE and WMKIT_COMPILE pick the path; each path counts its calls). torch.compile is
    checked on one graph per seeding: on a fresh machine each graph compiles for one to several
    minutes (the eager path it replaces is checked on every case)."""
    from wmkit.kernels import native

    monkeypatch.setenv("WMKIT_NATIVE", "1" if path == "native" else "0")
    monkeypatch.setenv("WMKIT_COMPILE", "1" if path == "compiled" else "0")
    calls = {"native": 0, "compiled": 0}
    compiled_fn = kernels._COMPILED.get("bias") or torch.compile(kernels._bias, dynamic=True)
    native_fn = native.green_bias_native

    def count(name, fn):
        def wrapped(*a):
            calls[name] += 1
            return fn(*a)
        return wrapped

    monkeypatch.setitem(kernels._COMPILED, "bias", count("compiled", compiled_fn))
    monkeypatch.setattr(native, "green_bias_native", count("native", native_fn))
    g = torch.Generator().manual_seed(h)
    b, v = 5, 3001
    scores = torch.randn(b, v, generator=g)
    scores[0, :10] = float("-inf")
    ids = torch.randint(0, 262144, (b, 9), generator=g)
    key = (0xDEADBEEF, 0x12345678, 0xCAFEF00D, 0x0BADBEEF)
    out = kernels.green_bias(scores, ids, key, h, seeding, 0.25, 2.0)
    assert calls == {"native": int(path == "native"), "compiled": int(path == "compiled")}
    assert ("bias", h, seeding == "selfhash", False) not in kernels._COMPILE_FAILED
    f = ref.lefthash_u32 if seeding == "lefthash" else ref.selfhash_u32
    for r in (0, 3):  # two rows, every token, against the pure-Python spec
        ctx = ids[r, ids.shape[1] - h :].tolist() if h else []
        green = torch.tensor([f(ctx, t, key) < int(0.25 * 2**32) for t in range(v)])
        assert torch.equal(out[r], torch.where(green, scores[r] + 2.0, scores[r]))


def test_v1_list_is_recovered_from_marked_tokens_at_20_bits():
    """The attack that withdrew spec v1: its per-context seed was one 32-bit word and the per-token
    map public, so a few marked tokens pin the whole list. At 20 bits the exhaustive search takes
    seconds here; at 32 bits it is 4096x that (minutes on a GPU). Spec v2 has no such seed: the
    list after a context depends on a 128-bit keyed state (work factor 2^128)."""
    bits, gamma, v = 20, 0.5, 49152
    thr = int(gamma * 2**32)
    true_seed = ref.v1_seed([], (0x1234, 0x5678)) & ((1 << bits) - 1)  # the Unigram list's seed, truncated
    green = [t for t in range(v) if ref.v1_u32(true_seed, t) < thr]
    observed = torch.tensor(random.Random(3).sample(green, 64))  # 64 distinct tokens of marked text: all green
    anchors = prf_v1_anchor(observed)
    best = None
    for lo in range(0, 1 << bits, 1 << 16):  # exhaustive search, 65,536 seeds at a time
        seeds = torch.arange(lo, lo + (1 << 16), dtype=torch.int64).unsqueeze(1)
        hits = (v1_mix32(seeds ^ anchors) < thr).sum(1)
        i = int(hits.argmax())
        if best is None or int(hits[i]) > best[1]:
            best = (lo + i, int(hits[i]))
    assert best == (true_seed, 64)
    recovered = [t for t in range(v) if ref.v1_u32(best[0], t) < thr]
    assert recovered == green  # the attacker now holds the whole list


def prf_v1_anchor(t: torch.Tensor) -> torch.Tensor:
    return (t.to(torch.int64) * 0x9E3779B9) & 0xFFFFFFFF


def v1_mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5, 0.9])
def test_green_fraction_is_gamma(gamma):
    n_ctx, v = 64, 49152
    green = prf.lefthash_vocab_words(torch.arange(n_ctx).unsqueeze(1), v, (7, 9, 1, 2)) < prf.threshold(gamma)
    n = green.numel()
    sd = (n * gamma * (1 - gamma)) ** 0.5
    assert abs(green.sum().item() - gamma * n) < 5 * sd
    per_row = green.float().mean(1)  # each context's list has about gamma |V| tokens
    assert (per_row - gamma).abs().max() < 5 * (gamma * (1 - gamma) / v) ** 0.5


def test_green_lists_independent_across_contexts():
    gamma, v = 0.25, 49152
    green = (prf.lefthash_vocab_words(torch.arange(200).unsqueeze(1), v, (11, 13, 1, 2)) < prf.threshold(gamma)).float()
    overlap = (green[:-1] * green[1:]).mean(1)  # adjacent contexts: P[green in both] = gamma^2
    sd = (gamma**2 * (1 - gamma**2) / v) ** 0.5
    assert (overlap - gamma**2).abs().max() < 5 * sd
    assert abs(overlap.mean().item() - gamma**2) < 5 * sd / 199**0.5


def test_keys_give_independent_lists():
    v = 49152
    ctx = torch.tensor([[5]])
    a = prf.lefthash_vocab_words(ctx, v, (1, 2, 3, 4)) < prf.threshold(0.5)
    b = prf.lefthash_vocab_words(ctx, v, (1, 2, 3, 5)) < prf.threshold(0.5)  # only a domain word differs
    agree = (a == b).float().mean().item()
    assert abs(agree - 0.5) < 5 * (0.25 / v) ** 0.5


def test_threshold_validates_gamma():
    assert prf.threshold(0.25) == 2**30
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            prf.threshold(bad)
