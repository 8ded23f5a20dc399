"""Issue 39's rows that this change fixes: one line and exit 2, checked before anything is written."""

import json
import os
from importlib.metadata import entry_points

import pytest
from typer.testing import CliRunner

from wmkit.cli.main import app
from wmkit.keys import SecretKey, write_key_file

runner = CliRunner()


@pytest.mark.parametrize("target", ["", ".", "/"])
def test_keygen_to_a_folder_or_nothing_is_one_line(target, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["keygen", "-o", target])
    assert r.exit_code == 2 and "expected the path of a new key file" in r.output and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_a_missing_folder_is_said_to_be_missing(tmp_path):
    r = runner.invoke(app, ["keygen", "-o", str(tmp_path / "nope" / "k")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_scan_checks_fpr_before_making_its_output(tmp_path, monkeypatch):
    monkeypatch.setenv("WMKIT_KEY", "ab" * 32)
    (tmp_path / "a.txt").write_text("hello world")
    for args in (["--fpr", "0"], ["--min-tokens", "0"]):
        r = runner.invoke(app, ["scan", str(tmp_path / "a.txt"), "-o", str(tmp_path / "out"), *args])
        assert r.exit_code == 2 and not (tmp_path / "out").exists(), r.output


def test_config_records_of_two_schemes_are_refused(tmp_path, key):
    keyfile = write_key_file(tmp_path / "wm.key", key)
    recs = [{"config": {"scheme": "kgw", "gamma": 0.25}, "key_id": key.fingerprint(), "completion": "a"},
            {"config": {"scheme": "gumbel"}, "key_id": key.fingerprint(), "completion": "b"}]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "t.txt").write_text("some words " * 30)
    r = runner.invoke(app, ["detect", str(tmp_path / "t.txt"), "--config", str(tmp_path / "mixed.jsonl"), "-k", str(keyfile)])
    assert r.exit_code == 2 and "2 different configurations" in r.output
    (tmp_path / "one.jsonl").write_text(json.dumps(recs[0]) + "\n" + json.dumps({**recs[0], "completion": "c"}) + "\n")
    r = runner.invoke(app, ["detect", str(tmp_path / "t.txt"), "--config", str(tmp_path / "one.jsonl"), "-k", str(keyfile)])
    assert "different configurations" not in r.output


def test_version_short_help_and_the_wmkit_command():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("wmkit ")
    assert runner.invoke(app, ["detect", "-h"]).exit_code == 0
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("wmkit") == scripts.get("wm") == "wmkit.cli.main:main"


def test_two_key_lines_are_not_one_key(tmp_path):
    p = tmp_path / "two.key"
    p.write_text(SecretKey.generate().to_hex() + "\n" + SecretKey.generate().to_hex() + "\n")
    p.chmod(0o600)
    (tmp_path / "t.txt").write_text("some words " * 30)
    r = runner.invoke(app, ["detect", str(tmp_path / "t.txt"), "-k", str(p)])
    assert r.exit_code == 2 and "more than one key line" in r.output


# ---- the per-key null by default, named wherever a verdict is shown ----

from pathlib import Path  # noqa: E402


from helpers import agnews_jsonl, marked_text  # noqa: E402
from wmkit.evidence import check_report  # noqa: E402
from wmkit.stats import floor_note, verdict  # noqa: E402
from wmkit.watermark.text import KGW, SCHEMES  # noqa: E402


def _keyfile(tmp_path, key):
    return write_key_file(tmp_path / "wm.key", key)


def _rows(r):
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


def test_the_reference_null_is_the_default_and_every_row_names_it(tmp_path, key, tokenizer):
    keyfile = _keyfile(tmp_path, key)
    doc = tmp_path / "m.txt"
    text = marked_text(KGW(key), tokenizer, 80, seed=2)
    doc.write_text(text)
    (row,) = _rows(runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--json"]))
    want = KGW(key).detector(tokenizer, null="reference").detect(text)
    assert row["null"] == "reference" and row["p_value"] == want.p_value and row["key_id"] == key.fingerprint()
    assert row["null_rate"] == want.details["gamma"] >= 0.25
    (plain,) = _rows(runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--json", "--null", "gamma"]))
    assert plain["null"] == "gamma" and plain["p_value"] == KGW(key).detector(tokenizer).detect(text).p_value
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile)])
    assert "null: reference" in r.stdout and f"key id {key.fingerprint()}" in r.stdout
    (g,) = _rows(runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--json", "-s", "gumbel"]))
    assert g["null"] == "exact"
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "-s", "gumbel", "--null", "gamma"])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "green-list" in r.stderr


