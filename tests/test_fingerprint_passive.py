"""Passive text-only fingerprints on tiny random Llamas with the default model's tokenizer.

Truth from second implementations and construction: a completion's score is the difference of two
full-sequence log-likelihoods that transformers' own loss computes; the unigram reference is a
closed form of token counts; the t-test equals scipy's ``ttest_1samp``; a model's own samples are
explained by it better than by an independent model, and an independent model's samples are not.
"""

import numpy as np
import pytest
import torch
from scipy.stats import ttest_1samp

from wmkit.errors import InputError
from wmkit.fingerprint.invasive import LocalText
from wmkit.fingerprint.passive import (
    Scorer, UnigramScorer, builtin_references, passive_prompts, passive_scores, verify_passive,
)
from wmkit.fingerprint.remote import RemoteText
from wmkit.keys import SecretKey
from wmkit.stats import mean_t_detection

KEY = SecretKey(bytes(range(32)))


def peaky(seed):
    """A tiny random Llama whose next-token distributions are sharp (its final norm scaled up)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.model.norm.weight.mul_(20.0)
    return m


@pytest.fixture(scope="module")
def tok():
    from wmkit.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def models():
    return {"protected": peaky(0), "reference": peaky(1), "other": peaky(2)}


@pytest.fixture(scope="module")
def prompts(models, tok):
    return passive_prompts(models["protected"], tok, KEY, 32)


def full_logprob(model, tok, text):
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return -float(loss) * (ids.shape[1] - 1)


def test_a_completion_is_scored_as_a_difference_of_sequence_likelihoods(models, tok):
    m = models["protected"]
    for prompt, completion in [("The cat sat on", " the mat today"), ("Numbers:", "123 456"), ("Hello wor", "ld, again")]:
        want = full_logprob(m, tok, prompt + completion) - full_logprob(m, tok, prompt)
        assert Scorer(m, tok).logprob(prompt, completion) == pytest.approx(want, abs=1e-3)


def test_the_unigram_reference_is_the_closed_form_of_counts(tok):
    texts = ["the cat", "the dog the end"]
    uni = UnigramScorer(tok, 49152, texts)
    counts = np.full(49152, 0.5)
    for t in texts:
        for i in tok(t, add_special_tokens=False).input_ids:
            counts[i] += 1
    ids = tok(" the cat", add_special_tokens=False).input_ids
    want = float(np.log(counts[ids] / counts.sum()).sum())
    assert uni.logprob("Look at", " the cat") == pytest.approx(want, rel=1e-9)
    flat = UnigramScorer(tok, 49152, uniform=True)
    assert flat.logprob("Look at", " the cat") == pytest.approx(-len(ids) * np.log(49152))


def test_the_t_test_is_scipys_one_sample_test():
    x = np.random.default_rng(0).normal(0.3, 1.0, 40)
    d = mean_t_detection("t", x, fpr=1e-3)
    ref = ttest_1samp(x, 0.0, alternative="greater")
    assert d.statistic == pytest.approx(ref.statistic) and d.p_value == pytest.approx(ref.pvalue)
    with pytest.raises(ValueError):
        mean_t_detection("t", [1.0], fpr=1e-3)


def test_the_t_test_holds_its_level_on_skewed_null_scores():
    # centred exponential scores (mean 0, the null's boundary): the 1% test rejects about 1% of the time
    g = np.random.default_rng(1)
    rejections = [mean_t_detection("t", g.exponential(1.0, 64) - 1.0, fpr=0.01).decision for _ in range(2000)]
    assert np.mean(rejections) < 0.02


def test_a_models_own_samples_are_derived_and_an_independent_models_are_not(models, tok, prompts):
    protected = Scorer(models["protected"], tok, "protected")
    refs = [Scorer(models["reference"], tok, "reference"), *builtin_references(models["protected"], tok)]
    own = verify_passive(protected, refs, prompts, LocalText(models["protected"], tok), max_tokens=12)
    assert own.derived and own.queries == own.api_calls == len(prompts)
    assert own.containment.details["mean"] > 0 and own.containment.details["references"] == ["reference", "uniform", "unigram"]
    for name in ("reference", "other"):  # "other" is held out: no reference describes it
        rep = verify_passive(protected, refs, prompts, LocalText(models[name], tok), max_tokens=12)
        assert not rep.derived and rep.p_value > 1e-2, (name, rep.containment.details)


def test_the_builtin_references_absorb_noise(models, tok, prompts):
    """A suspect sampling uniformly at random from the vocabulary: only the uniform reference saves the verdict."""
    protected = Scorer(models["protected"], tok)
    g = np.random.default_rng(3)
    noise = [tok.decode(g.integers(0, 49152, 12).tolist()) for _ in prompts]
    s = passive_scores(protected, builtin_references(models["protected"], tok), prompts, noise)
    assert s.mean() < 0


def test_remote_sampling_over_wm_serve(models, tok, prompts):
    from fastapi.testclient import TestClient

    from wmkit.engine import Generator
    from wmkit.server.completions import create_app

    client = TestClient(create_app(Generator(models["protected"], tok)))
    remote = RemoteText("http://testserver", client=client)
    protected = Scorer(models["protected"], tok)
    refs = [Scorer(models["reference"], tok, "reference"), *builtin_references(models["protected"], tok)]
    rep = verify_passive(protected, refs, prompts[:16], remote, max_tokens=12)
    assert rep.derived and rep.queries == rep.api_calls == 16


def test_bad_parameters_are_refused(models, tok, prompts):
    protected = Scorer(models["protected"], tok)
    with pytest.raises(InputError):
        passive_prompts(models["protected"], tok, KEY, 1)
    with pytest.raises(InputError):
        passive_scores(protected, [], prompts, prompts)
    with pytest.raises(InputError):
        passive_scores(protected, [protected], prompts, prompts[:-1])
    with pytest.raises(InputError):
        verify_passive(protected, [protected], prompts, LocalText(models["other"], tok), temperature=0.0)
    with pytest.raises(InputError, match="far more than it was asked"):  # a suspect that ignores max_tokens
        protected.logprob("Hello", " word" * 3000)


def test_cli_refusals_are_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from wmkit.cli.main import app

    run = CliRunner().invoke
    key = tmp_path / "k.key"
    assert run(app, ["keygen", "-o", str(key)]).exit_code == 0
    base = ["fingerprint", "verify", "--suspect", "/nonexistent", "-k", str(key)]
    cases = [
        (base + ["--access", "text", "--passive"], "at least one --reference"),
        (base + ["--access", "text", "--reference", "/x"], "applies to --passive"),
        (base + ["--access", "logits", "--passive"], "apply to --access text"),
        (base + ["--access", "text", "--passive", "--reference", "/x", "--temperature", "0"], "--temperature"),
        (base + ["--access", "text", "--passive", "--reference", "/x", "--queries", "1"], "2..4096"),
        (base + ["--access", "text", "--passive", "--reference", "/nonexistent-ref"], "no such reference"),
    ]
    for args, want in cases:
        r = run(app, args)
        assert r.exit_code == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_passive_text_evidence_is_written_and_rechecked(tmp_path, models, tok):
    import json

    from typer.testing import CliRunner

    from wmkit.cli.main import app

    run = CliRunner().invoke
    for name in ("protected", "reference"):
        models[name].save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    key = tmp_path / "k.key"
    key.write_text(KEY.to_hex() + "\n")
    key.chmod(0o600)
    out = tmp_path / "ev"
    args = ["evidence", "fingerprint", "--access", "text", "--passive", "-k", str(key), "--model", str(tmp_path / "protected"),
            "--reference", str(tmp_path / "reference"), "--suspect", str(tmp_path / "protected"), "--queries", "16", "-o", str(out)]
    r = run(app, args)
    assert r.exit_code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    res = report["results"][0]
    assert report["test"]["mode"] == "passive" and report["test"]["references"] == [str(tmp_path / "reference")]
    scores = np.asarray(res["per_query"])
    ref = ttest_1samp(scores, 0.0, alternative="greater")
    assert len(scores) == 16 and res["p_value"] == pytest.approx(ref.pvalue) and res["mean"] == pytest.approx(scores.mean())
    assert "per-query scores" in (out / "report.html").read_text()
    assert run(app, ["evidence", "check", str(out / "report.json"), "-k", str(key)]).exit_code == 0
    forged = dict(report, results=[dict(res, per_query=[s + 5.0 for s in res["per_query"]])])
    (out / "forged.json").write_text(json.dumps(forged))
    r = run(app, ["evidence", "check", str(out / "forged.json"), "-k", str(key)])
    assert r.exit_code == 1 and "per_query is" in r.stderr
    r = run(app, args[:-2] + ["-o", str(tmp_path / "ev2"), "--temperature", "0"])
    assert r.exit_code == 2 and "--temperature" in r.stderr and not (tmp_path / "ev2").exists()


def test_wm_fingerprint_verify_passive_prints_a_verdict_and_json(tmp_path, models, tok):
    import json

    from typer.testing import CliRunner

    from wmkit.cli.main import app

    run = CliRunner().invoke
    for name in ("protected", "reference", "other"):
        models[name].save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    key = tmp_path / "k.key"
    key.write_text(KEY.to_hex() + "\n")
    key.chmod(0o600)
    base = ["fingerprint", "verify", "--access", "text", "--passive", "-k", str(key), "--model", str(tmp_path / "protected"),
            "--reference", str(tmp_path / "reference"), "--queries", "16"]
    r = run(app, base + ["--suspect", str(tmp_path / "protected"), "--json"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["derived"] and d["queries"] == d["api_calls"] == 16 and d["references"] == ["reference", "uniform", "unigram"]
    r = run(app, base + ["--suspect", str(tmp_path / "other")])
    assert r.exit_code == 0 and "not derived" in r.stdout and "mean log-likelihood ratio" in r.stdout, r.stdout
