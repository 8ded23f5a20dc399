"""KGW and Unigram: config, processor and detector, checked against the pure-Python PRF spec."""

import json
import math

import numpy as np
import pytest
import torch

from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.watermark.text import KGW, SCHEMES, Unigram, make_scheme, normalize_text

from helpers import V, VocabOnly, green_ref, marked_ids, marked_text


SCHEME_CASES = [
    ("kgw", {}),
    ("kgw", {"context_width": 4, "seeding": "selfhash"}),
    ("kgw", {"context_width": 2, "seeding": "lefthash", "gamma": 0.5}),
    ("unigram", {}),
]


@pytest.mark.parametrize("name,params", SCHEME_CASES)
def test_config_json_round_trip(key, name, params):
    s = make_scheme(name, key, **params)
    cfg = json.loads(s.to_json())
    assert "key" not in cfg and key.to_hex() not in s.to_json()
    assert SCHEMES[name].from_config(cfg, key) == s


@pytest.mark.parametrize(
    "params,match",
    [
        ({"gamma": 0.0}, "gamma"), ({"gamma": 1.0}, "gamma"), ({"delta": -1.0}, "delta"),
        ({"context_width": 0}, "context_width"), ({"context_width": 9}, "context_width"),
        ({"seeding": "minhash"}, "seeding"), ({"colour": 1}, "unknown parameter"),
    ],
)
def test_invalid_parameters(key, params, match):
    with pytest.raises(InputError, match=match):
        make_scheme("kgw", key, **params)


def test_unknown_scheme_and_missing_key(key):
    with pytest.raises(InputError, match="unknown scheme"):
        make_scheme("aaronson", key)
    with pytest.raises(InputError, match="SecretKey"):
        KGW(key="not a key")


@pytest.mark.parametrize("name,params", SCHEME_CASES)
def test_processor_adds_delta_exactly_on_reference_green_list(key, name, params):
    s = make_scheme(name, key, **params)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, V, generator=g)
    ids = torch.randint(0, V, (3, 6), generator=g)
    out = s.processor()(ids, scores.clone())
    diff = out - scores
    for r in range(3):
        cols = torch.randint(0, V, (300,), generator=g).tolist()
        want = [s.delta if green_ref(s, ids[r].tolist(), t) else 0.0 for t in cols]
        assert diff[r, cols].tolist() == pytest.approx(want, abs=1e-5)
    frac = (diff != 0).float().mean().item()
    assert abs(frac - s.gamma) < 5 * math.sqrt(s.gamma * (1 - s.gamma) / diff.numel())


def test_lists_depend_on_context_for_kgw_not_unigram(key):
    scores = torch.zeros(2, V)
    ids = torch.tensor([[5, 6, 7], [5, 6, 8]])
    kgw = KGW(key).processor()(ids, scores) != 0
    uni = Unigram(key).processor()(ids, scores) != 0
    assert not torch.equal(kgw[0], kgw[1])
    assert torch.equal(uni[0], uni[1])


def test_short_context_rows_and_zero_delta_unchanged(key):
    s = KGW(key, context_width=4)
    scores = torch.randn(2, V)
    assert torch.equal(s.processor()(torch.tensor([[1, 2, 3], [4, 5, 6]]), scores), scores)
    z = KGW(key, delta=0.0, context_width=2, seeding="selfhash")
    scores[0, :5] = float("-inf")
    assert torch.equal(z.processor()(torch.randint(0, V, (2, 5)), scores), scores)


def test_processor_rejects_mismatched_shapes(key, tokenizer):
    p = KGW(key).processor(tokenizer)
    with pytest.raises(InputError, match="mismatched tokenizer"):
        p(torch.tensor([[1, 2]]), torch.zeros(1, 1000))
    with pytest.raises(InputError, match="expected input_ids"):
        p(torch.tensor([1, 2]), torch.zeros(1, V))


@pytest.mark.parametrize("name,params", SCHEME_CASES)
def test_perfect_mark_gives_closed_form_z(key, name, params):
    s = make_scheme(name, key, **params)
    h, _ = s.seeding_params()
    ids = marked_ids(s, 108, np.random.default_rng(1))
    det = s.detector(VocabOnly(), ignore_repeated_ngrams=False).detect(ids)
    n = 108 - h
    assert det.n_scored == n and det.details["green"] == n
    assert det.statistic == pytest.approx((n - s.gamma * n) / math.sqrt(n * s.gamma * (1 - s.gamma)))
    assert det.p_value == pytest.approx(s.gamma**n, rel=1e-6) and det.decision
    assert sum(det.evidence["green"]) == n and det.evidence["scored"][:h] == [False] * h


