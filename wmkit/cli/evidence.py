"""``wm evidence text`` writes an ownership report (JSON + self-contained HTML); ``wm evidence check`` re-checks one."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import InputError
from ..evidence import check_report, render_html, text_report
from ..files import write_file
from ..keys import SecretKey, load_key
from ..models import load_tokenizer
from ..watermark.text import SCHEMES
from ..watermark.text.detector import DEFAULT_FPR
from .common import NAMED_PARAMS, KeyOnlySchemeOpt, ModelOpt, SchemeArgs, check_fpr_option, die, run_guarded, scheme_options, stderr

evidence_app = typer.Typer(help="Ownership evidence a third party can re-check.", no_args_is_help=True)
DEFAULT_TOKENIZER = "default (SmolLM2-135M-Instruct)"


def _tokenizer(name: str) -> Any:
    return load_tokenizer(None if name == DEFAULT_TOKENIZER else name)


@evidence_app.command("text")
@scheme_options
def text(
    scheme_args: SchemeArgs,
    files: list[Path] = typer.Argument(..., help="The text files in question."),
    output: Path = typer.Option(..., "--output", "-o", help="A new folder for report.json and report.html."),
    scheme_name: str = KeyOnlySchemeOpt,
    model: Optional[Path] = ModelOpt,
    fpr: float = typer.Option(DEFAULT_FPR, help="False-positive rate of the verdict (p <= fpr)."),
) -> None:
    """Detect the mark in FILES and write the evidence: verdicts, p-values, the configuration, the key's
    id and commitment, input SHA-256s, versions, the command, and plots (per-token evidence, windowed
    scan, null distribution). Re-check it with: wm evidence check OUTPUT/report.json -k KEY_FILE."""
    fpr = run_guarded(check_fpr_option, fpr)
    if output.exists():
        die(f"{output} already exists; choose a new folder for the report")
    if not output.parent.is_dir():
        die(f"{output.parent} is not a folder; cannot create {output.name} there")
    scheme = run_guarded(scheme_args.build, scheme_name)
    if not isinstance(getattr(scheme, "key", None), SecretKey):
        die(f"evidence needs a wmkit key file (-k), whose commitment the report carries; {scheme.name} was given another key")
    if scheme.capabilities.needs_model:
        die(f"{scheme.name}'s detector runs the generating model; evidence takes key-only schemes")
    tokenizer_name = str(model) if model else DEFAULT_TOKENIZER
    options = []  # the scheme's whole config, spelled as options: the command does not depend on defaults
    for k, v in scheme.config().items():
        if k in NAMED_PARAMS:
            options += [f"--{k.replace('_', '-')}", str(v)]
        elif k not in ("scheme", "prf_version"):
            options += ["-P", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    command = ["wm", "evidence", "text", *map(str, files), "-s", scheme.name, *options,
               "-k", str(scheme_args.key_file) if scheme_args.key_file else "$WMKIT_KEY", "--fpr", repr(fpr),
               *(["--model", str(model)] if model else []), "-o", "NEW_FOLDER"]

    def build() -> dict[str, Any]:
        tok = _tokenizer(tokenizer_name)
        return text_report([str(f) for f in files], scheme, tok, fpr=fpr, key_id=scheme.key.fingerprint(),
                           commitment=scheme.key.commitment(), tokenizer_name=tokenizer_name, command=command,
                           base=output)

    report = run_guarded(build)
    output.mkdir()
    write_file(output / "report.json", json.dumps(report, indent=1) + "\n")
    write_file(output / "report.html", render_html(report))
    for item, r in zip(report["inputs"], report["results"]):
        verdict = "watermarked" if r["watermarked"] else "not watermarked"
        stderr.print(f"{item['path']}: {verdict} (p = {r['p_value']:.3g}, {r['tokens_scored']} tokens scored)", markup=False)
    stderr.print(f"wrote {output / 'report.json'} and {output / 'report.html'}; reproduce: {shlex.join(command)}", markup=False)


@evidence_app.command("check")
def check(
    report_file: Path = typer.Argument(..., help="A report.json written by wm evidence text."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", "-k", help="The revealed key file (else $WMKIT_KEY).", show_default=False),
) -> None:
    """Recompute every figure of REPORT from the revealed key and the inputs beside it; exit 0 only if the
    key opens the report's commitment and every figure matches, 1 if the evidence does not hold, 2 on bad input."""
    key = run_guarded(load_key, key_file=key_file)

    def build(config: dict[str, Any], k: SecretKey) -> Any:
        config = dict(config)
        name = config.pop("scheme", None)
        if name not in SCHEMES:
            raise InputError(f"the report names an unknown scheme {name!r}")
        return SCHEMES[name].from_config(config, k)

    problems = run_guarded(check_report, report_file, key, build, _tokenizer)
    if problems:
        for p in problems:
            stderr.print(f"wm: evidence does not hold: {p}", markup=False)
        raise typer.Exit(1)
    stderr.print(f"{report_file}: the key opens the commitment and every figure matches", markup=False)

