"""The fingerprint zoo's weight edits (benchmarks/fpzoo.py) checked against independent truth: GGUF's
own dequantizer for the Q4_K packing, an element-by-element TIES merge, the pruning counts."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fpzoo  # noqa: E402

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402


def tiny(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_q4_k_packing_decodes_with_gguf_within_one_step_of_each_weight():
    w = np.random.default_rng(0).standard_normal((16, 512)).astype(np.float32) * 0.05
    w[3, :256] += 0.2  # a block with no negative weight: its min is clipped to 0, as Q4_K's mins are
    blocks = fpzoo.q4_k_pack(w)
    assert blocks.shape == (16, 2 * 144) and blocks.dtype == np.uint8  # block_q4_K: 144 bytes per 256 weights
    y = dequantize(blocks, T.Q4_K)  # the gguf package's decoder, not ours
    sub = w.reshape(-1, 32)
    step = (sub.max(1) - np.minimum(sub.min(1), 0)) / 15  # the min-max grid of each 32-weight sub-block
    err = np.abs(y.reshape(-1, 32) - sub)
    assert (err <= step[:, None] * 1.05 + 1e-6).all()  # a wrong nibble or scale layout misses by many steps
    assert all(len(np.unique(r)) <= 16 for r in y.reshape(-1, 32))
    q4_0 = dequantize(quantize(w, T.Q4_0), T.Q4_0)
    assert np.linalg.norm(y - w) < np.linalg.norm(q4_0 - w)  # a min per sub-block beats Q4_0's symmetric grid


def test_q4_k_round_trip_falls_back_to_q5_0_for_rows_not_a_multiple_of_256():
    m = tiny(0)
    q = fpzoo.q4_k_round_trip(m)
    up, down = m.model.layers[0].mlp.up_proj.weight.detach().numpy(), m.model.layers[0].mlp.down_proj.weight.detach().numpy()
    assert np.array_equal(q.model.layers[0].mlp.up_proj.weight.detach().numpy(), dequantize(quantize(up, T.Q5_0), T.Q5_0))
    assert np.array_equal(q.model.layers[0].mlp.down_proj.weight.detach().numpy(), dequantize(fpzoo.q4_k_pack(down), T.Q4_K))


def test_int4_groups_have_at_most_16_levels_and_keep_their_extremes():
    m = tiny(1)
    q = fpzoo.int4_group_round_trip(m)
    w, y = m.model.layers[1].mlp.up_proj.weight.detach().numpy(), q.model.layers[1].mlp.up_proj.weight.detach().numpy()
    g, gy = w.reshape(-1, 64), y.reshape(-1, 64)
    assert all(len(np.unique(r)) <= 16 for r in gy)
    np.testing.assert_allclose(gy.min(1), g.min(1), atol=1e-6)
    np.testing.assert_allclose(gy.max(1), g.max(1), atol=1e-6)


def test_ties_merge_matches_an_element_by_element_reading_of_the_paper():
    base, a, b = tiny(2), tiny(3), tiny(4)
    w, density = 0.7, 0.5
    merged = fpzoo.ties_merge(base, a, b, w, density)
    name = "model.layers.0.self_attn.q_proj.weight"
    p0, pa, pb = (dict(m.named_parameters())[name].detach().numpy().ravel() for m in (base, a, b))
    trimmed = []
    for t in (pa - p0, pb - p0):
        keep = np.argsort(-np.abs(t))[: int(density * t.size)]  # the top half of magnitudes
        trimmed.append(np.where(np.isin(np.arange(t.size), keep), t, 0.0))
    want = p0.copy()
    for i in range(p0.size):
        ta, tb = trimmed[0][i], trimmed[1][i]
        sign = np.sign(w * ta + (1 - w) * tb)
        num = sum(wt * t for wt, t in ((w, ta), (1 - w, tb)) if t != 0 and np.sign(t) == sign)
        den = sum(wt for wt, t in ((w, ta), (1 - w, tb)) if t != 0 and np.sign(t) == sign)
        want[i] += num / den if den else 0.0
    got = dict(merged.named_parameters())[name].detach().numpy().ravel()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pruning_zeroes_the_fraction_asked_and_heads_whole():
    m = tiny(5)
    p = fpzoo.prune_matrices(m, 0.5)
    for name, w in p.named_parameters():
        if w.ndim == 2 and any(k in name for k in fpzoo.ATTN_MLP):
            assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01), name
    assert torch.equal(p.model.embed_tokens.weight, m.model.embed_tokens.weight)
    h = fpzoo.prune_heads(m, 0.5)
    o = h.model.layers[0].self_attn.o_proj.weight.reshape(64, 4, 16)
    dead = (o.abs().sum((0, 2)) == 0).nonzero().flatten().tolist()
    assert len(dead) == 2
    q = h.model.layers[0].self_attn.q_proj.weight.reshape(4, 16, 64)
    assert all((q[d] == 0).all() for d in dead) and all((q[d] != 0).any() for d in range(4) if d not in dead)
