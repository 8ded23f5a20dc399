"""``wm probe --api URL``: is that API watermarked, and with what family of scheme? (:mod:`wmkit.forensics.probe`)

Black-box tests from completions alone (arXiv 2405.20777): red-green, fixed-sampling and
cache-augmented. Prints one JSON line per family tested (its p-value, Holm-adjusted p-value and the
queries it spent) and a summary line last (``present``, ``family``, ``queries``). A run stopped by
the query budget, the time limit or the API keeps what it measured, says ``"partial": true`` and
exits 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .common import ApiKeyEnvOpt, HeaderOpt, InsecureOpt, check_fpr_option, die, error, run_guarded, stderr


def probe(
    ctx: typer.Context,
    api: str = typer.Option(..., "--api", help="The API: an OpenAI-compatible base URL (its /v1/completions is queried)."),
    tests: str = typer.Option("red-green,fixed-sampling,cache-augmented", "--tests",
                              help="Families to test, comma-separated: red-green, fixed-sampling, cache-augmented."),
    samples: int = typer.Option(64, "--samples", help="Red-green: one-token samples per (prefix, digit) cell (10 x 9 cells)."),
    tolerance: float = typer.Option(1.0, "--tolerance", help="Red-green: the largest natural digit effect (nats, on a log-odds) "
                                    "the null allows."),
    story_samples: int = typer.Option(100, "--story-samples", help="Fixed-sampling: samples of the story prompt."),
    max_prob: float = typer.Option(1e-3, "--max-prob", help="Fixed-sampling: the null's assumption, that no continuation "
                                   "(after the first 4 words of a 16-token answer) of an unmarked model is likelier than this."),
    rounds: int = typer.Option(10, "--rounds", help="Cache-augmented: bursts of queries."),
    burst: int = typer.Option(5, "--burst", help="Cache-augmented: queries per burst."),
    wait: float = typer.Option(2.0, "--wait", help="Cache-augmented: seconds between bursts (for a cache to expire)."),
    per_request: int = typer.Option(16, "--per-request", help="Most completions asked for in one request (n)."),
    max_queries: int = typer.Option(20_000, "--max-queries", help="Most completions to ask for in all."),
    time_limit: float = typer.Option(3600.0, "--time-limit", help="Stop asking after this many seconds."),
    api_key_env: Optional[str] = ApiKeyEnvOpt,
    header: list[str] = HeaderOpt,
    insecure: bool = InsecureOpt,
    fpr: float = typer.Option(1e-3, help="False-positive rate of 'present' (Holm over the families tested)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON lines only."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="wm evidence probe: a new folder for report.json, "
                                          "report.html and answers.json (what anyone re-checks, without the API).",
                                          show_default=False),
) -> None:
    """Test whether the API at --api watermarks what it writes: red-green, fixed-sampling and cache-augmented families.

    As ``wm evidence probe -o FOLDER`` it also writes a report that anyone re-checks from the recorded
    answers (``wm evidence check FOLDER/report.json``, no key)."""
    from ..forensics.probe import Endpoint
    from ..forensics.probe import probe as run_probe
    from ..remote import Completions, suspect_headers

    check = run_guarded(check_fpr_option, fpr)
    if "evidence" in ctx.command_path.split() and output is None:
        die("wm evidence probe writes a report: give -o NEW_FOLDER")
    if output is not None:
        from .evidence import _new_folder

        _new_folder(output)
    if not api.startswith(("http://", "https://")):
        die(f"--api must be an http(s):// URL, got {api!r}")
    if min(samples, story_samples, rounds, burst, per_request, max_queries) < 1 or wait < 0 or time_limit <= 0 or tolerance < 0:
        die("--samples, --story-samples, --rounds, --burst, --per-request and --max-queries must be >= 1; --wait >= 0; "
            "--time-limit > 0; --tolerance >= 0")
    families = [t.strip() for t in tests.split(",") if t.strip()]
    headers = run_guarded(suspect_headers, api, api_key_env, header, insecure)
    client = Completions(api, headers)
    endpoint = Endpoint(lambda prompt, n, max_tokens, temperature: client.complete(prompt, max_tokens, temperature, n=n),
                        max_queries=max_queries, time_limit=time_limit, per_request=per_request)
    options = {"red-green": {"samples": samples, "tolerance": tolerance},
               "fixed-sampling": {"samples": story_samples, "max_prob": max_prob},
               "cache-augmented": {"rounds": rounds, "burst": burst, "wait": wait}}
    answers: dict[str, Any] = {}
    rows = run_guarded(run_probe, endpoint, check, families, options, answers)
    if output is not None:
        from ..evidence import probe_report
        from .evidence import _make_folder, _write

        given = sys.argv[len(ctx.command_path.split()):]
        command = ["wm", *ctx.command_path.split()[1:], *("NEW_FOLDER" if a == str(output) else a for a in given)]
        _make_folder(output)
        report = run_guarded(probe_report, output, rows[:-1], answers, api=api, fpr=check, command=command)
        _write(output, report)
        rows[-1]["report"] = str(output / "report.json")
    for row in rows:
        typer.echo(json.dumps(row))
    summary = rows[-1]
    if not as_json:
        for row in rows[:-1]:
            if row.get("partial"):
                stderr.print(f"{row['family']}: stopped ({row['stopped']}) after {row['queries']} queries", markup=False)
            else:
                stderr.print(f"{row['family']}: p = {row['p_value']:.3g} (Holm {row['p_holm']:.3g}), {row['queries']} queries",
                             markup=False)
        found = f"present ({summary['family']})" if summary["present"] else "not shown"
        stderr.print(f"watermark {found} at FPR {check:g}; {summary['queries']} queries, {summary['seconds']} s", markup=False)
    if summary.get("partial"):
        error("partial run: " + "; ".join(r["stopped"] for r in rows[:-1] if r.get("partial")))
        raise typer.Exit(2)
