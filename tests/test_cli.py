"""The wm CLI: keygen, detect on good and bad input, exit codes, JSON output."""

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from helpers import marked_text
from wmkit.cli.main import app
from wmkit.keys import SecretKey, read_key_file
from wmkit.watermark.text import KGW

runner = CliRunner()


@pytest.fixture
def keyfile(tmp_path):
    path = tmp_path / "wm.key"
    assert runner.invoke(app, ["keygen", "-o", str(path)]).exit_code == 0
    return path


@pytest.fixture
def texts(tmp_path, keyfile, tokenizer):
    key = read_key_file(keyfile)
    marked = tmp_path / "marked.txt"
    marked.write_text(marked_text(KGW(key), tokenizer, 120, seed=1), encoding="utf-8")
    plain = tmp_path / "plain.txt"
    plain.write_text(marked_text(KGW(SecretKey.generate()), tokenizer, 120, seed=2), encoding="utf-8")
    return marked, plain


def test_keygen_writes_private_key_and_refuses_overwrite(tmp_path):
    path = tmp_path / "k"
    r = runner.invoke(app, ["keygen", "-o", str(path)])
    assert r.exit_code == 0 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(read_key_file(path).secret) == 32
    before = path.read_bytes()
    r = runner.invoke(app, ["keygen", "-o", str(path)])
    assert r.exit_code == 2 and "refusing to overwrite" in r.stderr and path.read_bytes() == before
    r = runner.invoke(app, ["keygen", "-o", str(tmp_path / "k2"), "--bits", "64"])
    assert r.exit_code == 2 and "128" in r.stderr


