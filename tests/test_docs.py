"""The front door and the docs site: the README stays short, the site builds with ``--strict`` (and a
broken link fails it), the benchmark tables are what ``benchmarks/results`` gives, and every fenced
block marked ``<!-- runnable -->`` in the README runs as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = re.compile(r"<!-- runnable -->\n```(bash|python)\n(.*?)\n```", re.S)


def mkdocs(cwd: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_readme_is_short_and_names_one_command_each():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    for command in ("make install", "wm demo", "make test"):
        assert f"```bash\n{command}\n```" in text


def test_benchmark_tables_are_generated_from_the_results():
    r = subprocess.run([sys.executable, "scripts/docs_tables.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    results = sorted(p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json"))
    pages = sorted(p.stem for p in (ROOT / "docs" / "results").glob("*.md") if p.stem != "index")
    assert pages == results


def test_a_stale_table_is_caught(tmp_path):
    """The check is not a formality: a page whose figure was edited by hand fails it."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copytree(ROOT / "benchmarks" / "results", copy / "benchmarks" / "results")
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    page = copy / "docs" / "results" / "text_size_full.md"
    page.write_text(page.read_text().replace("| 100 |", "| 101 |", 1))
    r = subprocess.run([sys.executable, "scripts/docs_tables.py", "--check"], cwd=copy, capture_output=True, text=True)
    assert r.returncode == 1 and "text_size_full" in r.stderr


def test_docs_site_builds_strict_and_a_broken_link_fails_it(tmp_path):
    r = mkdocs(ROOT, tmp_path / "site")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Verifier" in (tmp_path / "site" / "api" / "index.html").read_text()  # the API reference is rendered
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    os.symlink(ROOT / "wmkit", copy / "wmkit")
    with open(copy / "docs" / "cli.md", "a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    r = mkdocs(copy, tmp_path / "site2")
    assert r.returncode != 0 and "no-such-page.md" in r.stderr


@pytest.mark.slow
def test_readme_runnable_blocks_run_as_written(tmp_path):
    """Each block marked runnable, in order, in one fresh folder (as a reader would), exit status 0:
    the README's, then each docs page's (a page's blocks may use the files the README's made)."""
    blocks = RUNNABLE.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 4
    for page in sorted((ROOT / "docs").glob("*.md")):
        blocks += RUNNABLE.findall(page.read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    for lang, code in blocks:
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0, f"{code}\n--- stderr ---\n{r.stderr[-3000:]}"
        if lang == "python":
            assert "'verdict': 'watermarked'" in r.stdout, r.stdout
    assert "watermarked" in (tmp_path / "evidence" / "report.json").read_text()
    assert list((tmp_path / "scan").iterdir())
