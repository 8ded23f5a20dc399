"""wm calibrate: empirical FPR of one key on the user's unmarked corpus, and calibrated p-values in wm detect."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import agnews_jsonl, marked_text
from wmkit.calibration import MIN_DOCS, calibrate, calibrated_p
from wmkit.cli.main import app
from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.stats import Detection
from wmkit.watermark.text import KGW

runner = CliRunner()


def _det(n: int, p: float, z: float = 0.0) -> Detection:
    return Detection(method="x", n_scored=n, statistic=z, p_value=p, fpr=1e-3, decision=p <= 1e-3, details={"z": z})


def test_report_counts_intervals_and_the_calibrated_p_value():
    rng = np.random.default_rng(0)
    dets = [_det(int(rng.integers(64, 128)), float(p)) for p in rng.uniform(size=2000)]
    dets += [_det(300, float(p) / 20) for p in rng.uniform(size=500)]  # a bucket whose p-values run 20x too small
    rep = calibrate(dets + [InputError("short")], {"scheme": {"scheme": "kgw"}, "key_id": "k"})
    assert rep["documents"] == 2500 and rep["skipped"] == 1
    ok, bad = rep["buckets"]["64-127"], rep["buckets"]["256-511"]
    assert ok["docs"] == 2000 and not ok["fpr"]["0.01"]["miscalibrated"]
    lo, hi = ok["fpr"]["0.01"]["ci95"]
    assert lo <= ok["fpr"]["0.01"]["observed"] <= hi and lo < 0.01 < hi
    assert bad["fpr"]["0.01"]["miscalibrated"] and bad["fpr"]["0.01"]["observed"] > 0.1
    # calibrated p: the rank of p among the bucket's null p-values, (1 + #{null <= p}) / (1 + n)
    p, name = calibrated_p(rep, 300, 0.01)
    null = np.array(bad["null_p"])
    assert name == "256-511" and p == (1 + (null <= 0.01).sum()) / (1 + len(null)) and p > 0.1
    assert calibrated_p(rep, 20, 0.5) is None  # no calibration document of that length
    with pytest.raises(InputError, match=f"at least {MIN_DOCS}"):
        calibrate(dets[:50], {})


def test_cli_calibrate_then_detect_with_calibration(tmp_path, tokenizer):
    key = SecretKey(bytes(range(32)))
    keyfile = tmp_path / "k"
    keyfile.write_text(key.to_hex())
    corpus = agnews_jsonl(tmp_path / "human.jsonl", 400)
    out = tmp_path / "cal.json"
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"\x00\x01binary")
    r = runner.invoke(app, ["calibrate", str(corpus), str(blob), "-k", str(keyfile), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["documents"] >= 300 and rep["key_id"] == key.fingerprint() and "null_p" not in json.dumps(rep)
    assert rep["documents"] + rep["skipped"] == 401  # every line, and the unreadable file counted as skipped
    r = runner.invoke(app, ["calibrate", str(corpus), "-k", str(keyfile), "-o", str(out)])
    assert r.exit_code == 2 and "refusing to overwrite" in r.stderr
    doc = tmp_path / "marked.txt"
    doc.write_text(marked_text(KGW(key), tokenizer, 100, seed=4), encoding="utf-8")
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--calibration", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    n = rep["buckets"][row["calibration_bucket"]]["docs"]
    assert row["p_calibrated"] == pytest.approx(1 / (1 + n))  # beyond every null document: the smallest it can say
    other = tmp_path / "other.key"
    other.write_text(SecretKey.generate().to_hex())
    r = runner.invoke(app, ["detect", str(doc), "-k", str(other), "--calibration", str(out)])
    assert r.exit_code == 2 and "made with key id" in r.stderr
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--gamma", "0.5", "--calibration", str(out)])
    assert r.exit_code == 2 and "another scheme configuration" in r.stderr
    r = runner.invoke(app, ["calibrate", str(doc), "-k", str(keyfile), "-o", str(tmp_path / "c2.json")])
    assert r.exit_code == 2 and "corpus too small to calibrate" in r.stderr
    r = runner.invoke(app, ["calibrate", str(tmp_path / "nope"), "-k", str(keyfile), "-o", str(tmp_path / "c2.json")])
    assert r.exit_code == 2 and "nope: no such file or folder" in r.stderr
    r = runner.invoke(app, ["calibrate", str(tmp_path), "--glob", "*.pdf", "-k", str(keyfile), "-o", str(tmp_path / "c2.json")])
    assert r.exit_code == 2 and "no files in this folder match --glob '*.pdf'" in r.stderr and not (tmp_path / "c2.json").exists()
