"""Issue 39's rows that this change fixes: one line and exit 2, checked before anything is written."""

import json
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
