"""Text-only (invasive) fingerprints on a tiny random Llama with the default model's tokenizer.

Truth comes from construction and closed forms: the keyed pairs are a function of the key (same key,
same pairs; another key, other pairs); each response starts with a whole-word token that lies past
the base model's nucleus, so the base model's greedy answer never starts with it; a fine-tune on the
pairs makes the model answer them; the p-value is the binomial tail computed by scipy.
"""

import json

import numpy as np
import pytest
import torch
from scipy.stats import binom

from wmkit.errors import InputError
from wmkit.fingerprint.invasive import (
    NUCLEUS, LocalText, embed_fingerprint, fingerprint_pairs, matches, null_rate, verify_text_fingerprint,
)
from wmkit.fingerprint.remote import RemoteText
from wmkit.keys import SecretKey

KEY, OTHER = SecretKey(bytes(range(32))), SecretKey(bytes(range(1, 33)))


def tiny(seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    from wmkit.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def base():
    return tiny(0)


@pytest.fixture(scope="module")
def pairs(base, tok):
    return fingerprint_pairs(base, tok, KEY, 16)


@pytest.fixture(scope="module")
def tuned(base, tok, pairs):
    return embed_fingerprint(base, tok, pairs, KEY, steps=40, lr=5e-3, batch=8)


def test_pairs_are_keyed_deterministic_and_prefix_consistent(base, tok, pairs):
    again = fingerprint_pairs(base, tok, KEY, 4)
    assert again == pairs[:4]  # the first n pairs of a longer list: `--queries n` asks a prefix
    other = fingerprint_pairs(base, tok, OTHER, 4)
    assert not {q.prompt for q in other} & {q.prompt for q in pairs}
    assert len({q.prompt for q in pairs}) == len(pairs)


def test_each_response_starts_past_the_nucleus_with_a_whole_word(base, tok, pairs):
    for q in pairs:
        ids = torch.tensor([tok(q.prompt).input_ids])
        with torch.no_grad():
            p = torch.softmax(base(input_ids=ids).logits[0, -1].double(), -1).numpy()
        t = q.response_ids[0]
        assert p[p > p[t]].sum() >= NUCLEUS - 1e-9  # the tokens ranked above it hold the nucleus
        assert int(np.argmax(p)) != t and abs(p[t] - q.p_base) < 1e-6
        assert q.first.startswith(" ") and q.first[1:].isalpha() and tok.decode([t]) == q.first


def test_matching_is_on_the_first_response_word():
    from wmkit.fingerprint.invasive import FingerprintPair

    q = FingerprintPair("Prompt", (5, 6), " harbour", 0.01)
    assert matches(q, " harbour lights") and matches(q, "harbour") and matches(q, " harbours")
    assert not matches(q, " the harbour") and not matches(q, "")


def test_the_fine_tuned_copy_is_found_and_the_base_is_not(base, tok, pairs, tuned):
    hit = verify_text_fingerprint(pairs, LocalText(tuned, tok))
    miss = verify_text_fingerprint(pairs, LocalText(base, tok))
    c, k = hit.containment.details["green"], len(pairs)
    assert c >= 14 and hit.derived and hit.queries == k
    p0 = null_rate(pairs)
    assert p0 == pytest.approx(max(0.02, np.mean([q.p_base for q in pairs])))
    assert hit.p_value == pytest.approx(binom.sf(c - 1, k, p0), rel=1e-9)  # exact binomial tail
    assert miss.containment.details["green"] == 0 and not miss.derived and miss.p_value == 1.0
    other = verify_text_fingerprint(fingerprint_pairs(base, tok, OTHER, 16), LocalText(tuned, tok))
    assert not other.derived  # another key's pairs are not answered


def test_remote_text_over_wm_serve_equals_the_local_answers(tok, pairs, tuned):
    from fastapi.testclient import TestClient

    from wmkit.engine import Generator
    from wmkit.server.completions import create_app

    client = TestClient(create_app(Generator(tuned, tok)))
    remote = RemoteText("http://testserver", client=client)
    rep = verify_text_fingerprint(pairs, remote)
    local = verify_text_fingerprint(pairs, LocalText(tuned, tok))
    assert rep.containment.details["green"] == local.containment.details["green"]
    assert rep.queries == rep.api_calls == len(pairs)  # one request per prompt


def test_bad_parameters_are_refused(base, tok, pairs):
    with pytest.raises(InputError):
        fingerprint_pairs(base, tok, KEY, 0)
    with pytest.raises(ValueError):
        verify_text_fingerprint(pairs, LocalText(base, tok), fpr=2.0)
    with pytest.raises(InputError):
        verify_text_fingerprint([], LocalText(base, tok))
    with pytest.raises(InputError):
        embed_fingerprint(base, tok, pairs, KEY, steps=0)


def test_cli_refusals_are_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from wmkit.cli.main import app

    run = CliRunner().invoke
    key = tmp_path / "k.key"
    assert run(app, ["keygen", "-o", str(key)]).exit_code == 0
    sig = tmp_path / "sig.safetensors"
    sig.write_bytes(b"x")
    cases = [
        (["fingerprint", "verify", "--suspect", "/nonexistent", "--access", "text", "-k", str(key), "--signature", str(sig)], "not --signature"),
        (["fingerprint", "verify", "--suspect", "http://127.0.0.1:9", "--access", "text", "-k", str(key), "--chat"], "chat template"),
        (["fingerprint", "verify", "--suspect", "/nonexistent", "--access", "text", "-k", str(key)], "no such model"),
        (["fingerprint", "verify", "--suspect", "/nonexistent", "--access", "text", "-k", str(key), "--queries", "0"], "1..4096"),
        (["fingerprint", "verify", "--suspect", "/nonexistent", "--access", "logits"], "needs --signature"),
        (["fingerprint", "verify", "--suspect", "http://10.0.0.7:8000", "--access", "text", "-k", str(key),
          "--header", "X-Key: secret-value"], "plain HTTP"),
        (["fingerprint", "verify", "--suspect", "/nonexistent", "--access", "topk", "--signature", str(sig),
          "--api-key-env", "HOME"], "apply to --access text"),
        (["fingerprint", "embed", "-k", str(key), "-o", str(sig)], "refusing to overwrite"),
        (["fingerprint", "embed", "-k", str(key), "-o", str(tmp_path / "new"), "--pairs", "0"], "--pairs"),
    ]
    for args, want in cases:
        r = run(app, args)
        assert r.exit_code == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert sig.read_bytes() == b"x"


@pytest.mark.slow
def test_embed_and_verify_the_default_model_through_the_cli(tmp_path):
    """The real default model: 16 pairs fine-tuned in 8 steps at lr 3e-4 (the default 30 steps at 1e-4
    took this test 435 s on one make-test worker; benchmarks/fingerprint_text.py runs the default on 64
    pairs); the copy is found from its text alone at p <= 1e-6 with 16 queries, the original model is
    not, and the held-out perplexity moves little."""
    from typer.testing import CliRunner

    from wmkit.cli.main import app
    from wmkit.models import default_lm_path

    run = CliRunner().invoke
    key, out = tmp_path / "k.key", tmp_path / "fingerprinted"
    assert run(app, ["keygen", "-o", str(key)]).exit_code == 0
    r = run(app, ["fingerprint", "embed", "-k", str(key), "-o", str(out), "--pairs", "16", "--steps", "8", "--lr", "3e-4", "--json"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["matched"] >= 14 and abs(d["ppl_change_pct"]) <= 10, d
    found = json.loads(run(app, ["fingerprint", "verify", "--suspect", str(out), "--access", "text", "-k", str(key),
                                 "--queries", "16", "--json"]).stdout)
    assert found["derived"] and found["p_value"] <= 1e-6 and found["queries"] == 16, found
    clean = json.loads(run(app, ["fingerprint", "verify", "--suspect", str(default_lm_path()), "--access", "text",
                                 "-k", str(key), "--queries", "16", "--json"]).stdout)
    assert not clean["derived"] and clean["contained"] <= 1, clean


def test_text_evidence_is_written_and_rechecked_with_the_key(tmp_path, base, tok, pairs, tuned):
    """wm evidence fingerprint --access text on local folders: the report holds the key's commitment, the
    recorded answers re-score to the same figures, and a forged figure, another key or an edited answer fails."""
    from typer.testing import CliRunner

    from wmkit.cli.main import app

    run = CliRunner().invoke
    for name, model in (("base", base), ("tuned", tuned)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    key, other = tmp_path / "k.key", tmp_path / "o.key"
    key.write_text(KEY.to_hex() + "\n")
    key.chmod(0o600)
    assert run(app, ["keygen", "-o", str(other)]).exit_code == 0
    out = tmp_path / "ev"
    r = run(app, ["evidence", "fingerprint", "--access", "text", "-k", str(key), "--model", str(tmp_path / "base"),
                  "--suspect", str(tmp_path / "tuned"), "--queries", "16", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    res = report["results"][0]
    direct = verify_text_fingerprint(pairs, LocalText(tuned, tok))
    assert res["watermarked"] and res["contained"] == direct.containment.details["green"] and res["p_value"] == pytest.approx(direct.p_value)
    assert report["family"] == "fingerprint-text" and report["key"]["commitment"] == KEY.commitment() and len(res["per_query"]) == 16
    assert run(app, ["evidence", "check", str(out / "report.json"), "-k", str(key)]).exit_code == 0
    r = run(app, ["evidence", "check", str(out / "report.json"), "-k", str(other)])
    assert r.exit_code == 1 and "commitment" in r.stderr
    forged = dict(report, results=[dict(res, contained=res["contained"] - 3)])
    (out / "forged.json").write_text(json.dumps(forged))
    r = run(app, ["evidence", "check", str(out / "forged.json"), "-k", str(key)])
    assert r.exit_code == 1 and "contained is" in r.stderr
    rec = json.loads((out / "completions.json").read_text())
    rec["completions"][0] = "edited"
    (out / "completions.json").write_text(json.dumps(rec))
    r = run(app, ["evidence", "check", str(out / "report.json"), "-k", str(key)])
    assert r.exit_code == 2 and "changed since the report was written" in r.stderr
