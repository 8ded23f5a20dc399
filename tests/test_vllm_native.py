"""vLLM-native schemes against vLLM's own code: frozen known-answer vectors (recorded from the
``vllm==0.30.0`` wheel's ``vllm/v1/watermarking``) and, with the wheel present, live parity and
cross-detection (our processor's output detected by vLLM's detector, and the reverse)."""

import math

import numpy as np
import pytest
import torch

from helpers import VocabOnly
from wmkit.errors import InputError, InvalidKeyError
from wmkit.stats import gamma_pvalue
from wmkit.dedup import first_row
from wmkit.watermark.text.gumbel_family import completion_contexts, repeated_context
from wmkit.watermark.text.vllm_native import (
    VllmDualKeyGumbel, VllmGumbel, VllmSBW, derive_watermark_key, gumbel_choice, load_vllm_key, parse_vllm_key,
    vllm_config_to_scheme, vllm_philox_words, vllm_uniform,
)

# --- known answers, recorded from vllm==0.30.0 (PhiloxPRF.uniform, GumbelWatermarker, detectors) ---
CTX = torch.tensor([[-1, -1, -1, -1], [1, 2, 3, 4], [49151, 0, 7, 262143]])
TOK = torch.tensor([0, 1, 2, 3, 4, 49151, 262143])
U42 = [[0.9772860407829285, 0.006631969939917326, 0.8818417191505432, 0.49961361289024353, 0.16698597371578217,
        0.07267963141202927, 0.38074615597724915],
       [0.5361072421073914, 0.6940827369689941, 0.22023026645183563, 0.7877641320228577, 0.1031837984919548,
        0.18511854112148285, 0.4174427092075348],
       [0.9154224395751953, 0.6702563166618347, 0.8196718692779541, 0.30123451352119446, 0.6512635946273804,
        0.24594001471996307, 0.23855964839458466]]
U5_MAXKEY = [0.30494603514671326, 0.4273833930492401, 0.3243860900402069, 0.23402009904384613, 0.07530980557203293,
             0.07365845888853073, 0.20761077105998993]  # key 2**64 - 1, context (1, 2, 3, 4, 5): two absorb blocks
CHOICE = [741, 23, 611]  # GumbelWatermarker(42)._sample_watermarked(LOGITS, CTX)
IDS = [(i * 2654435761 + 12345) % 49152 for i in range(64)]
IDS = IDS + IDS[10:30]  # a repeated passage: its contexts are scored once
DETECTIONS = {  # (scheme, dedup) -> (score, p_value, n) by vLLM's detectors on IDS
    ("gumbel", True): (64.20654352514819, 0.6657619402913485, 68),
    ("gumbel", False): (76.87890070962457, 0.7774001455890535, 84),
    ("dual0.1", True): (57.86609947134773, 0.9183383498988514, 68),
    ("dual0.5", True): (60.43560618967112, 0.9065673524889294, 68),
}


def _logits(b=3, v=1000):
    return torch.tensor([[((t * 7919 + r * 104729) % 1000) / 100.0 - 5.0 for t in range(v)] for r in range(b)])


def test_prf_uniforms_equal_vllm_vectors():
    assert vllm_uniform(vllm_philox_words(42, CTX, TOK)).tolist() == U42
    assert vllm_uniform(vllm_philox_words(2**64 - 1, torch.tensor([[1, 2, 3, 4, 5]]), TOK))[0].tolist() == U5_MAXKEY


def test_gumbel_choice_equals_vllm_vector():
    assert gumbel_choice(42, _logits(), CTX).tolist() == CHOICE


def test_subkeys_equal_vllm():
    assert (derive_watermark_key(42, b"key_a"), derive_watermark_key(42, b"key_b")) == (37150756557148556, 15826636237805488045)


@pytest.mark.parametrize("name,dedup", list(DETECTIONS))
def test_detectors_equal_vllm_vectors(name, dedup):
    scheme = VllmGumbel(key=42) if name == "gumbel" else VllmDualKeyGumbel(key=42, alpha=float(name[4:]))
    det = scheme.detector(VocabOnly(), fpr=0.01, ignore_repeated_ngrams=dedup).detect(IDS)
    score, p, n = DETECTIONS[(name, dedup)]
    assert det.n_scored == n
    assert det.statistic == pytest.approx(score, rel=1e-12)
    assert det.p_value == pytest.approx(p, rel=1e-9)


def test_first_row_and_repeated_context_brute_force():
    rng = np.random.default_rng(0)
    ids = torch.tensor(rng.integers(0, 3, 200))  # a 3-token vocabulary: many repeats
    ctx = completion_contexts(ids, 2)
    seen, want = set(), []
    for c in ctx.tolist():
        want.append(tuple(c) not in seen)
        seen.add(tuple(c))
    assert first_row(ctx).tolist() == want
    comp = ids[:50].unsqueeze(0)
    cur = completion_contexts(torch.cat([comp[0], torch.zeros(1, dtype=torch.long)]), 2)[-1:]
    brute = any(tuple(c) == tuple(cur[0].tolist()) for c in completion_contexts(comp[0], 2).tolist())
    assert bool(repeated_context(comp, cur, None)[0]) == brute
    assert not bool(repeated_context(comp, cur, 0 + 1)[0]) or tuple(completion_contexts(comp[0], 2)[-1].tolist()) == tuple(cur[0].tolist())


