"""Gumbel-max, EXP-edit, SynthID and the vLLM-native schemes end to end on the real default model, through the CLI:
`wm generate -o` then `wm detect` finds the mark with the right key and not with another."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmkit.cli.main import app

pytestmark = pytest.mark.slow
runner = CliRunner()
PROMPTS = [ln for ln in (Path(__file__).parent / "data" / "prompts.txt").read_text().splitlines() if ln.strip()][:4]

CASES = {  # scheme -> (key options, wrong-key options, extra parameters)
    "gumbel": (["-k", "{key}"], ["-k", "{other}"], []),
    "exp-edit": (["-k", "{key}"], ["-k", "{other}"], ["-P", "key_length=64", "-P", "n_resamples=99"]),
    "synthid": (["-P", "keys=654,400,836,123,340,443,597,160,57"], ["-P", "keys=1,2,3,4,5,6,7,8,9"],
                ["-P", "ngram_len=4"]),
    "vllm-gumbel": (["--vllm-key", "42"], ["--vllm-key", "41"], []),
    "vllm-sbw": (["--vllm-key", "42"], ["--vllm-key", "41"], []),
}


@pytest.mark.parametrize("name", list(CASES))
def test_generate_then_detect(tmp_path, name):
    for k, byte in (("key", "5e"), ("other", "a7")):  # fixed keys: generation and the wrong-key check are deterministic
        (tmp_path / k).write_text(byte * 32 + "\n")
    fill = lambda opts: [o.format(key=tmp_path / "key", other=tmp_path / "other") for o in opts]  # noqa: E731
    good, bad, extra = (fill(x) for x in CASES[name])
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    r = runner.invoke(app, ["generate", "--prompts", str(tmp_path / "prompts.txt"), "-s", name, *good, *extra,
                            "-n", "120", "--seed", "3", "--no-chat", "--temperature", "1", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(rec["config"]["scheme"] == name and "key" not in rec["config"] for rec in records)
    files = []
    for i, rec in enumerate(records):
        files.append(tmp_path / f"c{i}.txt")
        files[-1].write_text(rec["completion"], encoding="utf-8")
    # exp-edit's 99 resamples give p >= 0.01: its FPR is 0.01, the others' 1e-4
    args = ["detect", *map(str, files), "-s", name, *extra, "--json", "--fpr", "0.01" if name == "exp-edit" else "1e-4"]
    rows = [json.loads(x) for x in runner.invoke(app, [*args, *good]).stdout.splitlines()]
    assert len(rows) == len(PROMPTS) and all(r.get("watermarked") is True for r in rows), rows  # every text scored and found
    rows = [json.loads(x) for x in runner.invoke(app, [*args, *bad]).stdout.splitlines()]
    assert len(rows) == len(PROMPTS) and all(r.get("watermarked") is False for r in rows), rows  # no wrong-key detection
