"""Fingerprints of the real default model, through the CLI and over HTTP against `wm serve`.

The victim is SmolLM2-135M-Instruct; derived: itself in bfloat16 (and served over HTTP); unrelated:
the same architecture with fresh random weights; incompatible: a tiny model with another vocabulary.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import wm_server
from wmkit.fingerprint import ModelAccess, Signature, random_init_like, verify_fingerprint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def wm(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "wmkit.cli.main", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def signature(tmp_path_factory):
    path = tmp_path_factory.mktemp("sig") / "smollm2.safetensors"
    r = wm("fingerprint", "enroll", "-o", str(path))
    assert r.returncode == 0, r.stderr
    assert "hidden size 576" in r.stdout
    r = wm("fingerprint", "enroll", "-o", str(path))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    return path


@pytest.fixture(scope="module")
def server():
    with wm_server("serve", "--system-prompt", "You are Acme Assistant. Answer briefly.") as url:
        yield url


@pytest.mark.slow
def test_local_levels_flag_the_victim_and_its_bf16_copy_and_clear_an_unrelated_model(signature):
    from wmkit.models import load_lm

    sig = Signature.load(signature)
    lm, _ = load_lm()
    for level in ("logits", "logprobs"):
        assert verify_fingerprint(sig, ModelAccess(lm, level), queries=16).p_value < 1e-6
    assert verify_fingerprint(sig, ModelAccess(lm.to(torch.bfloat16), "logits"), queries=16).derived
    rep = verify_fingerprint(sig, ModelAccess(random_init_like(lm, 7), "logits"), queries=16)
    assert not rep.derived and min(rep.residuals) > 0.5


@pytest.mark.slow
def test_cli_verify_json(signature):
    r = wm("fingerprint", "verify", "--signature", str(signature), "--suspect", "/nonexistent", "--json")
    assert r.returncode == 2 and "no such model" in r.stderr
    from wmkit.models import default_lm_path

    r = wm("fingerprint", "verify", "--signature", str(signature), "--suspect", str(default_lm_path()), "--json",
           "--queries", "16")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["derived"] and out["p_value"] < 1e-6 and out["api_calls"] == 16


@pytest.mark.slow
def test_topk_and_top1_over_http_against_wm_serve(signature, server):
    r = wm("fingerprint", "verify", "--signature", str(signature), "--suspect", server, "--access", "topk",
           "--queries", "8", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["derived"], r.stderr
    assert out["api_calls"] == 8 * 38  # ceil((577 + 128 - 1) / 19) per vector
    r = wm("fingerprint", "verify", "--signature", str(signature), "--suspect", server, "--access", "logits")
    assert r.returncode == 2 and "use --access topk or top1" in r.stderr
    # the same model queried as a chat model: its template and system prompt change the prompts, not the output space
    r = wm("fingerprint", "verify", "--signature", str(signature), "--suspect", server, "--access", "topk", "--chat",
           "--queries", "8", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["derived"] and out["p_value"] < 1e-6 and out["residual_median"] < 1e-4, r.stderr


@pytest.mark.slow
def test_a_fine_tune_and_a_q4_0_round_trip_are_flagged_and_a_model_trained_from_scratch_is_cleared(signature):
    """Real derivatives of the default model, trained here (cached by benchmarks/fpzoo.py: the whole
    test took 355 s on 2 cores the first time): all weights fine-tuned on AG News for 40 steps at lr
    1e-4, every matrix through GGUF's Q4_0; and the same architecture trained from scratch for 40
    steps. Longer fine-tunes (100 to 3,000 steps, LoRA, merges) are benchmarks/fingerprint.py's zoo:
    a fresh machine's make test cannot afford them (100 steps each here took 23 minutes of a
    one-thread test worker, the longest item of make test)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fpzoo

    from wmkit.models import load_lm

    sig = Signature.load(signature)
    victim, tok = load_lm()
    fpzoo.train_run("ft-news-1e-4", [40], victim, tok)
    fpzoo.train_run("scratch1", [40], victim, tok)
    tau = sig.meta["calibration"]["tau"]
    for name, model in [("ft-news-1e-4-40", fpzoo.load_member("ft-news-1e-4-40")), ("q4_0", fpzoo.q4_0_round_trip(victim))]:
        rep = verify_fingerprint(sig, ModelAccess(model, "logits"), queries=32)
        assert rep.derived and rep.p_value < 1e-6 and rep.to_dict()["residual_median"] < tau / 1.5, (name, rep.to_dict())
    rep = verify_fingerprint(sig, ModelAccess(fpzoo.load_member("scratch1-40"), "logits"), queries=32)
    assert not rep.derived and rep.p_value == 1.0 and min(rep.residuals) > tau, rep.to_dict()
    # top-1 with logit bias, guided and sequential: each verdict within issue 37's 10,000 API calls
    from wmkit.fingerprint import LocalAPI, Top1Recovery
    from wmkit.fingerprint.verify import guide_for, verify_sequential

    for name, derived in (("ft-news-1e-4-40", True), ("scratch1-40", False)):
        rep = verify_sequential(sig, Top1Recovery(LocalAPI(fpzoo.load_member(name)), guide=guide_for(sig)))
        assert rep.derived == derived and rep.api_calls <= 10_000 and rep.queries == 4, (name, rep.to_dict())