def _run(processor, steps, batch=2, vocab=49152, seed=0, prompt_len=5):
    """Sample ``steps`` tokens from random logits through ``processor`` (a stand-in LM)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g)
    for _ in range(steps):
        scores = torch.randn(batch, vocab, generator=g) * 3
        out = processor(ids, scores)
        nxt = torch.multinomial(out.softmax(-1), 1, generator=g)
        ids = torch.cat([ids, nxt], 1)
    return ids[:, prompt_len:]


@pytest.mark.parametrize("scheme", [VllmGumbel(key=42), VllmDualKeyGumbel(key=7, alpha=0.3), VllmSBW(key=9),
                                    VllmSBW(key=9, seeding="lefthash", gamma=0.25)])
def test_marked_detected_unmarked_not(scheme):
    torch.manual_seed(0)
    comp = _run(scheme.processor(VocabOnly()), 60)
    det = scheme.detector(VocabOnly(), fpr=1e-4)
    assert all(det.detect(row).decision for row in comp)
    null = [det.detect(torch.randint(0, 49152, (60,), generator=torch.Generator().manual_seed(s))).p_value for s in range(40)]
    assert sum(p <= 0.05 for p in null) <= 6  # calibrated: about 2 of 40 expected


def test_gumbel_processor_leaves_one_token_and_falls_back_on_repeats():
    s = VllmGumbel(key=1, context_width=1)
    proc = s.processor(VocabOnly())
    ids = torch.tensor([[5, 6, 7]])
    out = proc(ids, torch.randn(1, 49152))
    assert torch.isfinite(out).sum() == 1
    out = proc(torch.tensor([[5, 6, 7, 11]]), torch.randn(1, 49152))  # completion (11,): new context
    assert torch.isfinite(out).sum() == 1
    scores = torch.randn(1, 49152)
    out = proc(torch.tensor([[5, 6, 7, 11, 11]]), scores)  # context (11,) seen at position 1: ordinary sampling
    assert torch.equal(out, scores)
    assert torch.equal(s.processor(VocabOnly(), temperature=0)(ids, scores), scores)  # greedy is never marked


def test_gamma_null_is_exact():
    s = VllmGumbel(key=3)
    det = s.detector(VocabOnly(), min_tokens=1)
    p = [det.detect(torch.randint(0, 49152, (30,), generator=torch.Generator().manual_seed(i))).p_value for i in range(400)]
    assert abs(np.mean(np.array(p) <= 0.1) - 0.1) < 0.05  # uniform p-values under no mark
    closed = math.exp(-30.0) * sum(30.0**k / math.factorial(k) for k in range(30))  # Poisson-sum form of the tail
    assert gamma_pvalue(30.0, 30) == pytest.approx(closed, rel=1e-12)


def test_keys_and_configs_are_validated(monkeypatch):
    assert parse_vllm_key("42") == 42 and parse_vllm_key("0xff") == 255 and parse_vllm_key(2**64 - 1) == 2**64 - 1
    for bad in (-1, 2**64, "x", 1.5, True):
        with pytest.raises(InvalidKeyError, match="integer"):
            parse_vllm_key(bad)
    with pytest.raises(InvalidKeyError, match="wmkit hex key"):
        parse_vllm_key("00" * 32)
    monkeypatch.delenv("WMKIT_VLLM_KEY", raising=False)
    with pytest.raises(InvalidKeyError, match="no vLLM key"):
        load_vllm_key()
    monkeypatch.setenv("WMKIT_VLLM_KEY", "7")
    assert load_vllm_key() == 7
    s = vllm_config_to_scheme({"algorithm": "sbw", "key": 5, "sbw_scheme": "lefthash", "sbw_gamma": 0.25})
    assert (s.name, s.seeding, s.gamma, s.context_width) == ("vllm-sbw", "lefthash", 0.25, 1)
    assert "key" not in s.config()
    with pytest.raises(InputError, match="deduplicate_contexts"):
        VllmGumbel(key=1, deduplicate_contexts="all")
    with pytest.raises(InputError, match="context_width"):
        VllmGumbel(key=1, context_width=0)


# --- live parity with vLLM's code, from the wheel ---------------------------------------------

@pytest.fixture(scope="module")
def vllm():
    import vllm_reference

    return vllm_reference.required(vllm_reference.load)


def test_live_prf_and_choice_bit_exact(vllm):
    g = torch.Generator().manual_seed(5)
    for width in (1, 4, 6):
        key = int(torch.randint(0, 2**62, (1,), generator=g)) * 3
        ctx = torch.randint(-1, 262144, (8, width), generator=g)
        tok = torch.randint(0, 262144, (300,), generator=g)
        assert torch.equal(vllm.philox.PhiloxPRF(key).uniform(ctx, tok), vllm_uniform(vllm_philox_words(key, ctx, tok)))
        logits = torch.randn(8, 5000, generator=g) * 4
        want = vllm.gumbel.GumbelWatermarker(key, width)._sample_watermarked(logits, ctx).token_ids
        assert torch.equal(gumbel_choice(key, logits, ctx), want)


@pytest.mark.parametrize("dual", [False, True])
def test_vllm_detects_our_output_and_we_detect_vllms(vllm, dual):
    scheme = VllmDualKeyGumbel(key=1234, alpha=0.2) if dual else VllmGumbel(key=1234)
    theirs = (vllm.gumbel.DualKeyGumbelWatermarkDetector(1234, alpha=0.2) if dual
              else vllm.gumbel.GumbelWatermarkDetector(1234))
    ours = scheme.detector(VocabOnly(), fpr=0.01)
    torch.manual_seed(1)
    for row in _run(scheme.processor(VocabOnly()), 50):  # our processor -> vLLM's detector
        r = theirs.detect(row.tolist())
        assert r.is_watermarked and r.p_value < 1e-6
        d = ours.detect(row)
        assert (d.n_scored, d.statistic) == (r.num_scored_tokens, pytest.approx(r.score, rel=1e-12))
        assert d.p_value == pytest.approx(r.p_value, rel=1e-6, abs=1e-300)
    if dual:
        return
    wm = vllm.gumbel.GumbelWatermarker(1234)  # vLLM's sampler code -> our detector
    g = torch.Generator().manual_seed(2)
    out: list[int] = []
    for _ in range(50):
        ctx = torch.tensor([([-1] * 4 + out)[-4:]])
        out.append(int(wm._sample_watermarked(torch.randn(1, 49152, generator=g) * 3, ctx).token_ids[0]))
    d, r = ours.detect(out), theirs.detect(out)
    assert d.decision and r.is_watermarked and d.statistic == pytest.approx(r.score, rel=1e-12)


# --- SBW, vLLM main (vllm/v1/watermarking/sbw.py at d6d2f2c2): green flags of tokens 0..63 as bit masks
# (bit t = token t), recorded by running that file's sampler kernels and detector on the CPU.
SBW_KEY = 12345678901234567
SBW_CTX = {"selfhash": torch.tensor([[-1, -1, -1, -1], [1, 2, 3, 4], [49151, 0, 7, 262143]]),
           "lefthash": torch.tensor([[-1], [5], [49151]])}
SBW_SAMPLER = {"selfhash": [13812940422083988868, 17440973528933974549, 11428940827212227463],
               "lefthash": [9855500128304675277, 10274131198469577757, 6557241317039235013]}
SBW_MAIN_DETECTOR_LEFTHASH = [16115344787055461836, 18061244396811426280, 7409859756606523589]  # hashes the context
SBW_BIGKEY = [3602882485305762617, 6919939449204704258, 651652230163735296]  # key 2**64 - 5 (as int64), gamma 0.25


def _mask(flags):
    return sum(1 << t for t, g in enumerate(flags) if g)


@pytest.mark.parametrize("seeding", ["selfhash", "lefthash"])
def test_sbw_green_lists_equal_vllm_main_sampler(seeding):
    from wmkit.watermark.text.vllm_native import sbw_green

    got = sbw_green(SBW_KEY, SBW_CTX[seeding], torch.arange(64), seeding, 0.5)
    assert [_mask(row) for row in got.tolist()] == SBW_SAMPLER[seeding]
    # the processor adds delta exactly there; the detector scores the same flags
    scheme = VllmSBW(key=SBW_KEY, seeding=seeding)
    for r, ctx in enumerate(SBW_CTX[seeding]):
        flags = sbw_green(SBW_KEY, ctx.expand(64, -1), torch.arange(64).unsqueeze(-1), seeding, 0.5).squeeze(-1)
        assert _mask(flags.tolist()) == SBW_SAMPLER[seeding][r]
    assert scheme.context_width == SBW_CTX[seeding].shape[1]
    if seeding == "lefthash":  # vLLM main's detector disagrees with its own sampler here; wmkit follows the sampler
        assert SBW_MAIN_DETECTOR_LEFTHASH != SBW_SAMPLER["lefthash"]


def test_sbw_key_above_2_63_wraps_like_int64():
    from wmkit.watermark.text.vllm_native import sbw_green

    got = sbw_green(2**64 - 5, SBW_CTX["selfhash"], torch.arange(64), "selfhash", 0.25)
    assert [_mask(row) for row in got.tolist()] == SBW_BIGKEY
