"""Output-space fingerprints on tiny random Llama models: signature, access levels, the two tests.

Truth comes from construction: a derived model shares the victim's output layer (or changes it
by a known low-rank term), an unrelated one has independent weights, and the top-k / top-1
recoveries are checked against the model's full logits.
"""

import copy

import numpy as np
import pytest
import torch

from wmkit.errors import InputError
from wmkit.fingerprint import (
    LocalAPI,
    ModelAccess,
    Signature,
    Top1Recovery,
    TopKRecovery,
    enroll,
    query_prompts,
    query_rows,
    signature_from_outputs,
    signature_from_weights,
    verify_fingerprint,
)

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


def test_calibration_separates_noise_from_unrelated_models(sig):
    cal = sig.meta["calibration"]
    assert cal["noise_floor"] < 1e-2 < 0.5 < cal["unrelated_min"]
    assert cal["noise_floor"] < cal["tau"] < cal["unrelated_min"] and 0 < cal["pi0"] < 0.2


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


@pytest.mark.parametrize("level", ["logits", "logprobs", "topk", "top1"])
def test_zoo_verdicts_at_every_access_level(level, victim, sig):
    derived = {
        "bfloat16": copy.deepcopy(victim).to(torch.bfloat16),
        "float16": copy.deepcopy(victim).to(torch.float16),
        "lora-attn-mlp": low_rank_update(low_rank_update(victim, "q_proj.weight", 4, 0.05, 1), "up_proj.weight", 4, 0.05, 2),
        "lora-head": low_rank_update(victim, "lm_head.weight", 4, 0.05, 3),
    }
    unrelated = {"seed-7": tiny(7), "seed-8": tiny(8)}
    queries = 10 if level == "top1" else 16  # test 2 needs queries > 2 x the LoRA rank
    restricted = level in ("topk", "top1")

    def access(m):
        if level in ("logits", "logprobs"):
            return ModelAccess(m, level)
        return TopKRecovery(LocalAPI(m), 20) if level == "topk" else Top1Recovery(LocalAPI(m), tol=1e-7)

    for name, m in derived.items():
        rep = verify_fingerprint(sig, access(m), queries=queries, restricted=restricted)
        assert rep.derived, (level, name, rep.to_dict())
    for name, m in unrelated.items():
        rep = verify_fingerprint(sig, access(m), queries=queries, restricted=restricted)
        assert not rep.derived and rep.p_value > 1e-3 and rep.added == rep.own_rank == queries, (level, name, rep.to_dict())
    head = verify_fingerprint(sig, access(derived["lora-head"]), queries=queries, restricted=restricted)
    assert head.added <= 4  # a rank-4 change of the output layer adds at most 4 directions
    assert verify_fingerprint(sig, access(victim), queries=queries, restricted=restricted).p_value < (1e-6 if queries >= 16 else 1e-2)


def test_low_rank_unrelated_outputs_do_not_fool_the_joint_space_test(sig):
    """An unrelated model whose outputs barely depend on the input (one shared direction) adds that
    direction and nothing else; test 2 must not read "added 1 of 16 queries" as derived."""

    class Constantish:
        vocab_size, calls = V, 0
        u = np.random.default_rng(0).standard_normal(V) * 5

        def vectors(self, prompts, rows=None):
            noise = np.random.default_rng(1).standard_normal((len(prompts), V)) * 1e-3
            return (self.u + noise) if rows is None else (self.u + noise)[:, rows]

    rep = verify_fingerprint(sig, Constantish(), queries=16)
    assert rep.added == rep.own_rank == 1 and not rep.joint_derived and not rep.derived


def test_incompatible_vocabulary_is_reported_not_crashed(sig):
    rep = verify_fingerprint(sig, ModelAccess(tiny(5, vocab=600), "logits"))
    assert not rep.derived and not rep.compatible and "incompatible vocabulary" in rep.reason


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