def test_an_evidence_report_records_its_null_and_an_edited_null_fails_the_check(tmp_path, key, tokenizer):
    keyfile = _keyfile(tmp_path, key)
    doc = tmp_path / "m.txt"
    doc.write_text(marked_text(KGW(key), tokenizer, 80, seed=3))
    r = runner.invoke(app, ["evidence", "text", str(doc), "-k", str(keyfile), "-o", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["null"] == "reference" and "--null" in report["command"]
    assert check_report(tmp_path / "ev" / "report.json", key, lambda f, c, k: SCHEMES[c["scheme"]].from_config(
        {x: v for x, v in c.items() if x != "scheme"}, k), lambda name: tokenizer) == []
    report["null"] = "gamma"  # the same figures claimed under the plain test: recomputed, they differ
    (tmp_path / "ev" / "report.json").write_text(json.dumps(report))
    problems = check_report(tmp_path / "ev" / "report.json", key, lambda f, c, k: SCHEMES[c["scheme"]].from_config(
        {x: v for x, v in c.items() if x != "scheme"}, k), lambda name: tokenizer)
    assert any("p_value" in p for p in problems)


# ---- one verdict rule: undecided when the p-value cannot reach the FPR ----

def test_the_verdict_rule():
    assert verdict(1e-5, 1e-4) == "watermarked" and verdict(0.2, 1e-4) == "not watermarked"
    assert verdict(0.01, 1e-4, p_floor=0.01) == "undecided" and verdict(0.01, 0.05, p_floor=0.01) == "watermarked"
    assert verdict(0.5, 0.05, p_floor=0.01) == "not watermarked"
    assert "0.01" in floor_note(0.01, 1e-4, "x") and "0.0001" in floor_note(0.01, 1e-4, "x")


def test_exp_edit_below_its_resample_floor_is_undecided(tmp_path, key):
    keyfile = _keyfile(tmp_path, key)
    doc = tmp_path / "t.txt"
    doc.write_text("The committee met on Tuesday to discuss the budget for the coming year and agreed on most points. " * 2)
    (row,) = _rows(runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "-s", "exp-edit", "--json"]))
    assert row["verdict"] == "undecided" and row["watermarked"] is False  # 99 resamples: p >= 0.01 > 1e-4
    assert "0.01" in row["note"] and "n_resamples" in row["note"]
    (row,) = _rows(runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "-s", "exp-edit", "--json", "--fpr", "0.05"]))
    assert row["verdict"] in ("watermarked", "not watermarked") and "note" not in row


def test_a_small_calibration_bucket_gives_the_same_undecided_verdict_in_both_modes(tmp_path, key, tokenizer):
    keyfile = _keyfile(tmp_path, key)
    corpus = agnews_jsonl(tmp_path / "human.jsonl", 150)
    cal = tmp_path / "cal.json"
    assert runner.invoke(app, ["calibrate", str(corpus), "-k", str(keyfile), "-o", str(cal)]).exit_code == 0
    (tmp_path / "profiles.json").write_text(json.dumps({"profiles": [{"name": "p", "config": {"scheme": "kgw"},
                                                                      "key": {"file": str(keyfile)}}]}))
    pcal = tmp_path / "pcal.json"
    r = runner.invoke(app, ["calibrate", str(corpus), "--profiles", str(tmp_path / "profiles.json"), "-o", str(pcal)])
    assert r.exit_code == 0, r.output
    doc = tmp_path / "m.txt"
    doc.write_text(marked_text(KGW(key), tokenizer, 100, seed=4))  # p far below 1e-4; the bucket's floor is not
    (one,) = _rows(runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--calibration", str(cal), "--json"]))
    (many,) = _rows(runner.invoke(app, ["detect", str(doc), "--profiles", str(tmp_path / "profiles.json"),
                                        "--calibration", str(pcal), "--json"]))
    assert one["p_value"] < 1e-10 and one["verdict"] == many["verdict"] == "undecided"
    assert "calibration bucket of" in one["note"] and one["null"] == many["null"] == "reference"
    for row in (one, many):
        assert row["watermarked"] is False
    docs = json.loads(cal.read_text())["buckets"][one["calibration_bucket"]]["docs"]
    assert one["note"].startswith(f"undecided: a calibration bucket of {docs} documents")
    (loose,) = _rows(runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--calibration", str(cal), "--json",
                                         "--fpr", str(1.5 / (1 + docs))]))  # a FPR the bucket can reach
    assert loose["verdict"] == "watermarked" and loose["p_calibrated"] == pytest.approx(1 / (1 + docs))
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--calibration", str(cal), "--null", "gamma"])
    assert r.exit_code == 2 and "reference null" in r.stderr
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--calibration", str(cal), "--windowed"])
    assert r.exit_code == 2 and "drop --windowed or --calibration" in r.stderr


