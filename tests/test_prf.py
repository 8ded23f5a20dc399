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

# Spec vectors (key (0x01234567, 0x89ABCDEF)); computed by the pure-Python reference and frozen
# so that any change to the definition of "green" is caught. See wmkit/prf.py for the spec.
SPEC_KEY = (0x01234567, 0x89ABCDEF)
SPEC_VECTORS = {
    ("lefthash", (), 0): 0x105F9DA2,
    ("lefthash", (42,), 7): 0xA1EC1720,
    ("lefthash", (1, 2, 3, 4), 49151): 0x793BB3BA,
    ("selfhash", (1, 2, 3, 4), 49151): 0xDCC068F9,
}


@pytest.mark.parametrize("ctr,key,out", KAT)
def test_philox_known_answers(ctr, key, out):
    t = [torch.tensor([c], dtype=torch.int64) for c in ctr]
    got = tuple(int(w) for w in prf.philox4x32_10(*t, *key))
    assert got == out
    assert ref.philox4x32_10(ctr, key) == out  # the reference implementation agrees too


def test_philox_matches_reference_on_random_words():
    rng = random.Random(1)
    ctrs = [[rng.getrandbits(32) for _ in range(4)] for _ in range(500)]
    key = (rng.getrandbits(32), rng.getrandbits(32))
    cols = [torch.tensor([c[i] for c in ctrs], dtype=torch.int64) for i in range(4)]
    got = torch.stack(prf.philox4x32_10(*cols, *key), dim=1).tolist()
    assert got == [list(ref.philox4x32_10(c, key)) for c in ctrs]


def test_mix32_matches_reference():
    xs = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF] + [random.Random(2).getrandbits(32) for _ in range(100)]
    got = prf.mix32(torch.tensor(xs, dtype=torch.int64)).tolist()
    assert got == [ref.fmix32(x) for x in xs]
    assert ref.fmix32(0) == 0 and ref.fmix32(1) == 0x514E28B7  # murmur3 fmix32 published values


@pytest.mark.parametrize("spec,expected", list(SPEC_VECTORS.items()))
def test_spec_vectors(spec, expected):
    seeding, ctx, tok = spec
    f = ref.lefthash_u32 if seeding == "lefthash" else ref.selfhash_u32
    assert f(list(ctx), tok, SPEC_KEY) == expected
    ids = torch.tensor(list(ctx) + [tok])
    assert int(prf.position_u32(ids, SPEC_KEY, len(ctx), seeding)[-1]) == expected


@pytest.mark.parametrize("seeding,h", [("lefthash", 0), ("lefthash", 1), ("lefthash", 3), ("selfhash", 1), ("selfhash", 4)])
def test_position_u32_matches_reference(seeding, h):
    rng = random.Random(h)
    key = (rng.getrandbits(32), rng.getrandbits(32))
    ids = [rng.randrange(49152) for _ in range(60)]
    got = prf.position_u32(torch.tensor(ids), key, h, seeding).tolist()
    f = ref.lefthash_u32 if seeding == "lefthash" else ref.selfhash_u32
    assert got == [f(ids[i - h : i], ids[i], key) for i in range(h, len(ids))]


@pytest.mark.parametrize("seeding,h", [("lefthash", 1), ("lefthash", 4), ("selfhash", 4), ("lefthash", 0)])
@pytest.mark.parametrize("compiled", [True, False])
def test_green_bias_matches_reference_bit_for_bit(seeding, h, compiled, monkeypatch):
    monkeypatch.setenv("WMKIT_COMPILE", "1" if compiled else "0")
    g = torch.Generator().manual_seed(h)
    b, v = 5, 3000
    scores = torch.randn(b, v, generator=g)
    scores[0, :10] = float("-inf")
    ids = torch.randint(0, v, (b, 9), generator=g)
    key = (0xDEADBEEF, 0x12345678)
    out = kernels.green_bias(scores, ids, key, h, seeding, 0.25, 2.0)
    f = ref.lefthash_u32 if seeding == "lefthash" else ref.selfhash_u32
    for r in (0, 3):  # two rows, every token, against the pure-Python spec
        ctx = ids[r, ids.shape[1] - h :].tolist() if h else []
        green = torch.tensor([f(ctx, t, key) < int(0.25 * 2**32) for t in range(v)])
        assert torch.equal(out[r], torch.where(green, scores[r] + 2.0, scores[r]))
    assert torch.equal(out, kernels.green_bias_reference(scores, ids, key, h, seeding, 0.25, 2.0))


@pytest.mark.parametrize("gamma", [0.1, 0.25, 0.5, 0.9])
def test_green_fraction_is_gamma(gamma):
    n_ctx, v = 64, 49152
    seeds = prf.lefthash_seeds(torch.arange(n_ctx).unsqueeze(1), (7, 9))
    green = prf.lefthash_u32(seeds.unsqueeze(1), torch.arange(v)) < prf.threshold(gamma)
    n = green.numel()
    sd = (n * gamma * (1 - gamma)) ** 0.5
    assert abs(green.sum().item() - gamma * n) < 5 * sd
    per_row = green.float().mean(1)  # each context's list has about gamma |V| tokens
    assert (per_row - gamma).abs().max() < 5 * (gamma * (1 - gamma) / v) ** 0.5


def test_green_lists_independent_across_contexts():
    gamma, v = 0.25, 49152
    seeds = prf.lefthash_seeds(torch.arange(200).unsqueeze(1), (11, 13))
    green = (prf.lefthash_u32(seeds.unsqueeze(1), torch.arange(v)) < prf.threshold(gamma)).float()
    overlap = (green[:-1] * green[1:]).mean(1)  # adjacent contexts: P[green in both] = gamma^2
    sd = (gamma**2 * (1 - gamma**2) / v) ** 0.5
    assert (overlap - gamma**2).abs().max() < 5 * sd
    assert abs(overlap.mean().item() - gamma**2) < 5 * sd / 199**0.5


def test_keys_give_independent_lists():
    v = 49152
    ctx = torch.tensor([[5]])
    a = prf.lefthash_u32(prf.lefthash_seeds(ctx, (1, 2)).unsqueeze(1), torch.arange(v)) < prf.threshold(0.5)
    b = prf.lefthash_u32(prf.lefthash_seeds(ctx, (1, 3)).unsqueeze(1), torch.arange(v)) < prf.threshold(0.5)
    agree = (a == b).float().mean().item()
    assert abs(agree - 0.5) < 5 * (0.25 / v) ** 0.5


def test_threshold_validates_gamma():
    assert prf.threshold(0.25) == 2**30
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            prf.threshold(bad)
