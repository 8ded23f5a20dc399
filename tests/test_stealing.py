"""Watermark stealing (the learning attacker of arXiv 2402.19361) and spoof detection (arXiv 2410.02693)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import marked_text, tiny_llama
from wmkit.cli.main import app
from wmkit.forensics.pairs import pair_scorer
from wmkit.forensics.spoof import SpoofTest, coin_counts
from wmkit.forensics.stealing import StolenMark
from wmkit.keys import SecretKey, write_key_file
from wmkit.stats import ks_2samp
from wmkit.watermark.text.kgw import KGW
from wmkit.watermark.text.stealing import sample_streams

runner = CliRunner()
KEY = SecretKey(bytes(range(32)))


def _zipf(v: int = 2000) -> torch.Tensor:
    logp = torch.log(1.0 / torch.arange(1, v + 1).float() ** 1.1)
    return logp - torch.logsumexp(logp, 0)


def test_boosts_are_the_papers_clipped_mass_ratios():
    st = StolenMark(h=1, vocab_size=10)
    st.observe([[3, 5]] * 4 + [[3, 6]] * 2 + [[3, 7]] + [[3, 9]] * 2, marked=True)
    st.observe([[3, 5]] + [[3, 6]] * 2 + [[3, 8]] * 5, marked=False)
    got = dict(zip(*[t.tolist() for t in st.boost(("full", 3))]))
    # marked mass after 3: 5: 4/9, 6: 2/9, 7: 1/9 (under min_count 2: no boost), 9: 2/9 (never in the base)
    # base mass: 5: 1/8, 6: 2/8 -> ratios 3.56 (clipped to 2), 0.89 (< 1: none); 9: above every ratio, clipped
    assert set(got) == {5, 9}
    assert got[5] == pytest.approx(1.0) and got[9] == pytest.approx(1.0)
    st.observe([[3, 6]] * 6, marked=True)  # marked after 3: 5: 4/15, 6: 8/15
    st.observe([[3, 5]], marked=False)  # base after 3: 5: 2/9, 6: 2/9 -> ratios 1.2 (kept, halved by the clip) and 2.4
    got = dict(zip(*[t.tolist() for t in st.boost(("full", 3))]))
    assert got[6] == pytest.approx(1.0) and got[5] == pytest.approx((4 / 15) / (2 / 9) / 2)
    # the views' weighted mean: h = 1 has the full view (weight 2) and the empty view (0.5)
    b = st.boosts([0, 3])
    e_ids, e_vals = st.boost(("empty",))
    empty = torch.zeros(10).index_add_(0, e_ids, e_vals)
    full = torch.zeros(10).index_add_(0, *st.boost(("full", 3)))
    assert torch.allclose(b, (2 * full + 0.5 * empty) / 2.5)


def test_spoofer_repetition_penalty_finds_the_repeating_tokens():
    from wmkit.forensics.stealing import repeats

    assert repeats([1, 2, 3, 1, 2, 4, 1, 2], 2) == {3, 4} and repeats([1, 2, 1], 1) == {2} and repeats([5], 1) == set()
    st = StolenMark(h=1, vocab_size=6)
    proc = st.steering(1.0).processor()
    scores = torch.tensor([[2.0, -2.0, 1.0, 1.0, 1.0, 1.0]])
    out = proc(torch.tensor([[0, 1, 0]]), scores)  # after 0 came 1 before: token 1 penalised (negative: times 1.6)
    assert out[0, 1] == pytest.approx(-3.2) and out[0, 0] == 2.0
    out = proc(torch.tensor([[1, 0, 1]]), scores)  # after 1 came 0 before: token 0 penalised (positive: / 1.6)
    assert out[0, 0] == pytest.approx(1.25)


def test_steering_reaches_the_generation_engine(tokenizer):
    from wmkit.engine import generate_completions

    st = StolenMark(h=0, vocab_size=len(tokenizer))
    target = tokenizer(" apple", add_special_tokens=False)["input_ids"][0]
    st.observe([[target] * 50], marked=True)
    st.observe([list(range(100, 150))], marked=False)
    lm = tiny_llama(len(tokenizer))
    spoof = generate_completions(lm, tokenizer, ["Hello"], st.steering(60.0), max_new_tokens=12, seed=0)[0]["completion_ids"]
    assert spoof == [target] * 12
    plain = [r["completion_ids"] for r in generate_completions(lm, tokenizer, ["Hello"] * 4, None, max_new_tokens=12, seed=0)]
    learned = StolenMark(h=0, vocab_size=len(tokenizer))  # the attacker takes what the model wrote as green ...
    learned.observe(plain, marked=True)
    learned.observe([list(range(100, 150))], marked=False)
    scrub = generate_completions(lm, tokenizer, ["Hello"] * 4, learned.steering(-60.0), max_new_tokens=12, seed=0)
    assert not set(sum(plain, [])) & set(sum((r["completion_ids"] for r in scrub), []))  # ... and steers off it


def test_spoof_statistic_is_standard_normal_on_unmarked_text():
    """Colour and learnability are independent on text the key never touched: over keys, z ~ N(0, 1).
    (Under one key the common coins keep their colours in every text, so its z's share a shift: what
    the reprompting test's reference removes.)"""
    g = torch.Generator().manual_seed(5)
    logp = _zipf()
    counts = coin_counts(pair_scorer(KGW(KEY, context_width=1)), sample_streams(logp, 100, 200, g))  # key-free n-grams
    texts = sample_streams(logp, 300, 200, g)
    z = np.array([SpoofTest(pair_scorer(KGW(SecretKey(bytes([i % 256, i // 256]) * 16), context_width=1)), counts)
                  .test(x)["z_spoof"] for i, x in enumerate(texts)])
    assert abs(z.mean()) < 0.2 and 0.85 < z.std() < 1.15
    assert ks_2samp(z, np.random.default_rng(0).standard_normal(20000))[1] > 0.01


def test_spoofs_from_the_learning_attacker_are_flagged_and_genuine_text_is_not():
    """Simulated LM (Zipf tokens), KGW h=1: the attacker learns from 40k marked tokens and spoofs;
    the reprompting test flags its spoofs and not genuine text (reference: other genuine texts)."""
    g = torch.Generator().manual_seed(0)
    logp, scheme = _zipf(), KGW(KEY, context_width=1)
    st = StolenMark(1, logp.shape[0])
    st.observe(sample_streams(logp, 200, 200, g, scheme=scheme).tolist(), marked=True)
    st.observe(sample_streams(logp, 200, 200, g).tolist(), marked=False)
    scorer = pair_scorer(scheme)
    test = SpoofTest(scorer, coin_counts(scorer, sample_streams(logp, 200, 200, g)))
    genuine = list(sample_streams(logp, 30, 200, g, scheme=scheme))
    spoofs = list(sample_streams(logp, 16, 200, g, boost=st, boost_delta=4.0))
    det = scheme.detector(type("Vocab", (), {"__len__": lambda self: 2000})(), fpr=1e-4, min_tokens=1)
    assert np.mean([det.detect(s).decision for s in spoofs]) >= 0.9  # the spoof carries the mark
    ref, tested = genuine[:14], genuine[14:]
    p_gen = [test.test(x, ref)["p_spoof"] for x in tested]
    p_spoof = [test.test(x, ref)["p_spoof"] for x in spoofs]
    assert sum(p <= 1e-2 for p in p_gen) <= 1
    assert np.mean([p <= 1e-2 for p in p_spoof]) >= 0.75
    assert np.median([test.test(x)["z_spoof"] for x in spoofs]) > np.median([test.test(x)["z_spoof"] for x in tested]) + 2


def test_detect_forensics_cli(tmp_path, tokenizer):
    write_key_file(tmp_path / "k.key", KEY)
    scheme = KGW(KEY, context_width=1)
    (tmp_path / "t.txt").write_text(marked_text(scheme, tokenizer, n=150))
    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"completion": marked_text(scheme, tokenizer, n=150, seed=s)}) + "\n" for s in (1, 2)))
    base = ["detect", str(tmp_path / "t.txt"), "-k", str(tmp_path / "k.key"), "--json"]
    r = runner.invoke(app, [*base, "--forensics"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout.splitlines()[-1])
    assert row["verdict"] == "watermarked" and row["spoof_test"] == "standard" and 0 <= row["p_spoof"] <= 1
    assert row["spoof_coins"] >= 100
    r = runner.invoke(app, [*base, "--forensics-reference", str(ref)])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout.splitlines()[-1])
    assert row["spoof_test"] == "reprompting" and row["reference_coins"] >= 200 and 0 <= row["p_spoof"] <= 1
    for extra, why in ((["-s", "exp-edit", "--forensics"], "--forensics covers"),
                       (["--forensics", "--windowed"], "--forensics tests whole texts"),
                       (["--forensics-reference", str(tmp_path / "missing.jsonl")], "missing")):
        r = runner.invoke(app, [*base, *extra])
        assert r.exit_code == 2 and why in r.output, r.output


def test_evidence_text_reports_and_rechecks_p_spoof(tmp_path, tokenizer):
    write_key_file(tmp_path / "k.key", KEY)
    (tmp_path / "t.txt").write_text(marked_text(KGW(KEY, context_width=1), tokenizer, n=150))
    r = runner.invoke(app, ["evidence", "text", str(tmp_path / "t.txt"), "-k", str(tmp_path / "k.key"), "-o", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    spoof = report["results"][0]["spoof"]
    assert spoof["spoof_test"] == "standard" and 0 <= spoof["p_spoof"] <= 1 and spoof["spoof_coins"] >= 100
    assert "spoof test" in (tmp_path / "ev" / "report.html").read_text()
    check = ["evidence", "check", str(tmp_path / "ev" / "report.json"), "-k", str(tmp_path / "k.key")]
    assert runner.invoke(app, check).exit_code == 0
    report["results"][0]["spoof"]["p_spoof"] = 1e-9  # a report that claims a spoof the text does not show
    (tmp_path / "ev" / "report.json").write_text(json.dumps(report))
    r = runner.invoke(app, check)
    assert r.exit_code == 1 and "spoof" in r.output, r.output