def test_the_windowed_row_counts_the_passage_it_locates(tmp_path, key, tokenizer):
    keyfile = _keyfile(tmp_path, key)
    plain = "The weather in the region stayed mild through the week, with light rain on some afternoons. " * 6
    doc = tmp_path / "w.txt"
    doc.write_text(plain + marked_text(KGW(key), tokenizer, 60, seed=5) + " " + plain)
    (row,) = _rows(runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--windowed", "--json", "--null", "gamma"]))
    ev = KGW(key).detector(tokenizer).detect(doc.read_text()).evidence  # per token: scored, green (an independent pass)
    a, b = row["window_tokens"]
    scored = sum(ev["scored"][a:b])
    green = sum(g and s for g, s in zip(ev["green"][a:b], ev["scored"][a:b]))
    assert row["tokens_scored"] == row["window_scored"] == scored and row["text_tokens_scored"] > scored
    assert row["green_fraction"] == pytest.approx(green / scored)


# ---- nothing lost: wm generate -o ----

def _fake_generation(monkeypatch, fail_on_call=None):
    import wmkit.cli.generate as gen

    calls = []

    def fake(lm, tok, prompts, scheme, **kw):
        calls.append(list(prompts))
        if fail_on_call is not None and len(calls) == fail_on_call:
            raise KeyboardInterrupt
        return [{"prompt": p, "completion": f"answer to {p}", "completion_ids": [1, 2, 3]} for p in prompts]

    monkeypatch.setattr(gen, "load_lm", lambda model: (None, None))
    monkeypatch.setattr(gen, "generate_completions", fake)
    return calls


def test_an_interrupted_generation_keeps_its_records_and_resumes(tmp_path, key, monkeypatch):
    keyfile = _keyfile(tmp_path, key)
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    out = tmp_path / "out.jsonl"
    args = ["generate", "--prompts", str(tmp_path / "p.txt"), "-k", str(keyfile), "--batch-size", "1", "--seed", "7", "-o", str(out)]
    _fake_generation(monkeypatch, fail_on_call=2)
    r = runner.invoke(app, args)
    assert r.exit_code == 130 and "1 of 3 completion(s) are in" in r.stderr and "--resume" in r.stderr
    first = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["index"] for x in first] == [0] and first[0]["completion"] == "answer to one"
    with out.open("a") as f:
        f.write('{"index": 1, "prompt": "tw')  # a record cut short by a crash
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--resume" in r.stderr  # never appended to without asking
    calls = _fake_generation(monkeypatch)
    r = runner.invoke(app, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert calls == [["two"], ["three"]]  # only the missing prompts
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["index"] for x in recs) == [0, 1, 2] and recs[0] == first[0]
    r = runner.invoke(app, [*args[:-2], "--seed", "8", "-o", str(out), "--resume"])
    assert r.exit_code == 2 and "another seed" in r.stderr


def test_a_second_run_to_the_same_output_stops_before_the_model_loads(tmp_path, key, monkeypatch):
    import wmkit.cli.generate as gen

    keyfile = _keyfile(tmp_path, key)
    out = tmp_path / "out.jsonl"
    out.write_text("")  # the first run's claim
    monkeypatch.setattr(gen, "load_lm", lambda model: pytest.fail("the model was loaded"))
    r = runner.invoke(app, ["generate", "-p", "hi", "-k", str(keyfile), "-o", str(out)])
    assert r.exit_code == 2 and "refusing to overwrite" in r.stderr


def test_a_failed_model_load_leaves_no_claimed_file(tmp_path, key):
    keyfile = _keyfile(tmp_path, key)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model" * 100)
    out = tmp_path / "out.jsonl"
    r = runner.invoke(app, ["generate", "-p", "hi", "-k", str(keyfile), "-o", str(out), "--model", str(junk)])
    assert r.exit_code == 2 and "not a readable GGUF" in r.stderr and not out.exists()


