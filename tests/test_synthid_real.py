"""SynthID on the real default model: wmkit's processor equals transformers' on SmolLM2's own
steps, and text that transformers' own SynthID config generates is found by wmkit's detector."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor

from wmkit.watermark.text import SynthID

pytestmark = pytest.mark.slow
KEYS = [654, 400, 836, 123, 340, 443, 597, 160, 57, 29, 590, 639, 13, 715, 468, 990, 966, 226, 324, 585,
        118, 504, 421, 521, 129, 669, 732, 225, 90, 960]  # 30 layers, as the SynthID paper
FIXTURE = Path(__file__).parent / "data" / "synthid_transformers_smollm2.json"
PROMPTS = [ln for ln in (Path(__file__).parent / "data" / "prompts.txt").read_text().splitlines() if ln.strip()][:12]


def test_scores_equal_transformers_on_smollm2_steps(default_lm):
    lm, tok = default_lm
    scheme = SynthID(tuple(KEYS), ngram_len=5)
    theirs = SynthIDTextWatermarkLogitsProcessor(ngram_len=5, keys=KEYS, sampling_table_size=2**16, sampling_table_seed=0,
                                                 context_history_size=1024, device=torch.device("cpu"))
    ours = scheme.processor(tok)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    enc = tok(PROMPTS[:3], return_tensors="pt", padding=True)
    ids, mask = enc.input_ids, enc.attention_mask
    torch.manual_seed(0)
    with torch.no_grad():
        for step in range(12):
            logits = lm(input_ids=ids, attention_mask=mask).logits[:, -1].float()
            want, got = theirs(ids, logits.clone()), ours(ids, logits.clone())
            assert torch.equal(got, want), step
            nxt = torch.multinomial(torch.softmax(want, -1), 1)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)


@pytest.fixture(scope="module")
def completions():
    """12 prompts x 200 tokens that transformers' own SynthID config generated on SmolLM2 (top-k 50, T = 1),
    and the same model's unmarked samples: committed by scripts/synthid_fixture.py, because transformers'
    processor takes minutes on one CPU thread; the per-step equality test above stays live."""
    data = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert data["keys"] == KEYS and data["ngram_len"] == 5 and data["new_tokens"] == 200
    assert len(data["marked"]) == len(data["plain"]) == 12
    return data["marked"], data["plain"]


@pytest.mark.parametrize("score", ["weighted-mean", "mean"])
def test_text_from_transformers_synthid_is_detected(default_lm, completions, score):
    _, tok = default_lm
    marked, plain = completions
    det = SynthID(tuple(KEYS), ngram_len=5, score=score).detector(tok, fpr=1e-2)
    found = [d for d in det.detect_many(marked)]
    assert all(not isinstance(d, Exception) for d in found)
    tpr = float(np.mean([d.decision for d in found]))
    fp = [d for d in det.detect_many(plain) if not isinstance(d, Exception)]
    # measured (SmolLM2-135M, top-k 50, T = 1, 12 prompts x 200 tokens): see the closing note of the synthid issue
    assert tpr >= 0.9, [round(d.p_value, 5) for d in found]
    assert len(fp) >= 10 and sum(d.decision for d in fp) <= 1
    print(score, "tpr", tpr, "marked p", [f"{d.p_value:.1e}" for d in found], "unmarked p", [f"{d.p_value:.2f}" for d in fp])


def test_wm_synthid_train_then_detect_with_the_bayesian_detector(tmp_path, default_lm):
    """The CLI trains transformers' Bayesian detector on the real model and detects with it."""
    import json as _json

    from typer.testing import CliRunner

    from wmkit.cli.main import app
    from wmkit.engine import generate_completions

    keys = ",".join(map(str, KEYS[:12]))
    out = tmp_path / "bayes.safetensors"
    r = CliRunner().invoke(app, ["synthid", "train", "-P", f"keys={keys}", "-o", str(out), "--texts", "24",
                                 "--tokens", "80", "--epochs", "150"])
    assert r.exit_code == 0, r.stderr
    report = _json.loads(r.stdout)
    assert report["auroc"] >= 0.9, report
    lm, tok = default_lm
    marked = generate_completions(lm, tok, PROMPTS[:4], SynthID(keys), max_new_tokens=120, min_new_tokens=120, seed=9)
    files = []
    for i, m in enumerate(marked):
        files.append(tmp_path / f"m{i}.txt")
        files[-1].write_text(m["completion"], encoding="utf-8")
    args = ["detect", *map(str, files), "-s", "synthid", "-P", f"keys={keys}", "-P", "score=bayesian", "-P",
            f"weights={out}", "--json", "--fpr", "0.01"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.stderr
    rows = [_json.loads(x) for x in r.stdout.splitlines()]
    assert sum(row["watermarked"] for row in rows) >= 3 and all(row["method"] == "synthid-bayesian" for row in rows)
    r = CliRunner().invoke(app, ["detect", str(files[0]), "-s", "synthid", "-P", "keys=1,2,3,4,5,6,7,8,9,10,11,12",
                                 "-P", "score=bayesian", "-P", f"weights={out}"])
    assert r.exit_code == 2 and "trained for key id" in r.stderr


def test_prf_g_values_mark_real_text_that_the_transformers_g_values_do_not_see(default_lm):
    """gvalues=prf through wmkit's generation on SmolLM2 (4 prompts x 120 tokens): every completion
    found at FPR 1e-3 with the same option; the transformers-hash detector of the same key sees none."""
    from wmkit.keys import SecretKey
    from wmkit.engine import generate_completions

    lm, tok = default_lm
    key = SecretKey(bytes(range(32)))
    scheme = SynthID(key, gvalues="prf")
    rows = generate_completions(lm, tok, PROMPTS[:4], scheme, max_new_tokens=120, min_new_tokens=120, seed=3, batch_size=4)
    texts = [r["completion"] for r in rows]
    hits = scheme.detector(tok, fpr=1e-3).detect_many(texts)
    assert all(d.decision for d in hits), [d.p_value for d in hits]
    assert not any(d.decision for d in SynthID(key).detector(tok, fpr=1e-3).detect_many(texts))
