"""wm scan: rows equal to the detector's own verdicts, error rows, resumption after a crash,
refusals, and identical rows from 1 and 2 worker processes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers import marked_text
from wmkit.cli.main import app
from wmkit.keys import SecretKey, read_key_file
from wmkit.scan import MANIFEST, InputSpec, iter_shards, read_rows
from wmkit.watermark.text import KGW

runner = CliRunner()


@pytest.fixture
def corpus(tmp_path, tokenizer):
    keyfile = tmp_path / "wm.key"
    assert runner.invoke(app, ["keygen", "-o", str(keyfile)]).exit_code == 0
    key = read_key_file(keyfile)
    marked = [marked_text(KGW(key), tokenizer, 80, seed=s) for s in range(3)]
    plain = [marked_text(KGW(SecretKey.generate()), tokenizer, 80, seed=10 + s) for s in range(3)]
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text(marked[0], encoding="utf-8")
    (docs / "sub" / "b.txt").write_text(plain[0], encoding="utf-8")
    (docs / "empty.txt").write_text("  \n")
    (docs / "blob.txt").write_bytes(b"\x00\x01binary")
    (docs / "skip.md").write_text(marked[1])
    lines = [json.dumps({"text": t, "doc": f"m{i}"}) for i, t in enumerate(marked)]
    lines += [json.dumps({"text": t, "doc": f"p{i}"}) for i, t in enumerate(plain)]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"body": "no text field"}))
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return tmp_path, keyfile, key, marked, plain


def scan(tmp_path, keyfile, out, *extra):
    r = runner.invoke(app, ["scan", str(tmp_path / "docs"), str(tmp_path / "c.jsonl"), "--glob", "*.txt", "-k", str(keyfile),
                            "--id-field", "doc", "-o", str(out), "--fpr", "1e-3", *extra])
    return r


def test_rows_match_the_detector_and_bad_documents_get_error_rows(corpus, tokenizer):
    tmp_path, keyfile, key, marked, plain = corpus
    r = scan(tmp_path, keyfile, tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    rows = list(read_rows(tmp_path / "out"))
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == 4 + 8  # 4 text files matching *.txt, 8 JSON lines
    det = KGW(key).detector(tokenizer, fpr=1e-3, null="reference")  # the per-key null is a scan's default
    for i, text in enumerate(marked):
        want = det.detect(text)
        assert by_id[f"m{i}"]["p_value"] == want.p_value and by_id[f"m{i}"]["decision"] is True
        assert by_id[f"m{i}"]["verdict"] == "watermarked" and by_id[f"m{i}"]["null"] == "reference"
        assert by_id[f"m{i}"]["key_id"] == key.fingerprint()
        assert by_id[f"m{i}"]["tokens_scored"] == want.n_scored
    assert not any(by_id[f"p{i}"]["decision"] for i in range(3))
    docs = tmp_path / "docs"
    assert by_id[str(docs / "a.txt")]["decision"] and not by_id[str(docs / "sub" / "b.txt")]["decision"]
    assert "empty file" in by_id[str(docs / "empty.txt")]["error"]
    assert "binary file" in by_id[str(docs / "blob.txt")]["error"]
    jsonl = str(tmp_path / "c.jsonl")
    assert "malformed JSON line" in by_id[f"{jsonl}:3"]["error"] and "no string field 'text'" in by_id[f"{jsonl}:5"]["error"]
    assert by_id["m0"]["source"] == f"{jsonl}:1"


def test_resume_after_a_crash_skips_finished_shards_and_gives_the_same_rows(corpus):
    tmp_path, keyfile, *_ = corpus
    full = tmp_path / "full"
    assert scan(tmp_path, keyfile, full, "--shard-docs", "3").exit_code == 0
    want = list(read_rows(full))
    part = tmp_path / "part"
    assert scan(tmp_path, keyfile, part, "--shard-docs", "3").exit_code == 0
    state = json.loads((part / MANIFEST).read_text())
    assert len(state["done"]) == 2 + 3  # text files: 4 docs -> 2 shards; JSONL: 8 lines -> 3 shards
    last = list(state["done"])[-2:]
    for shard in last:  # as if the run died before these shards: their parts and entries are gone
        (part / state["done"].pop(shard)["part"]).unlink()
    (part / MANIFEST).write_text(json.dumps(state))
    r = scan(tmp_path, keyfile, part, "--shard-docs", "3")
    assert r.exit_code == 0 and "skipped 3 finished shard(s)" in r.stderr and "wrote 2 shard(s)" in r.stderr
    assert sorted(map(json.dumps, read_rows(part))) == sorted(map(json.dumps, want))
    r = scan(tmp_path, keyfile, part, "--shard-docs", "3")  # nothing left to do
    assert r.exit_code == 0 and "wrote 0 shard(s)" in r.stderr


def test_refuses_foreign_outputs_and_other_configurations(corpus):
    tmp_path, keyfile, *_ = corpus
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    r = scan(tmp_path, keyfile, other)
    assert r.exit_code == 2 and "without a _manifest.json" in r.stderr and (other / "precious.txt").read_text() == "keep me"
    r = scan(tmp_path, keyfile, tmp_path / "c.jsonl")
    assert r.exit_code == 2 and "not a scan output folder" in r.stderr
    assert scan(tmp_path, keyfile, tmp_path / "out").exit_code == 0
    r = scan(tmp_path, keyfile, tmp_path / "out", "--gamma", "0.5")
    assert r.exit_code == 2 and "another configuration" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["scan", str(tmp_path / "nope"), "-k", str(keyfile), "-o", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "no such file or folder" in r.stderr
    (tmp_path / "bare").mkdir()
    r = runner.invoke(app, ["scan", str(tmp_path / "bare"), "-k", str(keyfile), "-o", str(tmp_path / "o4")])
    assert r.exit_code == 2 and "no files in this folder match --glob '*'" in r.stderr and not (tmp_path / "o4").exists()
    r = runner.invoke(app, ["scan", str(tmp_path / "docs"), "--glob", "*.pdf", "-k", str(keyfile), "-o", str(tmp_path / "o4")])
    assert r.exit_code == 2 and "--glob '*.pdf'" in r.stderr and not (tmp_path / "o4").exists()
    r = runner.invoke(app, ["scan", str(tmp_path / "c.jsonl"), "-s", "sweet", "-k", str(keyfile), "-o", str(tmp_path / "o3")])
    assert r.exit_code == 2 and "key-only schemes" in r.stderr


def test_two_workers_give_the_same_rows_and_windowed_locates(corpus):
    tmp_path, keyfile, *_ = corpus
    assert scan(tmp_path, keyfile, tmp_path / "one", "--shard-docs", "2").exit_code == 0
    r = scan(tmp_path, keyfile, tmp_path / "two", "--shard-docs", "2", "--workers", "2")
    assert r.exit_code == 0, r.stderr
    assert list(read_rows(tmp_path / "one")) == list(read_rows(tmp_path / "two"))
    r = scan(tmp_path, keyfile, tmp_path / "win", "--windowed")
    assert r.exit_code == 0
    row = next(x for x in read_rows(tmp_path / "win") if x["id"] == "m0")
    assert row["decision"] and row["window_start"] >= 0 and row["window_end"] > row["window_start"]


def test_stdin_jsonl_and_lazy_shards(tmp_path, tokenizer):
    key = SecretKey.generate()
    keyfile = tmp_path / "k"
    keyfile.write_text(key.to_hex())
    text = marked_text(KGW(key), tokenizer, 60, seed=3)
    r = runner.invoke(app, ["scan", "-", "--field", "body", "-k", str(keyfile), "-o", str(tmp_path / "o")],
                      input=json.dumps({"body": text}) + "\n")
    assert r.exit_code == 0, r.stderr
    (row,) = read_rows(tmp_path / "o")
    assert row["source"] == "<stdin>:1" and row["decision"]
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(50_000)))
    first = next(iter_shards(InputSpec((str(big),), shard_docs=10)))
    assert first.id == f"{big}#0" and len(first.docs) == 10


def test_parquet_in_and_out_give_the_same_rows_as_jsonl(corpus):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp_path, keyfile, key, marked, plain = corpus
    texts = marked + plain
    pq.write_table(pa.table({"body": texts, "doc": [f"d{i}" for i in range(len(texts))]}), tmp_path / "c.parquet",
                   row_group_size=2)
    (tmp_path / "c2.jsonl").write_text("".join(json.dumps({"body": t, "doc": f"d{i}"}) + "\n" for i, t in enumerate(texts)))
    base = ["scan", "-k", str(keyfile), "--column", "body", "--id-field", "doc", "--shard-docs", "4"]
    r = runner.invoke(app, [*base, str(tmp_path / "c.parquet"), "-o", str(tmp_path / "pq"), "--format", "parquet"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, [*base, str(tmp_path / "c2.jsonl"), "-o", str(tmp_path / "js")])
    assert r.exit_code == 0, r.stderr
    strip = lambda rows: [{k: v for k, v in x.items() if k != "source"} for x in rows]  # noqa: E731
    got, want = list(read_rows(tmp_path / "pq")), list(read_rows(tmp_path / "js"))
    assert strip(got) == strip(want) and got[0]["source"] == f"{tmp_path / 'c.parquet'}:row1"
    assert sorted(p.name for p in (tmp_path / "pq").iterdir())[:2] == ["_manifest.json", "part-00000.parquet"]
    r = runner.invoke(app, [*base[:3], "--column", "nope", str(tmp_path / "c.parquet"), "-o", str(tmp_path / "bad")])
    assert r.exit_code == 0 and "no column 'nope'" in next(iter(read_rows(tmp_path / "bad")))["error"]
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    r = runner.invoke(app, [*base[:3], str(tmp_path / "junk.parquet"), "-o", str(tmp_path / "junk")])
    assert r.exit_code == 0 and "not a readable Parquet file" in next(iter(read_rows(tmp_path / "junk")))["error"]


def test_the_ray_engine_gives_the_local_rows_and_resumes(corpus):
    """Two Ray actors on a local Ray instance: the rows are the local engine's, in the same parts;
    a rerun skips every finished shard."""
    tmp_path, keyfile, *_ = corpus
    assert scan(tmp_path, keyfile, tmp_path / "local", "--shard-docs", "2").exit_code == 0
    r = scan(tmp_path, keyfile, tmp_path / "ray", "--shard-docs", "2", "--engine", "ray", "--workers", "2")
    assert r.exit_code == 0, r.stderr
    assert list(read_rows(tmp_path / "ray")) == list(read_rows(tmp_path / "local"))
    r = scan(tmp_path, keyfile, tmp_path / "ray", "--shard-docs", "2", "--engine", "ray", "--workers", "2")
    assert r.exit_code == 0 and "wrote 0 shard(s)" in r.stderr and "skipped" in r.stderr
    r = scan(tmp_path, keyfile, tmp_path / "x", "--engine", "spark")
    assert r.exit_code == 2 and "--engine must be local or ray" in r.stderr
    r = scan(tmp_path, keyfile, tmp_path / "x", "--ray-address", "auto")
    assert r.exit_code == 2 and "--ray-address applies to --engine ray" in r.stderr


def test_a_ray_cluster_started_with_ray_start_gives_the_local_rows(corpus):
    """A real Ray cluster (``ray start --head`` on this machine, 2 CPUs, stopped at the end) reached
    with ``--ray-address 127.0.0.1:PORT``: its rows equal the local engine's."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile

    tmp_path, keyfile, *_ = corpus
    ray_cli = shutil.which("ray") or shutil.which("ray", path=os.path.dirname(sys.executable))
    assert ray_cli, "the ray CLI comes with the ray extra (make install)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the in-process driver runs without token authentication; the test cluster does too
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    ray_tmp = tempfile.mkdtemp(prefix="wr", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    # the head on this machine's own address: Ray rewrites a 127.0.0.1 address to it (resolve_ip_for_localhost)
    start = subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard",
                            "false", "--disable-usage-stats", "--temp-dir", ray_tmp],
                           capture_output=True, text=True, timeout=180, env=env)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        assert scan(tmp_path, keyfile, tmp_path / "local", "--shard-docs", "2").exit_code == 0
        # a separate driver process, as a user's: this one already ran (and shut down) an in-process Ray
        r = subprocess.run([sys.executable, "-m", "wmkit.cli.main", "scan", str(tmp_path / "docs"), str(tmp_path / "c.jsonl"),
                            "--glob", "*.txt", "-k", str(keyfile), "--id-field", "doc", "-o", str(tmp_path / "cluster"),
                            "--fpr", "1e-3", "--shard-docs", "2", "--engine", "ray", "--workers", "2",
                            "--ray-address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert list(read_rows(tmp_path / "cluster")) == list(read_rows(tmp_path / "local"))
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(ray_tmp, ignore_errors=True)