def test_detect_table_and_json(keyfile, texts, monkeypatch):
    marked, plain = texts
    r = runner.invoke(app, ["detect", str(marked), str(plain), "-k", str(keyfile), "--json"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["file"] for row in rows] == [str(marked), str(plain)]
    for row in rows:
        assert {"file", "scheme", "tokens_scored", "green_fraction", "z", "p_value", "watermarked"} <= set(row)
    assert rows[0]["watermarked"] and rows[0]["z"] > 10
    assert not rows[1]["watermarked"] and abs(rows[1]["z"]) < 4
    monkeypatch.chdir(marked.parent)  # short names: the table is not wrapped
    r = runner.invoke(app, ["detect", marked.name, plain.name, "-k", str(keyfile)])
    assert r.exit_code == 0
    # the table: each verdict on its file's row, with that row's z and token count
    line_of = {name: next(ln for ln in r.stdout.splitlines() if name in ln) for name in (marked.name, plain.name)}
    assert "not watermarked" not in line_of[marked.name] and "watermarked" in line_of[marked.name]
    assert "not watermarked" in line_of[plain.name]
    for name, row in zip((marked.name, plain.name), rows):
        assert f"{row['z']:.2f}" in line_of[name] and str(row["tokens_scored"]) in line_of[name]


def test_detect_from_stdin_env_key_and_highlight(keyfile, texts, monkeypatch):
    marked, _ = texts
    monkeypatch.setenv("WMKIT_KEY", read_key_file(keyfile).to_hex())
    r = runner.invoke(app, ["detect", "-", "--json", "--highlight"], input=marked.read_text())
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["watermarked"]


def test_detect_scheme_parameters_must_match(keyfile, texts):
    marked, _ = texts
    r = runner.invoke(app, ["detect", str(marked), "-k", str(keyfile), "--json", "--context-width", "2"])
    assert r.exit_code == 0 and not json.loads(r.stdout)["watermarked"]
    r = runner.invoke(app, ["detect", str(marked), "-k", str(keyfile), "--scheme", "unigram", "--json"])
    assert r.exit_code == 0 and not json.loads(r.stdout)["watermarked"]


def test_bad_inputs_are_one_line_errors_and_others_still_processed(tmp_path, keyfile, texts):
    marked, _ = texts
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "bin.dat").write_bytes(b"\x7fELF\x00\x01\x02")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    (tmp_path / "short.txt").write_text("Too short to score.")
    bad = {
        str(tmp_path / "missing.txt"): "no such file",
        str(tmp_path): "is a directory",
        str(tmp_path / "empty.txt"): "empty file",
        str(tmp_path / "bin.dat"): "binary file",
        str(tmp_path / "latin1.txt"): "not UTF-8",
        str(tmp_path / "short.txt"): "can be scored",
    }
    r = runner.invoke(app, ["detect", *bad, str(marked), "-k", str(keyfile), "--json"])
    assert r.exit_code == 2
    rows = {row["file"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert rows[str(marked)]["watermarked"]
    err_lines = r.stderr.strip().splitlines()
    assert len(err_lines) == len(bad)
    for path, msg in bad.items():
        assert msg in rows[path]["error"]
        assert any(line.startswith("wm: error: ") and path in line and msg in line for line in err_lines)


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--scheme", "nope"], "unknown scheme"),
        (["--gamma", "1.5"], "gamma"),
        (["--fpr", "0"], "fpr"),
        (["--scheme", "unigram", "--context-width", "3"], "--context-width does not apply to unigram"),
        (["--scheme", "ie", "-P", "tau=0.5"], "tau must be one of"),
        (["--scheme", "ie", "-P", "navigate"], "NAME=VALUE"),
        (["--scheme", "ie", "-P", "colour=1"], "unknown parameter"),
        (["--scheme", "ie", "-P", "tau=high"], "tau expects float"),
        (["--scheme", "ie", "-P", "navigate=maybe"], "navigate expects bool"),
        (["--scheme", "sweet", "-P", "entropy_threshold=25"], "entropy_threshold must be a number [0, 20)"),
        (["--scheme", "gumbel", "-P", "deduplicate_contexts=all"], "must be one of none, single_turn"),
        (["--scheme", "ie", "--windowed"], "--windowed is not available for ie"),
        (["--scheme", "vllm-gumbel"], "takes vLLM's integer key (--vllm-key N"),
        (["--scheme", "kgw", "--vllm-key", "42"], "--vllm-key applies to the vllm-* schemes"),
        (["--scheme", "kgw", "-P", "prf_version=1"], "PRF spec v1, which wmkit withdrew"),
        (["--device", "tpu"], "not available"),
    ],
)
def test_usage_errors_exit_2(keyfile, texts, args, msg):
    r = runner.invoke(app, ["detect", str(texts[0]), "-k", str(keyfile), *args])
    assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_key_is_an_error(texts, monkeypatch, tmp_path):
    monkeypatch.delenv("WMKIT_KEY", raising=False)
    r = runner.invoke(app, ["detect", str(texts[0])])
    assert r.exit_code == 2 and "no key given" in r.stderr
    r = runner.invoke(app, ["detect", str(texts[0]), "-k", str(tmp_path / "nokey")])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    (tmp_path / "short.key").write_text("abcd")
    r = runner.invoke(app, ["detect", str(texts[0]), "-k", str(tmp_path / "short.key")])
    assert r.exit_code == 2 and "at least 128" in r.stderr


def test_generate_refuses_existing_output_before_loading_model(tmp_path, keyfile):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    r = runner.invoke(app, ["generate", "--prompt", "Hi", "-k", str(keyfile), "-o", str(out)])
    assert r.exit_code == 2 and "refusing to overwrite" in r.stderr and out.read_text() == "precious\n"
    r = runner.invoke(app, ["generate", "-k", str(keyfile)])
    assert r.exit_code == 2 and "exactly one of" in r.stderr
    r = runner.invoke(app, ["generate", "--prompt", "Hi", "--model", str(tmp_path / "nomodel")])
    assert r.exit_code == 2


def _command_paths(group, prefix=()):
    """Every command and sub-command of the click group, found by walking it (not listed by hand)."""
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if getattr(cmd, "commands", None):
            yield from _command_paths(cmd, (*prefix, name))


def test_help_on_every_command():
    import typer

    paths = list(_command_paths(typer.main.get_command(app)))
    assert {("detect",), ("schemes",), ("tagger", "train"), ("fingerprint", "verify"), ("eaas", "verify")} <= set(paths)
    for cmd in [(), *paths]:
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.stdout, cmd
        assert r.stdout.count("\n") > 3, cmd  # a description and options, not a bare usage line


