"""Multi-profile detection: each text against every served profile, Holm-corrected; key references only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import marked_text
from wmkit.cli.main import app
from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.profiles import detect_profiles, load_profiles
from wmkit.stats import holm
from wmkit.watermark.text import KGW, Unigram

runner = CliRunner()
KEY_A, KEY_B = SecretKey(bytes(range(32))), SecretKey(bytes(range(1, 33)))


@pytest.fixture
def setup(tmp_path, monkeypatch, tokenizer):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.key").write_text(KEY_A.to_hex() + "\n")
    monkeypatch.setenv("WM_TEST_KEY_B", KEY_B.to_hex())
    monkeypatch.setenv("WM_TEST_VLLM", "42")
    profiles = {"profiles": [
        {"name": "chat", "config": {"scheme": "kgw", "gamma": 0.25, "context_width": 1}, "key": {"file": "keys/a.key"}},
        {"name": "legacy", "config": {"scheme": "unigram", "gamma": 0.5}, "key": {"env": "WM_TEST_KEY_B"}},
        {"name": "vllm", "config": {"scheme": "vllm-gumbel"}, "key": {"env": "WM_TEST_VLLM"}},
    ]}
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(profiles))
    texts = {"chat": marked_text(KGW(KEY_A), tokenizer, 120, seed=1),
             "legacy": marked_text(Unigram(KEY_B, gamma=0.5), tokenizer, 120, seed=2),
             "plain": marked_text(KGW(SecretKey.generate()), tokenizer, 120, seed=3)}
    return tmp_path, path, profiles, texts


def test_each_text_is_attributed_to_its_profile_with_holm(setup, tokenizer):
    _, path, _, texts = setup
    profiles = load_profiles(path)
    assert [p.name for p in profiles] == ["chat", "legacy", "vllm"]
    res = detect_profiles(profiles, tokenizer, list(texts.values()), fpr=1e-3)
    assert (res[0].profile, res[0].decision) == ("chat", True)
    assert (res[1].profile, res[1].decision) == ("legacy", True)
    assert not res[2].decision
    for r in res:  # the reported p-values are Holm's over the raw ones
        raw = [r.per_profile[n]["p_value"] for n in ("chat", "legacy", "vllm")]
        assert [r.per_profile[n]["p_holm"] for n in ("chat", "legacy", "vllm")] == holm(raw)
        assert r.p_value == min(holm(raw))


def test_holm_controls_the_family_wise_error_on_unmarked_text(tokenizer):
    """20 profiles of random keys, 300 unmarked texts: a text is attributed to some profile at most at the FPR."""
    from wmkit.profiles import Profile

    rng = np.random.default_rng(0)
    profiles = [Profile(f"p{i}", KGW(SecretKey.generate())) for i in range(20)]
    texts = [rng.integers(0, len(tokenizer), 150).tolist() for _ in range(300)]
    res = detect_profiles(profiles, tokenizer, texts, fpr=0.05)
    assert sum(r.decision for r in res) / len(res) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 300)
    raw_min = [min(v["p_value"] for v in r.per_profile.values()) for r in res]
    assert sum(p <= 0.05 for p in raw_min) > sum(r.decision for r in res)  # uncorrected, it would claim more


@pytest.mark.parametrize("change,msg", [
    (lambda p: p["profiles"][0].update(key={"hex": "00" * 32}), "inline keys are refused"),
    (lambda p: p["profiles"][0]["config"].update(keys=[1, 2]), "inline keys are refused"),
    (lambda p: p["profiles"][0]["config"].update(scheme="nope"), "unknown scheme"),
    (lambda p: p["profiles"][0]["config"].update(scheme="sweet"), "key-only schemes"),
    (lambda p: p["profiles"][1].update(key={"env": "WM_TEST_UNSET"}), "WM_TEST_UNSET is not set"),
    (lambda p: p["profiles"][1].update(name="chat"), "two profiles are named 'chat'"),
    (lambda p: p["profiles"][0]["config"].update(gamma=2), "gamma must be"),
    (lambda p: p.update(profiles=[]), "at least one profile"),
])
def test_bad_profiles_files(setup, change, msg):
    tmp_path, path, profiles, _ = setup
    change(profiles)
    path.write_text(json.dumps(profiles))
    with pytest.raises(InputError, match=msg):
        load_profiles(path)


def test_cli_profiles(setup):
    tmp_path, path, _, texts = setup
    files = []
    for name, text in texts.items():
        files.append(tmp_path / f"{name}.txt")
        files[-1].write_text(text, encoding="utf-8")
    r = runner.invoke(app, ["detect", *map(str, files), "--profiles", str(path), "--json", "--fpr", "1e-3"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(row["profile"], row["watermarked"]) for row in rows[:2]] == [("chat", True), ("legacy", True)]
    assert not rows[2]["watermarked"] and set(rows[2]["profiles"]) == {"chat", "legacy", "vllm"}
    r = runner.invoke(app, ["detect", str(files[0]), "--profiles", str(path), "-s", "kgw"])
    assert r.exit_code == 2 and "--profiles names the schemes and keys" in r.stderr


def test_calibrate_every_profile_then_detect_with_the_calibrations(setup):
    from helpers import agnews_jsonl

    tmp_path, path, profiles, texts = setup
    corpus = agnews_jsonl(tmp_path / "human.jsonl", 300)
    out = tmp_path / "cal.json"
    r = runner.invoke(app, ["calibrate", str(corpus), "--profiles", str(path), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    shown = [json.loads(x) for x in r.stdout.splitlines()]
    assert [s["profile"] for s in shown] == ["chat", "legacy", "vllm"] and all(s["documents"] >= 100 for s in shown)
    doc = json.loads(out.read_text())
    assert doc["format"] == "wmkit-calibration-profiles/1" and doc["profiles"]["chat"]["key_id"] == KEY_A.fingerprint()
    marked = tmp_path / "chat.txt"
    marked.write_text(texts["chat"], encoding="utf-8")
    r = runner.invoke(app, ["detect", str(marked), "--profiles", str(path), "--calibration", str(out), "--json", "--fpr", "1e-2"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    bucket_docs = {b: v["docs"] for b, v in doc["profiles"]["chat"]["buckets"].items()}
    p_cal = row["profiles"]["chat"]["p_calibrated"]
    assert row["profile"] == "chat" and p_cal in {1 / (1 + d) for d in bucket_docs.values()}  # beyond every null doc
    assert row["p_value"] == pytest.approx(min(1.0, 3 * p_cal))  # Holm over the three calibrated p-values
    assert row["watermarked"] == (row["p_value"] <= 1e-2)  # a small calibration cannot say less than 1 / (1 + n)
    partial = {"format": doc["format"], "profiles": {"chat": doc["profiles"]["chat"]}}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    r = runner.invoke(app, ["detect", str(marked), "--profiles", str(path), "--calibration", str(tmp_path / "partial.json")])
    assert r.exit_code == 2 and "has no profile 'legacy'" in r.stderr
    r = runner.invoke(app, ["detect", str(marked), "--profiles", str(path), "--calibration", str(path)])
    assert r.exit_code == 2 and "not a multi-profile calibration file" in r.stderr
    r = runner.invoke(app, ["calibrate", str(corpus), "--profiles", str(path), "-k", "x", "-o", str(tmp_path / "c2.json")])
    assert r.exit_code == 2 and "--profiles names the schemes and keys" in r.stderr
