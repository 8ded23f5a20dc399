"""SynthID-Text against transformers' own SynthIDTextWatermarkLogitsProcessor, a Monte Carlo
tournament, and the null distribution of its detectors on unmarked token sequences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor

from helpers import VocabOnly
from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.watermark.text import SynthID
from wmkit.watermark.text.synthid import derive_keys

KEYS = (654, 400, 836, 123, 340, 443, 597, 160, 57)  # transformers' documented example keys
V = 49152


def hf_processor(scheme: SynthID) -> SynthIDTextWatermarkLogitsProcessor:
    return SynthIDTextWatermarkLogitsProcessor(
        ngram_len=scheme.ngram_len, keys=list(scheme.layer_keys()), sampling_table_size=scheme.sampling_table_size,
        sampling_table_seed=scheme.sampling_table_seed, context_history_size=scheme.context_history_size,
        device=torch.device("cpu"), skip_first_ngram_calls=scheme.skip_first_ngram_calls)


@pytest.mark.parametrize("params", [
    {"ngram_len": 5},
    {"ngram_len": 2, "context_history_size": 3, "sampling_table_seed": 7},  # a short history: contexts evicted
    {"ngram_len": 4, "skip_first_ngram_calls": True, "sampling_table_size": 1000},
])
@pytest.mark.parametrize("explicit", [True, False])
def test_scores_equal_transformers_processor_step_by_step(params, explicit):
    scheme = SynthID(KEYS if explicit else SecretKey(bytes(range(32))), **params, **({} if explicit else {"depth": 12}))
    theirs, ours = hf_processor(scheme), scheme.processor(VocabOnly())
    g = torch.Generator().manual_seed(len(params))
    ids = torch.randint(0, V, (4, 6), generator=g)
    for step in range(16):
        scores = torch.randn(4, V, generator=g) * 4
        scores[1, :100] = float("-inf")  # masked tokens stay at the float minimum in both
        want, got = theirs(ids, scores.clone()), ours(ids, scores.clone())
        assert torch.equal(got, want), step
        nxt = torch.randint(0, V, (4, 1), generator=g)
        if 4 <= step < 10:  # a loop: repeated contexts, which transformers leaves unmarked
            nxt[:2] = ids[:2, -3:-2]
        ids = torch.cat([ids, nxt], 1)


def test_g_values_and_scored_positions_equal_transformers_detector_side():
    scheme = SynthID(KEYS, ngram_len=3, context_history_size=5)
    hf = hf_processor(scheme)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 4, (1, 120), generator=g)  # a tiny alphabet: many repeated contexts
    ids[0, 100] = 7  # "EOS": nothing from it on
    det = scheme.detector(type("Tok", (VocabOnly,), {"eos_token_id": 7})(), min_tokens=1)
    ours_g, pos = det.scored_g(ids[0])
    their_g = hf.compute_g_values(ids)[0]
    mask = (hf.compute_context_repetition_mask(ids) * hf.compute_eos_token_mask(ids, 7)[:, 2:])[0].bool()
    assert torch.equal(pos, torch.nonzero(mask).flatten() + 2)
    assert torch.equal(ours_g, their_g[mask])
    assert 0 < len(pos) < 98  # repeats were removed, and some remain


def _tournament_mc(p: np.ndarray, g: np.ndarray, leaves: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Run the tournament itself: leaves^depth samples, each match won by a candidate with the
    highest g at that layer (ties: a uniformly random one among the best)."""
    depth = g.shape[1]
    cand = rng.choice(len(p), size=(draws, leaves**depth), p=p)
    for d in range(depth):
        groups = cand.reshape(draws, -1, leaves)
        score = g[groups, d] + rng.random(groups.shape) * 0.5  # random tie-break among equal g
        cand = np.take_along_axis(groups, score.argmax(-1)[..., None], -1)[..., 0]
    return np.bincount(cand[:, 0], minlength=len(p)) / draws


@pytest.mark.parametrize("leaves", [2, 3])
def test_closed_form_equals_a_simulated_tournament(leaves):
    """The closed form of both variants against running the tournament (independent truth)."""
    scheme = SynthID(KEYS[:3], ngram_len=2, num_leaves=leaves)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 0.3]])
    ctx = torch.tensor([[11]])
    vocab = torch.arange(6)
    g = scheme.g_values(ctx.expand(6, 1), vocab).numpy()
    assert 0 < g.sum() < g.size  # some tokens win, some lose at each layer
    big = torch.full((1, V), float("-inf"))
    big[0, :6] = logits
    want = torch.softmax(scheme.watermarked_log_probs(big, ctx)[0, :6].double(), 0).numpy()
    p = torch.softmax(logits[0].double(), 0).numpy()
    got = _tournament_mc(p, g, leaves, 200_000, np.random.default_rng(0))
    np.testing.assert_allclose(got, want, atol=4e-3)
    assert np.abs(want - p).max() > 0.02  # the mark moves the distribution