# ---- bad model files: one line in every command, nothing left behind ----

def _bad_ggufs(tmp_path):
    from wmkit.models import resolve_lm_path

    real = resolve_lm_path(None).read_bytes()[: 1 << 16]
    files = {"junk.gguf": b"\x7fELF" + bytes(range(256)) * 8, "empty.gguf": b"", "truncated.gguf": real}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / n for n in files]


def test_bad_model_files_are_one_line_everywhere(tmp_path, key):
    keyfile = _keyfile(tmp_path, key)
    doc = tmp_path / "t.txt"
    doc.write_text("some words " * 30)
    for bad in _bad_ggufs(tmp_path):
        for args in (["detect", str(doc), "-k", str(keyfile)],
                     ["scan", str(doc), "-k", str(keyfile), "-o", str(tmp_path / "scan-out")],
                     ["demo", "-n", "5"],
                     ["fingerprint", "enroll", "-o", str(tmp_path / "sig.safetensors")]):
            model = ["--model", str(bad)] if args[0] != "fingerprint" else [str(bad)]
            r = runner.invoke(app, [*args, *model])
            assert r.exit_code == 2, (args, r.output)
            lines = r.stderr.strip().splitlines()
            assert "not a readable GGUF" in lines[-1] and "Traceback" not in r.output, (args, r.output)
        assert not (tmp_path / "scan-out").exists() and not (tmp_path / "sig.safetensors").exists()


def test_demo_checks_its_length_before_loading_the_model(monkeypatch):
    import wmkit.cli.demo as demo

    monkeypatch.setattr(demo, "load_lm", lambda model: pytest.fail("the model was loaded"))
    r = runner.invoke(app, ["demo", "-n", "0"])
    assert r.exit_code == 2 and "--max-new-tokens" in r.stderr


# ---- wm scan: error rows, not aborts; no output before the first part ----