def test_wrong_key_sees_no_mark(key):
    ids = marked_ids(KGW(key), 300, np.random.default_rng(2))
    other = KGW(SecretKey.generate()).detector(VocabOnly()).detect(ids)
    assert abs(other.statistic) < 4 and not other.decision


def test_null_false_positive_rate_is_calibrated(key):
    rng = np.random.default_rng(3)
    det = KGW(key).detector(VocabOnly(), fpr=0.01)
    results = [det.detect(rng.integers(0, V, 200)) for _ in range(400)]
    zs = np.array([r.statistic for r in results])
    assert abs(zs.mean()) < 4 / math.sqrt(400) and 0.8 < zs.std() < 1.2
    assert np.mean([r.decision for r in results]) <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / 400)


def test_repeated_ngrams_count_once(key):
    s = KGW(key)
    ids = [10, 20] * 50 + list(range(100, 140))
    d = s.detector(VocabOnly()).detect(ids)
    bigrams = {tuple(ids[i : i + 2]) for i in range(len(ids) - 1)}
    assert d.n_scored == len(bigrams)
    counted = s.detector(VocabOnly(), ignore_repeated_ngrams=False).detect(ids)
    assert counted.n_scored == len(ids) - 1
    uni = Unigram(key).detector(VocabOnly()).detect(ids)
    assert uni.n_scored == len(set(ids))


def test_too_short_and_out_of_range(key):
    det = KGW(key).detector(VocabOnly(), min_tokens=16)
    with pytest.raises(InputError, match="at least 16"):
        det.detect(list(range(10)))
    with pytest.raises(InputError, match="out of range"):
        det.detect([1, 2, V + 5] + list(range(30)))
    with pytest.raises(InputError, match="fpr"):
        KGW(key).detector(VocabOnly(), fpr=0.0)


def test_text_detection_with_real_tokenizer_and_normalisation(key, tokenizer):
    s = KGW(key)
    text = marked_text(s, tokenizer, 120, seed=4)
    det = s.detector(tokenizer)
    clean = det.detect(text)
    assert clean.decision and clean.statistic > 15
    noisy = "\u200b".join(text[i : i + 7] for i in range(0, len(text), 7))
    assert normalize_text(noisy) == text
    assert det.detect(noisy).statistic == clean.statistic
    prompt = "Write something. "
    assert det.detect(prompt + text, prompt=prompt).statistic == clean.statistic


@pytest.mark.parametrize("name", ["kgw", "unigram", "ie"])
def test_config_records_prf_v2_and_refuses_v1(key, name):
    config = make_scheme(name, key).config()
    assert config["prf_version"] == 2
    with pytest.raises(InputError, match="PRF spec v1, which wmkit withdrew"):
        SCHEMES[name].from_config({**config, "prf_version": 1}, key)
    with pytest.raises(InputError, match="unknown prf_version 3"):
        SCHEMES[name].from_config({**config, "prf_version": 3}, key)


def test_selfhash_counts_each_anchor_token_pair_once(key):
    """A selfhash colour is the word of (anchor, token): positions with the same pair under different
    contexts are one coin. The detector scores each distinct pair once -- checked against the
    pure-Python PRF -- where counting distinct 5-grams would score the same coin many times."""
    import numpy as np

    import prf_reference as ref
    from helpers import VocabOnly

    scheme = KGW(key, context_width=4, seeding="selfhash")
    rng = np.random.default_rng(0)
    ids = [int(x) for x in rng.integers(0, 12, size=600)]  # a tiny vocabulary: pairs repeat, 5-grams rarely
    pk = scheme.prf_key()
    pairs = {}
    for i in range(4, len(ids)):
        pair = (ref.selfhash_anchor(ids[i - 4 : i], ids[i], pk), ids[i])
        if pair not in pairs:
            pairs[pair] = ref.is_green(ids[i - 4 : i], ids[i], pk, scheme.gamma, "selfhash")
    grams = {tuple(ids[i - 4 : i + 1]) for i in range(4, len(ids))}
    det = scheme.detector(VocabOnly(), min_tokens=1).detect(ids)
    assert det.n_scored == len(pairs) < len(grams) / 3 and det.details["green"] == sum(pairs.values())
    plain = scheme.detector(VocabOnly())
    seqs = [torch.tensor(ids)]
    assert plain.coins(seqs, *plain.pack(seqs)[:3]).sum() == len(pairs)