def _marked_sequences(scheme, n_seq, length, rng):
    """Sequences sampled from the watermarked distribution of random high-entropy logits."""
    proc = scheme.processor(VocabOnly())
    ids = torch.zeros(n_seq, 1, dtype=torch.long)
    for _ in range(length):
        scores = torch.from_numpy(rng.standard_normal((n_seq, V)).astype(np.float32)) * 2
        ids = torch.cat([ids, torch.multinomial(torch.softmax(proc(ids, scores), -1), 1)], 1)
    return ids[:, 1:]


@pytest.mark.parametrize("score", ["weighted-mean", "mean"])
def test_marked_sequences_detected_and_windowed_locates_them(score):
    scheme = SynthID(KEYS, score=score)
    rng = np.random.default_rng(1)
    marked = _marked_sequences(scheme, 4, 120, rng)
    det = scheme.detector(VocabOnly(), fpr=1e-3)
    for row in marked:
        d = det.detect(row)
        assert d.decision and d.p_value < 1e-6, d
        assert d.details["score"] > 0.55
    other = SynthID(tuple(k + 1 for k in KEYS), score=score).detector(VocabOnly(), fpr=1e-3)
    assert not any(d.decision for d in other.detect_many(list(marked)))
    human = torch.from_numpy(rng.integers(0, V, 300))
    spliced = torch.cat([human[:150], marked[0], human[150:]])
    w = det.detect_windowed(spliced)
    assert w.decision and abs(w.details["token_start"] - 150) <= 30 and abs(w.details["token_end"] - 270) <= 30


@pytest.mark.parametrize("score", ["weighted-mean", "mean"])
def test_null_false_positive_rate_on_3000_unmarked_sequences(score):
    """3000 unmarked (uniform random) sequences of 200 tokens: the empirical FPR at 1e-2 is within 2x,
    and the p-values are uniform (KS)."""
    from scipy import stats

    scheme = SynthID(SecretKey(bytes(range(32))), score=score)
    det = scheme.detector(VocabOnly(), fpr=1e-2)
    rng = np.random.default_rng(2)
    seqs = [torch.from_numpy(rng.integers(0, V, 200)) for _ in range(3000)]
    p = np.array([d.p_value for d in det.detect_many(seqs)])
    assert 0.005 <= float(np.mean(p <= 1e-2)) <= 0.02
    assert stats.kstest(p, "uniform").pvalue > 1e-3


def test_keys_config_and_errors():
    s = SynthID(KEYS)
    assert s.depth == len(KEYS) and s.layer_keys() == KEYS
    assert "654" not in s.to_json() and s.key_id().startswith("synthid:")  # keys never in the config
    assert SynthID.from_config(s.config(), KEYS) == s
    with pytest.raises(InputError, match="depth is 5 but 9 keys"):
        SynthID(KEYS, depth=5)
    with pytest.raises(InputError, match="keys must be integers"):
        SynthID("1,x")
    assert SynthID("654, 400").layer_keys() == (654, 400)
    k = SecretKey(bytes(range(32)))
    assert len(set(derive_keys(k, 30))) == 30 and derive_keys(k, 30) != derive_keys(SecretKey(bytes(32)), 30)
    assert all(0 <= x < 2**63 for x in derive_keys(k, 30))
    with pytest.raises(InputError, match="num_leaves must be an integer"):
        SynthID(KEYS, num_leaves=1)
    with pytest.raises(InputError, match="score must be one of"):
        SynthID(KEYS, score="bayes")