def test_scan_error_rows_for_corrupt_parquet_and_oversized_documents(tmp_path, key):
    import pyarrow as pa
    import pyarrow.parquet as pq

    keyfile = _keyfile(tmp_path, key)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    news = ("The committee met on Tuesday to discuss the budget for the coming year and agreed on most points after a "
            "long debate about schools, roads and the new hospital that the city council had promised last spring.")
    pq.write_table(pa.table({"text": [f"word {i} " * 50 for i in range(200)], "id": [f"a{i}" for i in range(200)]}),
                   corpus / "a.parquet", compression="snappy")
    data = bytearray((corpus / "a.parquet").read_bytes())
    for i in range(200, 2000, 7):  # inside the first data page: snappy cannot decompress it
        data[i] ^= 0x5A
    (corpus / "bad.parquet").write_bytes(bytes(data))
    pq.write_table(pa.table({"text": [news] * 3, "id": [None] * 3},
                            schema=pa.schema([("text", pa.string()), ("id", pa.string())])), corpus / "b.parquet")
    lines = [{"id": "big", "text": "word " * 300_000}, {"id": "small", "text": news},
             {"id": "notext", "body": "x"}]
    (corpus / "c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    r = runner.invoke(app, ["scan", str(corpus), "-k", str(keyfile), "-o", str(out), "--max-doc-mb", "1", "--id-field", "id"])
    assert r.exit_code == 0, r.output
    from wmkit.scan import read_rows

    rows = {x["id"]: x for x in read_rows(out)}
    bad = [x for x in rows.values() if "bad.parquet" in x["source"]]
    assert len(bad) == 1 and "unreadable from row 1" in bad[0]["error"]
    brow = rows[f"{corpus / 'b.parquet'}:row1"]
    assert brow.get("null") == "reference", brow
    assert "over --max-doc-mb 1" in rows["big"]["error"] and "error" not in rows["small"]
    assert "no string field" in rows["notext"]["error"]  # the error row keeps the document's id
    assert len([x for x in rows.values() if "a.parquet" in x["source"]]) == 200


def test_scan_that_cannot_start_leaves_nothing_and_an_unreachable_ray_fails_fast(tmp_path, key):
    import time

    from wmkit.errors import InputError
    from wmkit.scan import _check_reachable

    keyfile = _keyfile(tmp_path, key)
    doc = tmp_path / "t.txt"
    doc.write_text("some words " * 30)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="cannot reach the Ray cluster"):
        _check_reachable("127.0.0.1:1")
    r = runner.invoke(app, ["scan", str(doc), "-k", str(keyfile), "-o", str(tmp_path / "out"), "--engine", "ray",
                            "--ray-address", "127.0.0.1:1"])
    assert r.exit_code == 2 and "cannot reach the Ray cluster" in r.stderr and time.perf_counter() - t0 < 60
    assert not (tmp_path / "out").exists()
    r = runner.invoke(app, ["scan", str(doc), "-k", str(keyfile), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0 and (tmp_path / "out" / "_manifest.json").exists()  # the corrected rerun is not refused


# ---- names, encodings, evidence folders ----

def test_non_utf8_names_and_windows_1252_text(tmp_path, key):
    keyfile = _keyfile(tmp_path, key)
    name = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.txt")
    Path(name).write_text("The tides rise and fall twice a day because the moon pulls on the oceans. " * 3)
    r = runner.invoke(app, ["detect", name, "-k", str(keyfile), "--json"])
    (row,) = _rows(r)
    assert row["file"].endswith("caf\\xe9.txt") and json.dumps(row).encode("ascii")
    r = runner.invoke(app, ["evidence", "text", name, "-k", str(keyfile), "-o", str(tmp_path / "ev")])
    assert r.exit_code == 2 and "not valid UTF-8" in r.stderr and not (tmp_path / "ev").exists()
    (tmp_path / "w.txt").write_bytes("caf\u00e9 \u201cquoted\u201d text".encode("cp1252"))
    r = runner.invoke(app, ["detect", str(tmp_path / "w.txt"), "-k", str(keyfile)])
    assert r.exit_code == 2 and "Windows-1252" in r.stderr and "iconv" in r.stderr


def test_an_evidence_folder_made_meanwhile_is_one_line(tmp_path, key, tokenizer, monkeypatch):
    import wmkit.cli.evidence as ev

    keyfile = _keyfile(tmp_path, key)
    doc = tmp_path / "m.txt"
    doc.write_text(marked_text(KGW(key), tokenizer, 60, seed=6))
    real = ev.text_report

    def racing(*a, **kw):  # another run creates the folder while this one computes
        (tmp_path / "ev").mkdir()
        return real(*a, **kw)

    monkeypatch.setattr(ev, "text_report", racing)
    r = runner.invoke(app, ["evidence", "text", str(doc), "-k", str(keyfile), "-o", str(tmp_path / "ev")])
    assert r.exit_code == 2 and "made by another run meanwhile" in r.stderr and "Traceback" not in r.output
    assert list((tmp_path / "ev").iterdir()) == []


# ---- smaller rows ----

def test_synthid_records_with_explicit_keys_can_be_used(tmp_path):
    keys = ",".join(str(7 * i + 11) for i in range(30))
    cfg = SCHEMES["synthid"].from_config({}, keys).config()
    (tmp_path / "s.json").write_text(json.dumps(cfg))
    doc = tmp_path / "t.txt"
    doc.write_text("The tides rise and fall twice a day because the moon pulls on the oceans. " * 3)
    (want,) = _rows(runner.invoke(app, ["detect", str(doc), "-s", "synthid", "-P", f"keys={keys}", "--json"]))
    (got,) = _rows(runner.invoke(app, ["detect", str(doc), "--config", str(tmp_path / "s.json"), "-P", f"keys={keys}", "--json"]))
    assert got == want and got["key_id"].startswith("synthid:")
    r = runner.invoke(app, ["detect", str(doc), "--config", str(tmp_path / "s.json"), "-P", "depth=3"])
    assert r.exit_code == 2 and "except -P keys=" in r.stderr


def test_list_form_chat_content_and_fingerprint_access_defaults():
    from wmkit.cli.fingerprint import default_access
    from wmkit.errors import RequestError
    from wmkit.server.schema import _flat_message

    m = {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}
    assert _flat_message(m, 0) == {"role": "user", "content": "Hello\nthere"}  # vLLM joins text parts with newlines
    with pytest.raises(RequestError, match="only text parts"):
        _flat_message({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, 0)
    assert default_access(None, "http://127.0.0.1:8000/v1") == "topk" and default_access(None, "model/") == "logits"
    assert default_access("top1", "http://x") == "top1"


def test_key_only_help_lists_only_key_only_schemes():
    r = runner.invoke(app, ["scan", "--help"], env={"COLUMNS": "400"})
    line = next(x for x in r.output.splitlines() if "key-only detectors" in x)
    assert "sweet," not in line.split("(sweet")[0] and "ewd," not in line