def test_schemes_lists_every_declared_parameter():
    from wmkit.params import describe
    from wmkit.watermark.text import SCHEMES

    r = runner.invoke(app, ["schemes", "--json"])
    assert r.exit_code == 0, r.stderr
    rows = {row["scheme"]: row for row in json.loads(r.stdout)}
    assert set(rows) == set(SCHEMES)
    for name, cls in SCHEMES.items():
        assert [p["name"] for p in rows[name]["parameters"]] == [d.name for d in describe(cls)]
    assert rows["ie"]["detector"] == {"needs_model": False, "windowed": False, "device": False, "streams": True,
                                         "reference_null": False}
    assert rows["sweet"]["detector"]["needs_model"] and rows["kgw"]["detector"]["windowed"]
    assert rows["vllm-sbw"]["key"].startswith("--vllm-key")
    r = runner.invoke(app, ["schemes", "nope"])
    assert r.exit_code == 2 and "unknown scheme" in r.stderr


def test_detect_windowed_locates_a_marked_passage(tmp_path, keyfile, tokenizer):
    key = read_key_file(keyfile)
    other = KGW(SecretKey.generate())
    human_a = marked_text(other, tokenizer, 300, seed=5)
    human_b = marked_text(other, tokenizer, 300, seed=6)
    passage = marked_text(KGW(key), tokenizer, 100, seed=7)
    doc = tmp_path / "doc.txt"
    doc.write_text(human_a + passage + human_b, encoding="utf-8")
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--json", "--windowed", "--fpr", "0.01"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["watermarked"] and row["window_tests"] > 1
    assert row["scheme"] == "kgw" and row["method"] == "kgw-window"  # the scheme's name, the method beside it
    start, end = row["window_tokens"]
    assert 290 <= start and end <= 410  # the passage is tokens 300..400
    words = row["passage"].split()
    assert len(words) >= 90 and sum(w in passage.split() for w in words) >= 0.9 * len(words)
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--windowed", "--highlight"])
    assert r.exit_code == 0 and "tokens" in r.stdout


