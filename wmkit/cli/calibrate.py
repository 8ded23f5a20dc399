"""``wm calibrate``: the false-positive rate of one key (or of every profile of a profiles file) on a corpus of
unmarked text the user owns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.progress import Progress

from ..calibration import PROFILES_FORMAT, calibrate
from ..errors import InputError
from ..files import check_new, write_file
from ..models import load_tokenizer
from ..profiles import load_profiles
from ..scan import InputSpec, check_inputs, iter_shards
from ..watermark.text.detector import DEFAULT_MIN_TOKENS, resolve_null, verdict_detector
from .common import (
    CorpusArg, FieldOpt, GlobOpt, KeyOnlySchemeOpt, ModelOpt, NullOpt, SchemeArgs, die, key_id, run_guarded, scheme_options, stderr,
)


@scheme_options
def calibrate_cmd(
    scheme_args: SchemeArgs,
    inputs: list[str] = CorpusArg,
    output: Path = typer.Option(..., "--output", "-o", help="calibration.json to write (never overwritten)."),
    scheme_name: str = KeyOnlySchemeOpt,
    model: Optional[Path] = ModelOpt,
    glob: str = GlobOpt,
    field: Optional[str] = FieldOpt,
    min_tokens: int = typer.Option(DEFAULT_MIN_TOKENS, help="Fewest scorable tokens for a document to count."),
    as_json: bool = typer.Option(False, "--json", help="Print the report (without the null p-values) as JSON."),
    profiles_file: Optional[Path] = typer.Option(None, "--profiles", help="A profiles file: calibrate every profile it lists (for wm detect --profiles --calibration).", show_default=False),
    null: Optional[str] = NullOpt,
) -> None:
    """Per length bucket: documents, z mean/sd, empirical FPR at 1e-2/1e-3/1e-4 with 95% Clopper-Pearson
    intervals, and a warning where this key is miscalibrated on this corpus. wm detect --calibration
    FILE then adds a calibrated p-value."""
    run_guarded(check_new, output)
    if profiles_file is not None:
        if scheme_args != SchemeArgs() or scheme_name != "kgw":
            die("--profiles names the schemes and keys; drop --scheme, -k, --vllm-key, -P and the scheme options")
        named = [(p.name, p.scheme) for p in run_guarded(load_profiles, profiles_file)]
    else:
        named = [(None, run_guarded(scheme_args.build, scheme_name))]
    for _, scheme in named:
        if scheme.capabilities.needs_model:
            die(f"{scheme.name}'s detector runs the generating model; calibrate a key-only scheme")
    if null is not None and not any(s.capabilities.reference_null for _, s in named):
        run_guarded(resolve_null, named[0][1].capabilities, null)
    spec = InputSpec(tuple(inputs), glob, field, None, 1000)
    run_guarded(check_inputs, spec)
    tokenizer = run_guarded(load_tokenizer, model)

    def detections(detector: Any, bar: Progress, task: Any) -> Iterator[Any]:
        for shard in iter_shards(spec):
            texts = [d[2] for d in shard.docs if d[3] is None]
            yield from detector.detect_many(texts)
            yield from (InputError(f"{d[1]}: {d[3]}") for d in shard.docs if d[3] is not None)  # counted as skipped
            bar.advance(task, len(shard.docs))

    reports = {}
    for name, scheme in named:  # one streaming pass over the corpus per profile
        detector = run_guarded(verdict_detector, scheme, tokenizer, null if scheme.capabilities.reference_null else None,
                               min_tokens=min_tokens)
        header = {"scheme": scheme.config(), "key_id": key_id(scheme), "null": detector.null, "min_tokens": min_tokens,
                  "inputs": spec.config()["inputs"]}
        with Progress(console=stderr, transient=True) as bar:
            task = bar.add_task(f"calibrating {name or scheme.name}", total=None)
            reports[name] = run_guarded(calibrate, detections(detector, bar, task), header)
    if profiles_file is not None:
        doc: dict[str, Any] = {"format": PROFILES_FORMAT, "profiles": reports}
        run_guarded(write_file, output, json.dumps(doc, indent=1) + "\n")
        for name, report in reports.items():
            _show(report, output, as_json, name)
        stderr.print(f"wrote {output}", markup=False)
        return
    report = reports[None]
    run_guarded(write_file, output, json.dumps(report, indent=1) + "\n")
    _show(report, output, as_json, None)
    stderr.print(f"wrote {output}", markup=False)


def _show(report: dict[str, Any], output: Path, as_json: bool, profile: str | None) -> None:
    """Print one calibration's table (or JSON without the null p-values) and warn where it is miscalibrated."""
    shown = {**report, "buckets": {k: {kk: vv for kk, vv in v.items() if kk != "null_p"} for k, v in report["buckets"].items()}}
    if as_json:
        typer.echo(json.dumps({**shown, "profile": profile} if profile else shown))
    else:
        label = f"profile {profile}: " if profile else ""
        typer.echo(f"{label}{report['documents']:,} documents scored ({report['skipped']:,} too short or unreadable); key {report['key_id']}")
        typer.echo(f"{'bucket':>9} {'docs':>7} {'z mean':>7} {'z sd':>6}   FPR at 1e-2 [95% CI]      at 1e-3 [95% CI]")
        for name, b in [*report["buckets"].items(), ("all", report["overall"])]:
            cells = [f"{b['fpr'][lv]['observed']:.4f} [{b['fpr'][lv]['ci95'][0]:.4f}, {b['fpr'][lv]['ci95'][1]:.4f}]"
                     + (" !" if b["fpr"][lv]["miscalibrated"] else "  ") for lv in ("0.01", "0.001")]
            sd = "-" if b["z_sd"] is None else f"{b['z_sd']:.2f}"
            typer.echo(f"{name:>9} {b['docs']:>7} {b['z_mean']:>7.2f} {sd:>6}   {cells[0]}  {cells[1]}")
    bad = [f"{name} at {lv}" for name, b in report["buckets"].items() for lv, f in b["fpr"].items() if f["miscalibrated"]]
    if bad:
        who = f"profile {profile}'s key" if profile else "this key"
        stderr.print(f"wm: warning: {who}'s false-positive rate is above nominal on this corpus ({', '.join(bad)}); "
                     f"use the calibrated p-values (wm detect --calibration {output})", markup=False)
