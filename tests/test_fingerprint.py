"""Output-space fingerprints on tiny random Llama models: signature, access levels, the containment test.

Truth comes from construction: a derived model shares the victim's output layer (or changes it
by a known low-rank term), an unrelated one has independent weights, and the top-k / top-1
recoveries are checked against the model's full logits.
"""

import copy

import numpy as np
import pytest
import torch
from scipy.stats import binom

from wmkit.errors import InputError
from wmkit.fingerprint import (
    LocalAPI,
    ModelAccess,
    Signature,
    Top1Recovery,
    TopKRecovery,
    centered_residuals,
    enroll,
    query_prompts,
    query_rows,
    signature_from_outputs,
    signature_from_weights,
    round_weights,
    score_fingerprint,
    verify_fingerprint,
)
from wmkit.fingerprint.verify import calibrate

V, H = 512, 32


def tiny(seed, vocab=V, tied=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def victim():
    return tiny(0)


@pytest.fixture(scope="module")
def sig(victim):
    return enroll(victim, unrelated=[tiny(100), tiny(101)], queries=16)


def low_rank_update(model, name, rank, scale, seed):
    """``model`` with ``W += scale * B A`` (a merged LoRA) on every parameter whose name ends with ``name``."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(name):
                b = torch.randn(p.shape[0], rank, generator=g)
                a = torch.randn(rank, p.shape[1], generator=g)
                p += scale * (b @ a) / rank**0.5
    return m


def test_signature_round_trip_and_refuses_overwrite(sig, tmp_path):
    path = sig.save(tmp_path / "s.safetensors")
    back = Signature.load(path)
    np.testing.assert_allclose(back.basis, sig.basis, atol=1e-7)
    assert back.hidden_size == H and back.meta["calibration"] == sig.meta["calibration"]
    np.testing.assert_array_equal(back.guide, sig.guide)
    with pytest.raises(InputError, match="refusing to overwrite"):
        sig.save(path)
    (tmp_path / "bad").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a wmkit signature"):
        Signature.load(tmp_path / "bad")
    with pytest.raises(InputError, match="does not exist"):
        Signature.load(tmp_path / "missing")


def test_basis_spans_the_output_layer_and_the_estimate_recovers_h(victim, sig):
    w = victim.get_output_embeddings().weight.detach().double().numpy()
    assert sig.basis.shape == (V, H + 1)
    np.testing.assert_allclose(sig.basis.T.astype(np.float64) @ sig.basis, np.eye(H + 1), atol=1e-5)
    proj = sig.basis @ (sig.basis.T @ w)
    assert np.abs(proj - w).max() < 1e-5 * np.abs(w).max()
    outs = ModelAccess(victim, "logprobs").vectors(query_prompts(V, 80, seed=3))
    est = signature_from_outputs(outs)
    assert est.hidden_size == H  # the recovered hidden size
    with pytest.raises(InputError, match="query more vectors"):
        signature_from_outputs(outs[:20])


def test_calibration_separates_derived_from_unrelated_models(sig):
    for key in ("calibration", "calibration_rows"):
        cal = sig.meta[key]
        assert cal["derived_max"] < cal["tau"] < cal["unrelated_min"]
        assert cal["tau"] == pytest.approx((cal["derived_max"] * cal["unrelated_min"]) ** 0.5)
        # no unrelated vector fell below tau: pi0 is the one-sided 95% Clopper-Pearson bound 1 - 0.05^(1/n)
        assert cal["pi0"] == pytest.approx(1 - 0.05 ** (1 / cal["n_unrelated"]))
        assert cal["derived_models"] == ["bfloat16", "float16", "rtn8", "rtn5"] and cal["n_unrelated"] == 2 * 16
    assert sig.meta["calibration"]["unrelated_min"] > 0.5


def test_calibrate_refuses_overlapping_families_and_records_the_threshold(sig):
    s = Signature(sig.basis, sig.hidden_size, {})
    with pytest.raises(InputError, match="reach the unrelated"):
        calibrate(s, [0.1, 0.6], [0.5, 0.9])
    cal = calibrate(s, [0.01, 0.04], [0.64, 0.9, 0.99])
    assert cal["tau"] == pytest.approx(0.16) and s.meta["calibration"] is cal


def test_centering_removes_what_a_suspect_adds_to_every_answer(victim, sig):
    """An output bias (or a learned shift of token frequencies) moves every answer by the same vector:
    the raw residual sees it, the centered one does not."""
    vecs = ModelAccess(victim, "logits").vectors(query_prompts(V, 8, seed=4))
    shifted = vecs + np.random.default_rng(0).standard_normal(V) * 3
    assert sig.residuals(shifted).min() > 0.5
    assert centered_residuals(sig, shifted).max() < 1e-5
    with pytest.raises(InputError, match="at least 2"):
        centered_residuals(sig, vecs[:1])


def test_round_weights_rounds_each_row_to_its_grid(victim):
    w = victim.get_output_embeddings().weight.detach()
    err = [float((round_weights(victim, b).get_output_embeddings().weight.detach() - w).abs().max()) for b in (4, 8)]
    step8 = float(w.abs().max()) / 127
    assert 0 < err[1] <= step8 / 2 + 1e-7 and err[0] > 8 * err[1]
    with pytest.raises(InputError, match="bits"):
        round_weights(victim, 1)


def test_a_signature_calibrated_for_another_statistic_is_refused(sig):
    old = Signature(sig.basis, sig.hidden_size, {"calibration": {"tau": 0.01, "pi0": 0.1, "noise_floor": 1e-4}})
    with pytest.raises(InputError, match="enroll the model again"):
        verify_fingerprint(old, ModelAccess(tiny(3), "logits"))


def test_topk_and_top1_recovery_match_the_full_logits(victim, sig):
    prompts = query_prompts(V, 2, seed=9)
    full = ModelAccess(victim, "logits").vectors(prompts)
    rows = np.asarray(sig.meta["calibration_rows"]["rows"])
    assert len(rows) == H + 1 + 128 and (rows == query_rows(sig)).all()
    api = LocalAPI(victim)
    topk = TopKRecovery(api, k=20)
    got = topk.vectors(prompts, rows)
    want = full[:, rows] - full[:, rows[:1]]
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert api.calls == 2 * topk.calls_per_vector(len(rows)) == 2 * int(np.ceil((len(rows) - 1) / 19))
    api1 = LocalAPI(victim)
    top1 = Top1Recovery(api1, tol=1e-7)
    got1 = top1.vectors(prompts[:1], rows)
    want1 = full[0, rows] - full[0].max()
    np.testing.assert_allclose(got1[0], want1, atol=1e-6)
    assert api1.calls <= top1.calls_per_vector(len(rows))


def test_guided_top1_recovers_each_entry_within_tol_at_a_fraction_of_the_calls(victim, sig):
    """The guide is the victim's own logits on the first query prompts; top-1 recovery centred on it
    gets every entry within tol / 2 (the bisection's midpoint), for a derived model in about 2-3 calls
    per entry (the window narrows to the prediction's own spread once it is refitted), and for an
    unrelated model too."""
    from wmkit.fingerprint.verify import GUIDE_QUERIES, guide_for

    assert sig.guide.shape == (GUIDE_QUERIES, V)
    guide = guide_for(sig)
    prompts = query_prompts(V, 2)
    assert all(tuple(p) in guide for p in prompts)
    np.testing.assert_allclose(guide[tuple(prompts[0])], ModelAccess(victim, "logits").vectors(prompts[:1])[0], rtol=1e-6)
    rows = np.asarray(sig.meta["calibration_rows"]["rows"])
    derived = low_rank_update(victim, "lm_head.weight", 4, 0.002, 3)
    per_entry = {}
    for name, m in {"victim": victim, "lora-head": derived, "unrelated": tiny(7)}.items():
        api = LocalAPI(m)
        got = Top1Recovery(api, guide=guide).vectors(prompts, rows)
        full = ModelAccess(m, "logits").vectors(prompts)
        want = full[:, rows] - full.max(axis=1, keepdims=True)
        tol = 0.5 * np.std(guide[tuple(prompts[0])][rows])  # guide_tol: half the victim's spread
        assert np.abs(got - want).max() <= 0.5 * 1.05 * tol, name  # the bisection's midpoint (the spread differs per prompt)
        per_entry[name] = api.calls / (2 * len(rows))
    assert per_entry["victim"] <= 3.1 and per_entry["lora-head"] <= 3.5, per_entry  # (a tiny random model's
    # logits all lie within 4 of its top, so here an unrelated one costs no more; the benchmark measures the real one)
    api = LocalAPI(victim)  # a prompt the guide does not hold: plain bisection over the whole range
    other = query_prompts(V, 1, seed=5)
    got = Top1Recovery(api, tol=0.01, guide=guide).vectors(other, rows)
    full = ModelAccess(victim, "logits").vectors(other)
    assert np.abs(got - (full[:, rows] - full.max())).max() <= 0.005 + 1e-9
    assert api.calls / len(rows) > 6
    with pytest.raises(InputError):
        Top1Recovery(api, tol=0.0)


@pytest.mark.parametrize("level", ["logits", "logprobs", "topk", "top1", "top1-guided"])
def test_zoo_verdicts_at_every_access_level(level, victim, sig):
    derived = {
        "bfloat16": copy.deepcopy(victim).to(torch.bfloat16),
        "float16": copy.deepcopy(victim).to(torch.float16),
        "lora-attn-mlp": low_rank_update(low_rank_update(victim, "q_proj.weight", 4, 0.05, 1), "up_proj.weight", 4, 0.05, 2),
        "lora-head": low_rank_update(victim, "lm_head.weight", 4, 0.002, 3),  # ~10% of the head's norm
    }
    unrelated = {"seed-7": tiny(7), "seed-8": tiny(8)}
    from wmkit.fingerprint.verify import guide_for

    queries = 10 if level.startswith("top1") else 16
    restricted = level in ("topk", "top1", "top1-guided")

    def access(m):
        if level in ("logits", "logprobs"):
            return ModelAccess(m, level)
        if level == "top1-guided":  # a finer grid than the default quarter: 161 rows hold a margin of 128
            return Top1Recovery(LocalAPI(m), guide=guide_for(sig), guide_tol=0.1)
        return TopKRecovery(LocalAPI(m), 20) if level == "topk" else Top1Recovery(LocalAPI(m), tol=1e-7)

    pi0 = sig.meta["calibration_rows" if restricted else "calibration"]["pi0"]
    for name, m in derived.items():
        rep = verify_fingerprint(sig, access(m), queries=queries, restricted=restricted)
        assert rep.derived and rep.p_value <= 1e-6, (level, name, rep.to_dict())
        c = rep.containment.details["green"]  # the p-value is the binomial tail P[Binomial(q, pi0) >= c]
        assert c >= queries - 1 and rep.p_value == pytest.approx(binom.sf(c - 1, queries, pi0), rel=1e-9)
    for name, m in unrelated.items():
        rep = verify_fingerprint(sig, access(m), queries=queries, restricted=restricted)
        assert not rep.derived and rep.p_value == 1.0 and rep.to_dict()["margin"] < 0, (level, name, rep.to_dict())
    rep = verify_fingerprint(sig, access(victim), queries=queries, restricted=restricted)
    # the victim's residuals sit decades below tau (guided: the grid's rounding, tol / sqrt(12) per entry, is the residual)
    assert rep.derived and rep.to_dict()["margin"] > (0.5 if level == "top1-guided" else 2)


def test_the_affine_prediction_is_the_least_squares_fit_of_what_was_recovered():
    from wmkit.fingerprint.access import _AffineFit

    fit = _AffineFit(first=3.0, width=2.0, floor=0.1)
    assert fit.predict(5.0) == (5.0, 3.0)  # before 16 pairs: the victim's own threshold, the first window
    g = np.random.default_rng(0)
    xs = g.uniform(0, 10, 24)
    ys = 0.7 * xs + 1.5 + g.normal(0, 0.2, 24)
    for x, y in zip(xs, ys):
        fit.add(float(x), float(y))
    a, b = np.polyfit(xs, ys, 1)  # a second implementation of the fit on all 24 (refitted at 16 and 24)
    centre, half = fit.predict(4.0)
    assert centre == pytest.approx(a * 4.0 + b) and half == pytest.approx(2.0 * np.std(ys - (a * xs + b)))


def test_sequential_top1_stops_at_the_first_look_that_decides(victim, sig):
    """verify_sequential: the p-value is the number of looks times the binomial tail at the look that
    decided (scipy), the victim is decided at the first look, an unrelated model stops as soon as no
    later look could reject, and the verdict agrees with the fixed test on the same vectors."""
    from wmkit.fingerprint.verify import guide_for, verify_sequential

    cal = sig.meta["calibration_rows"]
    m, tail = 8 - 4 + 1, lambda c, k: m * binom.sf(c - 1, k, cal["pi0"])
    # the rule, a second time: a derived model contained at every query stops at the first look whose
    # tail rejects; an unrelated one, contained nowhere, at the first look after which none could
    stops = {True: min(k for k in range(4, 9) if tail(k, k) <= 1e-6 or k == 8),
             False: min(k for k in range(4, 9) if all(tail(j - k, j) > 1e-6 for j in range(k + 1, 9)))}
    for model, derived in ((victim, True), (tiny(7), False)):
        api = LocalAPI(model)
        # a finer grid than the default half: 161 rows hold a margin of 128, so rounding shows more than on the real model
        rep = verify_sequential(sig, Top1Recovery(api, guide=guide_for(sig), guide_tol=0.1), max_queries=8, first_look=4)
        c, k = rep.containment.details["green"], rep.queries
        assert rep.derived == derived and k == stops[derived] and rep.api_calls == api.calls
        assert c == sum(r <= cal["tau"] for r in rep.residuals) and len(rep.residuals) == k
        assert rep.p_value == pytest.approx(min(1.0, m * binom.sf(c - 1, k, cal["pi0"])), rel=1e-9)
    with pytest.raises(InputError):
        verify_sequential(sig, Top1Recovery(LocalAPI(victim)), max_queries=3, first_look=4)


def test_the_sequential_test_replays_on_its_record_and_refuses_a_cut_or_padded_one(victim, sig):
    """What evidence keeps: the vectors asked, in order. score_sequential reaches the live verdict on
    them, and refuses a record cut before the deciding look or padded past it (a cherry-picked record)."""
    from wmkit.fingerprint.verify import guide_for, score_sequential, verify_sequential

    for model in (victim, tiny(7)):
        record: list = []
        live = verify_sequential(sig, Top1Recovery(LocalAPI(model), guide=guide_for(sig), guide_tol=0.1),
                                 max_queries=8, first_look=4, record=record)
        assert len(record) == live.queries
        again = score_sequential(sig, np.stack(record), 8, 4)
        assert (again.derived, again.p_value, again.queries, again.residuals) == (live.derived, live.p_value, live.queries,
                                                                                   live.residuals)
        with pytest.raises(InputError, match="not enough"):
            score_sequential(sig, np.stack(record[:3]), 8, 4)
        extra = ModelAccess(model, "logits").vectors(query_prompts(V, 1, seed=9), sig.meta["calibration_rows"]["rows"])
        with pytest.raises(InputError, match="decides after"):
            score_sequential(sig, np.concatenate([np.stack(record), extra]), 8, 4)


def test_the_verdict_is_the_reported_p_value_against_the_fpr(victim, sig):
    """Never "derived" beside a large p: the reported p-value is the test that decided."""
    half = low_rank_update(victim, "lm_head.weight", 8, 3.0, 5)  # far from the output space: some answers leave it
    for m in (victim, half, tiny(9)):
        vecs = ModelAccess(m, "logits").vectors(query_prompts(V, 16))
        for fpr in (1e-2, 1e-6):
            rep = score_fingerprint(sig, vecs, fpr=fpr)
            assert rep.derived == (rep.p_value <= fpr)


def test_incompatible_vocabulary_is_reported_not_crashed(sig):
    rep = verify_fingerprint(sig, ModelAccess(tiny(5, vocab=V - 12), "logits"))
    assert not rep.derived and not rep.compatible and "incompatible vocabulary" in rep.reason


@pytest.mark.parametrize("level", ["logits", "logprobs"])
def test_an_extended_vocabulary_is_tested_on_the_old_ids(level, victim, sig):
    """Appending 88 tokens (trained rows, so the new tokens take probability mass) does not hide the
    victim; an unrelated model with the larger vocabulary stays unrelated."""
    ext = copy.deepcopy(victim)
    ext.resize_token_embeddings(V + 88)
    with torch.no_grad():
        ext.lm_head.weight[V:] = torch.randn(88, H, generator=torch.Generator().manual_seed(3))
    new_mass = torch.softmax(ext(input_ids=torch.tensor([query_prompts(V, 1)[0]])).logits[0, -1], -1)[V:].sum()
    assert new_mass > 0.05  # the normaliser moved: log-probs of the old ids all shift by log(1 - new_mass)
    rep = verify_fingerprint(sig, ModelAccess(ext, level), queries=16)
    assert rep.compatible and rep.derived and rep.p_value <= 1e-6, rep.to_dict()
    rep = verify_fingerprint(sig, ModelAccess(tiny(6, vocab=V + 88), level), queries=16)
    assert rep.compatible and not rep.derived and rep.p_value == 1.0


def test_uncalibrated_signature_and_bad_parameters(victim, sig):
    raw = signature_from_weights(victim)
    with pytest.raises(InputError, match="not calibrated"):
        verify_fingerprint(raw, ModelAccess(victim))
    with pytest.raises(InputError):
        ModelAccess(victim, "probs")
    with pytest.raises(InputError):
        TopKRecovery(LocalAPI(victim), k=1)
    with pytest.raises(InputError):
        ModelAccess(victim).vectors(query_prompts(V, 1), rows=[3, 3])