def test_generate_jsonl_survives_unicode_line_separators(tmp_path, keyfile, monkeypatch):
    import wmkit.cli.generate as gen

    weird = "line\u2028sep\x85next\u2029para é"
    monkeypatch.setattr(gen, "load_lm", lambda model: (None, None))
    monkeypatch.setattr(gen, "generate_completions", lambda *a, **k: [
        {"prompt": "p", "completion": weird, "completion_ids": [1, 2]}])
    out = tmp_path / "o.jsonl"
    r = runner.invoke(app, ["generate", "--prompt", "p", "-k", str(keyfile), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and rows[0]["completion"] == weird


def _ie_marked_text(scheme, tokenizer, n, seed):
    """A text of whole-word tokens in which every token the shipped tagger calls high-entropy
    (at the scheme's tau) is green: what IE generation with an infinite delta would write."""
    import numpy as np
    import torch

    from helpers import green_ref
    from wmkit.watermark.text.ie.tagger import TAUS

    tagger = scheme.load_tagger(tokenizer)
    k = TAUS.index(scheme.tau)
    words = sorted(i for t, i in tokenizer.get_vocab().items()
                   if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower() and 3 <= len(t) <= 9)
    rng = np.random.default_rng(seed)
    ids = [words[0]]
    while len(ids) < n:
        t = words[int(rng.integers(len(words)))]
        with torch.no_grad():
            high = bool(tagger.predict_last(torch.tensor([ids]))[0, k] > 0)
        if not high or green_ref(scheme, ids, t):
            ids.append(t)
    return tokenizer.decode(ids)


def test_detect_ie_needs_only_key_tokenizer_and_shipped_tagger(tmp_path, keyfile, tokenizer):
    from wmkit.watermark.text import IE

    scheme = IE(read_key_file(keyfile), navigate=False)
    marked = tmp_path / "ie.txt"
    marked.write_text(_ie_marked_text(scheme, tokenizer, 150, seed=3), encoding="utf-8")
    plain = tmp_path / "plain.txt"
    plain.write_text(_ie_marked_text(IE(SecretKey.generate(), navigate=False), tokenizer, 150, seed=4), encoding="utf-8")
    r = runner.invoke(app, ["detect", str(marked), str(plain), "-k", str(keyfile), "-s", "ie", "-P", "navigate=false", "--json"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows[0]["watermarked"] and rows[0]["green_fraction"] == 1.0 and rows[0]["tau"] == 0.9
    assert not rows[1]["watermarked"] and abs(rows[1]["z"]) < 4
    r = runner.invoke(app, ["detect", str(marked), "-k", str(keyfile), "-s", "ie", "--json"])  # navigator on
    row = json.loads(r.stdout)
    assert r.exit_code == 0 and row["watermarked"] and row["p_value"] >= row["p_uncorrected"]


def test_tagger_train_refuses_before_work_and_show_prints_metrics(tmp_path):
    out = tmp_path / "t.safetensors"
    out.write_bytes(b"precious")
    r = runner.invoke(app, ["tagger", "train", "-o", str(out)])
    assert r.exit_code == 2 and "refusing to overwrite" in r.stderr and out.read_bytes() == b"precious"
    r = runner.invoke(app, ["tagger", "train", "-o", str(tmp_path / "new"), "--kind", "big"])
    assert r.exit_code == 2 and "--kind" in r.stderr
    r = runner.invoke(app, ["tagger", "show"])
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    held = info["metrics"]["held_out"]["taus"]["0.9"]
    assert held["accuracy"] > held["constant_accuracy"] and info["config"]["kind"] == "causal"


def _gumbel_text(scheme, tokenizer, n=80, seed=0):
    """A completion chosen by the scheme's processor over uniform logits on whole-word tokens."""
    import torch

    words = sorted(i for t, i in tokenizer.get_vocab().items()
                   if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower() and 3 <= len(t) <= 9)
    base = torch.full((1, len(tokenizer)), float("-inf"))
    base[0, words] = 0.0
    proc, ids = scheme.processor(tokenizer), torch.tensor([[words[seed]]])
    torch.manual_seed(seed)
    for _ in range(n):
        out = proc(ids, base.clone())
        ids = torch.cat([ids, torch.multinomial(out.softmax(-1), 1)], 1)
    return tokenizer.decode(ids[0, 1:].tolist())


@pytest.mark.parametrize("name", ["vllm-gumbel", "vllm-sbw"])
def test_detect_vllm_native_with_vllm_key(tmp_path, tokenizer, monkeypatch, name):
    from wmkit.watermark.text import make_scheme

    path = tmp_path / "vllm.txt"
    path.write_text(_gumbel_text(make_scheme(name, 42), tokenizer), encoding="utf-8")
    r = runner.invoke(app, ["detect", str(path), "-s", name, "--vllm-key", "42", "--json"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["scheme"] == name and row["watermarked"] and row["p_value"] < 1e-6
    monkeypatch.setenv("WMKIT_VLLM_KEY", "43")  # the wrong key: no mark
    row = json.loads(runner.invoke(app, ["detect", str(path), "-s", name, "--json"]).stdout)
    assert not row["watermarked"] and row["p_value"] > 1e-3
    for bad, msg in ((["--vllm-key", str(2**64)], "integer in [0, 2**64)"), (["--vllm-key", "ab" * 16], "wmkit hex key"),
                     (["--windowed"], "not available")):
        r = runner.invoke(app, ["detect", str(path), "-s", name, *bad])
        assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_detect_config_from_a_generation_record(tmp_path, keyfile, texts, monkeypatch):
    marked, _ = texts
    key = read_key_file(keyfile)
    record = tmp_path / "rec.jsonl"
    cfg = KGW(key).config()
    record.write_text(json.dumps({"completion": "x", "config": cfg, "key_id": key.fingerprint()}) + "\n"
                      + json.dumps({"completion": "y", "config": cfg}) + "\n", encoding="utf-8")
    r = runner.invoke(app, ["detect", str(marked), "-k", str(keyfile), "--config", str(record), "--json"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["watermarked"] and row["key_id"] == key.fingerprint() and "warning" not in r.stderr
    other = tmp_path / "other.key"
    assert runner.invoke(app, ["keygen", "-o", str(other)]).exit_code == 0
    r = runner.invoke(app, ["detect", str(marked), "-k", str(other), "--config", str(record), "--json"])
    assert r.exit_code == 0 and "generated with key id" in r.stderr and not json.loads(r.stdout)["watermarked"]
    plain_cfg = tmp_path / "cfg.json"  # a bare config, with another width: the config wins, not the defaults
    plain_cfg.write_text(json.dumps({**cfg, "context_width": 3}), encoding="utf-8")
    r = runner.invoke(app, ["detect", str(marked), "-k", str(keyfile), "--config", str(plain_cfg), "--json"])
    assert r.exit_code == 0 and not json.loads(r.stdout)["watermarked"]
    for args, msg in ((["--config", str(record), "--gamma", "0.5"], "drop --scheme"),
                      (["--config", str(tmp_path / "missing.json")], "no such file")):
        r = runner.invoke(app, ["detect", str(marked), "-k", str(keyfile), *args])
        assert r.exit_code == 2 and msg in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cfg, "prf_version": 1}), encoding="utf-8")
    r = runner.invoke(app, ["detect", str(marked), "-k", str(keyfile), "--config", str(bad)])
    assert r.exit_code == 2 and "PRF spec v1" in r.stderr


def test_detect_synthid_with_transformers_explicit_keys(tmp_path, keyfile, tokenizer):
    """transformers' keys on the command line (no key file), a config round trip, and the errors."""
    from wmkit.watermark.text import SynthID

    keys = "654,400,836,123,340,443,597,160,57"
    path = tmp_path / "synthid.txt"
    path.write_text(_gumbel_text(SynthID(keys, ngram_len=3), tokenizer, n=100), encoding="utf-8")
    args = ["detect", str(path), "-s", "synthid", "-P", f"keys={keys}", "-P", "ngram_len=3", "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["watermarked"] and row["p_value"] < 1e-6 and row["key_id"].startswith("synthid:")
    row = json.loads(runner.invoke(app, [*args[:-3], "-P", "ngram_len=4", "--json"]).stdout)
    assert not row["watermarked"]  # another n-gram length: no mark
    r = runner.invoke(app, [*args, "--windowed"])
    assert r.exit_code == 0 and json.loads(r.stdout)["watermarked"]
    for bad, msg in ((["-k", str(keyfile)], "not both"), (["-P", "depth=4"], "depth is 4 but 9 keys"),
                     (["-P", "num_leaves=1"], "num_leaves must be an integer [2, 16]")):
        r = runner.invoke(app, [*args, *bad])
        assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["detect", str(path), "-s", "synthid", "-k", str(keyfile), "--json"])
    assert r.exit_code == 0 and not json.loads(r.stdout)["watermarked"]  # a wmkit key derives other keys


def test_detect_synthid_prf_g_values(tmp_path, keyfile, tokenizer):
    """-P gvalues=prf with a key file: detected with the same option, not with transformers' g-values;
    with explicit keys it is refused in one line."""
    from wmkit.keys import read_key_file
    from wmkit.watermark.text import SynthID

    path = tmp_path / "prf.txt"
    path.write_text(_gumbel_text(SynthID(read_key_file(keyfile), gvalues="prf"), tokenizer, n=100), encoding="utf-8")
    args = ["detect", str(path), "-s", "synthid", "-k", str(keyfile), "--json"]
    r = runner.invoke(app, [*args, "-P", "gvalues=prf"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["watermarked"] and row["p_value"] < 1e-6
    assert not json.loads(runner.invoke(app, args).stdout)["watermarked"]
    r = runner.invoke(app, ["detect", str(path), "-s", "synthid", "-P", "keys=1,2,3", "-P", "gvalues=prf"])
    assert r.exit_code == 2 and "gvalues=prf needs a wmkit key file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_outputs_and_options_are_checked_before_any_model_loads(tmp_path, keyfile):
    """Each of these failed only after minutes of work, or with a traceback (reliability issue)."""
    nomodel = ["--model", str(tmp_path / "no-model")]  # loading it would fail with another message
    cases = [
        (["generate", "-p", "Hi", "-s", "none", "-o", str(tmp_path / "nosuchdir" / "out.jsonl"), *nomodel], "does not exist"),  # issue 39: not "is not a folder"
        (["generate", "-p", "Hi", "-s", "none", "-n", "1000000000", *nomodel], "--max-new-tokens must be in 1..8192"),
        (["generate", "-p", "Hi", "-s", "none", "--temperature", "nan", *nomodel], "--temperature must be a number"),
        (["generate", "-p", "Hi", "-s", "none", "--batch-size", "0", *nomodel], "--batch-size must be >= 1"),
        (["fingerprint", "enroll", str(tmp_path / "no-model"), "-o", str(tmp_path / "nosuchdir" / "s.safetensors")],
         "does not exist"),
        (["fingerprint", "verify", "--signature", str(tmp_path), "--suspect", "x", "--fpr", "0"], "--fpr"),
        (["fingerprint", "verify", "--signature", str(tmp_path), "--suspect", "x"], "is a folder"),
        (["fingerprint", "verify", "--signature", str(tmp_path), "--suspect", "x", "--access", "topk", "--top-k", "0"],
         "--top-k must be in 2..1000"),
        (["fingerprint", "verify", "--signature", str(tmp_path), "--suspect", "x", "--queries", "1"], "--queries must be at least 2"),
        (["evidence", "fingerprint", "--signature", str(tmp_path), "--suspect", "x", "--access", "topk", "--top-k", "1", "-o",
          str(tmp_path / "ev")], "--top-k must be in 2..1000"),
        (["eaas", "verify", "--suspect", "x", "-k", str(keyfile), "--fpr", "1.5"], "--fpr"),
        (["serve-embeddings", "-s", "espw"], "unknown embedding scheme 'espw'"),  # not "no key given"
        (["demo", "-s", "sweet", *nomodel], "the demo shows kgw or unigram"),
        (["keygen", "-o", "/proc/wm.key"], "cannot create /proc/wm.key"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr, r.exception)
        assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), args


def test_detect_utf16_duplicates_and_json_highlight(tmp_path, keyfile, texts):
    marked, _ = texts
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes(marked.read_text(encoding="utf-8").encode("utf-16"))  # with a byte-order mark
    r = runner.invoke(app, ["detect", str(marked), str(utf16), str(marked), "-k", str(keyfile), "--json", "--highlight"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]  # stdout: JSON lines only
    assert [row["file"] for row in rows] == [str(marked), str(utf16), str(marked)]
    assert rows[0]["p_value"] == rows[1]["p_value"] == rows[2]["p_value"] and rows[1]["watermarked"]
    assert str(marked) in r.stderr  # the highlighted text went to stderr
    r = runner.invoke(app, ["detect", str(marked), "-s", "ie", "-k", str(keyfile), "-P", f"tagger={tmp_path}"])
    assert r.exit_code == 2 and "is a folder" in r.stderr


@pytest.mark.parametrize("scheme", ["ie", "kgw", "gumbel", "synthid", "exp-edit"])
def test_a_file_of_invisible_characters_does_not_sink_the_batch(tmp_path, keyfile, texts, scheme):
    marked, _ = texts
    zw = tmp_path / "zw.txt"
    zw.write_text("\u200b\u200b\u00ad", encoding="utf-8")  # all removed by normalisation: no tokens
    r = runner.invoke(app, ["detect", str(marked), str(zw), "-s", scheme, "-k", str(keyfile), "--json"])
    assert r.exit_code == 2
    rows = {row["file"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert "p_value" in rows[str(marked)] and "0 token(s) can be scored" in rows[str(zw)]["error"]


def test_detect_refuses_an_input_over_the_size_limit_without_reading_it_all(tmp_path, keyfile, texts):
    marked, _ = texts
    big = tmp_path / "big.txt"
    big.write_text("word " * 300_000)  # 1.5 MB
    r = runner.invoke(app, ["detect", str(big), str(marked), "-k", str(keyfile), "--max-input-mb", "1", "--json"])
    assert r.exit_code == 2 and "larger than 1 MiB" in r.stderr
    rows = {row["file"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert rows[str(marked)]["watermarked"] and "error" in rows[str(big)]
    r = runner.invoke(app, ["detect", "/dev/zero", "-k", str(keyfile), "--max-input-mb", "1"])  # endless: refused
    assert r.exit_code == 2 and "/dev/zero: binary file" in r.stderr  # at its first block, not after reading it all