def test_bayesian_detector_trained_saved_and_used_with_an_exact_null_p_value(tmp_path):
    """transformers' BayesianDetectorModel fitted on marked vs unmarked g-values; its p-value comes
    from simulated null g-values, so unmarked text is not flagged beyond the FPR."""
    from wmkit.watermark.text.synthid import detector_config
    from wmkit.watermark.text.synthid_bayes import BayesianScorer, train_bayesian

    scheme = SynthID(KEYS, ngram_len=3)
    rng = np.random.default_rng(5)
    det = scheme.detector(VocabOnly(), min_tokens=1)
    marked = [det.scored_g(row)[0] for row in _marked_sequences(scheme, 40, 60, rng)]
    unmarked = [det.scored_g(torch.from_numpy(rng.integers(0, V, 62)))[0] for _ in range(40)]
    meta = {"config": detector_config(scheme), "key_id": scheme.key_id(), "tokenizer": None}
    scorer = train_bayesian(marked, unmarked, scheme.depth, scheme.null_rate(), meta, epochs=150)
    rep = scorer.meta["report"]
    assert rep["auroc"] > 0.95 and rep["tpr_at_fpr_0.01"] >= 0.75, rep
    path = scorer.save(tmp_path / "bayes.safetensors")
    with pytest.raises(InputError, match="already exists"):
        scorer.save(path)
    again = BayesianScorer.load(path)
    g = marked[0].unsqueeze(0)
    assert torch.allclose(again.scores(g, torch.ones(1, g.shape[1])), scorer.scores(g, torch.ones(1, g.shape[1])))
    bayes = SynthID(KEYS, ngram_len=3, score="bayesian", weights=str(path)).detector(VocabOnly(), fpr=0.05, min_tokens=8)
    null_p = np.array([d.p_value for d in bayes.detect_many([torch.from_numpy(rng.integers(0, V, 80)) for _ in range(200)])])
    assert np.mean(null_p <= 0.05) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 200)  # exact null: calibrated
    hits = bayes.detect_many(list(_marked_sequences(scheme, 5, 80, rng)))
    assert all(d.decision and d.method == "synthid-bayesian" for d in hits)
    with pytest.raises(InputError, match="another SynthID configuration"):
        SynthID(KEYS, ngram_len=4, score="bayesian", weights=str(path)).detector(VocabOnly())
    with pytest.raises(InputError, match="trained for key id"):
        SynthID(KEYS[:-1] + (1,), ngram_len=3, score="bayesian", weights=str(path)).detector(VocabOnly())
    with pytest.raises(InputError, match="needs -P weights=FILE"):
        SynthID(KEYS, score="bayesian")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a safetensors file"):
        BayesianScorer.load(tmp_path / "junk.safetensors")


def test_prf_g_values_equal_the_spec_reference():
    """gvalues=prf: bit d mod 32 of the PRF v2 word in domain GVALUE ^ d // 32 (pure-Python spec);
    40 layers cross a block of 32, and the processor's vocabulary path gives the same bits."""
    import random

    import prf_reference as ref

    key = SecretKey(bytes(range(32)))
    scheme = SynthID(key, gvalues="prf", depth=40, ngram_len=3)
    pk = key.prf_key("text/synthid")
    rng = random.Random(4)
    ctx = torch.tensor([[rng.randrange(V) for _ in range(2)] for _ in range(6)])
    tok = torch.tensor([rng.randrange(V) for _ in range(6)])
    got = scheme.g_values(ctx, tok)
    want = [[ref.synthid_g(ctx[i].tolist(), int(tok[i]), pk, d) for d in range(40)] for i in range(6)]
    assert got.tolist() == want
    every = torch.stack(list(scheme.layer_g(ctx, vocab=V)), -1)  # [6, V, 40]
    assert torch.equal(every[torch.arange(6), tok], got)
    assert abs(float(every.double().mean()) - 0.5) < 0.002 and scheme.null_rate() == 0.5
    with pytest.raises(InputError, match="gvalues=prf needs a wmkit key file"):
        SynthID(KEYS, gvalues="prf")


def test_prf_g_values_make_the_tournament_distortion_free_over_contexts():
    """E over independent g-values of the 30-layer tournament's distribution is the model's: the
    average over 20,000 contexts of the marked distribution matches P token by token (z < 4.5)."""
    scheme = SynthID(SecretKey(bytes(range(32))), gvalues="prf", ngram_len=3)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 0.3, 1.5, -0.5])
    p = torch.softmax(logits.double(), 0)
    g = torch.Generator().manual_seed(9)
    ctx = torch.randint(0, V, (20_000, 2), generator=g)
    w = torch.softmax(scheme.watermarked_log_probs(logits.expand(20_000, 8).clone(), ctx).double(), 1)
    z = (w.mean(0) - p) / (w.std(0) / 20_000**0.5)
    assert float(z.abs().max()) < 4.5, z
    assert float((w - p).abs().max()) > 0.3  # each context's distribution is moved a lot


def test_prf_marks_are_detected_and_their_null_is_exact():
    scheme = SynthID(SecretKey(bytes(range(32))), gvalues="prf")
    rng = np.random.default_rng(6)
    det = scheme.detector(VocabOnly(), fpr=1e-3)
    assert all(d.decision and d.p_value < 1e-6 for d in det.detect_many(list(_marked_sequences(scheme, 3, 120, rng))))
    transformers_g = SynthID(SecretKey(bytes(range(32)))).detector(VocabOnly(), fpr=1e-3)  # the other g-values
    assert not any(d.decision for d in transformers_g.detect_many(list(_marked_sequences(scheme, 3, 120, rng))))
    null = SynthID(SecretKey(bytes(range(32))), gvalues="prf").detector(VocabOnly(), fpr=1e-2)
    p = np.array([d.p_value for d in null.detect_many([torch.from_numpy(rng.integers(0, V, 200)) for _ in range(2000)])])
    assert 0.005 <= float(np.mean(p <= 1e-2)) <= 0.02
