"""``wm detect``: check text files for a watermark with only the key and the tokenizer."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..errors import InputError, WmkitError
from ..files import display_path, iter_text
from ..models import load_lm, load_tokenizer
from ..calibration import profile_calibrations
from ..profiles import detect_profiles, load_profiles
from ..stats import Detection
from ..watermark.text import SCHEMES
from ..verify import Verifier
from ..watermark.text.detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, resolve_null
from .common import (
    EXIT_ERROR, ModelOpt, NullOpt, SchemeArgs, die, error, key_id, read_record, read_text, read_texts, run_guarded, scheme_from_config,
    scheme_options, stderr, terminal_safe,
)


VERDICT_CELL = {"watermarked": "[bold green]watermarked[/]", "not watermarked": "not watermarked",
                "undecided": "[bold yellow]undecided[/]"}


def _report_error(path: str, e: Exception, as_json: bool) -> None:
    msg = str(e) if str(e).startswith(path) or path == "-" else f"{path}: {e}"
    error(msg)
    if as_json:
        typer.echo(json.dumps({"file": display_path(path), "error": display_path(msg)}))


def _highlight(console: Console, tokenizer: Any, path: str, det: Detection) -> None:
    ev = det.evidence or {}
    text = Text(f"── {terminal_safe(path)} ──\n", style="bold")
    for tid, scored, green in zip(ev["token_ids"], ev["scored"], ev["green"]):
        piece = terminal_safe(tokenizer.decode([tid]), keep_newlines=True)
        text.append(piece, style="bold green" if green else "red" if scored else "dim")
    console.print(text)


def _spoof_test(scheme: Any, tokenizer: Any, reference: Optional[Path]) -> tuple[Any, list[torch.Tensor] | None]:
    """The spoof test for the key (proxy corpus: the shipped news) and the reference texts' ids."""
    from ..forensics.pairs import PAIR_SCHEMES
    from ..forensics.spoof import spoof_test_for

    if scheme.name not in PAIR_SCHEMES:
        raise InputError(f"--forensics covers {', '.join(PAIR_SCHEMES)}, not {scheme.name}")
    test = spoof_test_for(scheme, tokenizer)
    refs = None if reference is None else [_ids(tokenizer, t, None) for t in read_texts([reference])]
    return test, refs


def _ids(tokenizer: Any, text: str, prompt: Optional[str]) -> torch.Tensor:
    if prompt and text.startswith(prompt):
        text = text[len(prompt):]
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def _load_calibration(path: Path) -> dict[str, Any]:
    """A ``wm calibrate`` file's content (the :class:`~wmkit.verify.Verifier` checks it is for this scheme and key)."""
    try:
        return json.loads(read_text(str(path)))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e.msg})") from None


PROGRESS_FILES = 50  # a progress bar (on stderr) from this many files, or for a streamed text
SCORE_BATCH = 512  # texts per detect_many call


def _counted(pieces: Callable[[], Iterator[str]], bar: Progress) -> Callable[[], Iterator[str]]:
    """``pieces`` whose every pass shows the characters read so far on ``bar``'s description."""
    def again() -> Iterator[str]:
        seen = 0
        for piece in pieces():
            seen += len(piece)
            bar.update(bar.task_ids[0], description=f"streaming: {seen / 2**20:.1f}M characters read")
            yield piece

    return again


STREAM_CHARS = 2**19  # a longer text is streamed (detect_stream) when the scheme can: memory stays bounded
STREAM_LIMIT_MB = 1024.0  # the default input limit of the schemes that stream


def _peek(path: str, max_bytes: int, limit: int | None) -> tuple[str, Iterator[str] | None]:
    """The text of ``path`` if it has at most ``limit`` characters (``None``: no limit), else its
    first pieces joined and an iterator over the rest."""
    pieces = iter_text(path, max_bytes)
    head, size = [], 0
    for piece in pieces:
        head.append(piece)
        size += len(piece)
        if limit is not None and size > limit:
            return "".join(head), pieces
    return "".join(head), None


def _rereadable(path: str, head: str, rest: Iterator[str], max_bytes: int) -> Callable[[], Iterator[str]]:
    """A function returning the pieces of a streamed text afresh: the file re-read, or standard input
    spooled to a private temporary file (a stream is read twice: its normalisation profile, then
    its tokens)."""
    if path != "-":
        return lambda: iter_text(path, max_bytes)
    spool = tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogatepass")
    for piece in itertools.chain([head], rest):
        spool.write(piece)

    def again() -> Iterator[str]:
        spool.seek(0)
        while piece := spool.read(1 << 20):
            yield piece

    return again


def _read_all(files: list[str], as_json: bool, max_mb: float = 64.0) -> tuple[list[tuple[str, str]], bool]:
    """Read every file first; one that cannot be read is reported, not fatal. A file named twice gets two rows."""
    readable, failed = [], False
    for path in files:
        try:
            readable.append((path, read_text(path, int(max_mb * 2**20))))
        except WmkitError as e:
            failed = True
            _report_error(path, e, as_json)
    return readable, failed


def _detect_with_profiles(profiles_file: Path, files: list[str], model: Optional[Path], fpr: float, min_tokens: int,
                          as_json: bool, calibration_file: Optional[Path] = None, null: Optional[str] = None) -> None:
    profiles = run_guarded(load_profiles, profiles_file)
    calibrations = None
    if calibration_file is not None:
        def load() -> dict[str, Any]:
            cal = _load_calibration(calibration_file)
            nulls = [resolve_null(p.scheme.capabilities, null if p.scheme.capabilities.reference_null else None)
                     for p in profiles]
            return profile_calibrations(cal, profiles, [key_id(p.scheme) for p in profiles], nulls)

        calibrations = run_guarded(load)
    tokenizer = run_guarded(load_tokenizer, model)
    readable, failed = _read_all(files, as_json)
    results = run_guarded(detect_profiles, profiles, tokenizer, [t for _, t in readable], fpr, min_tokens, calibrations,
                          null)
    ids = {p.name: key_id(p.scheme) for p in profiles}
    table = Table("file", "best profile", "key id", "tokens", "p (Holm)", "verdict")
    for (path, _), res in zip(readable, results, strict=True):
        if isinstance(res, WmkitError):
            failed = True
            _report_error(path, res, as_json)
            continue
        row = {"file": display_path(path), "profile": res.profile, "key_id": ids[res.profile], "method": res.detection.method,
               "null": res.per_profile[res.profile]["null"], "tokens_scored": res.detection.n_scored,
               "p_value": res.p_value, "p_uncorrected": res.detection.p_value, "fpr": fpr, "verdict": res.verdict,
               "watermarked": res.verdict == "watermarked", **({"note": res.note} if res.note else {}),
               "profiles": {n: {**v, **({"key_id": ids[n]} if n in ids else {})} for n, v in res.per_profile.items()}}
        if as_json:
            typer.echo(json.dumps(row))
        else:
            table.add_row(Text(terminal_safe(path)), Text(terminal_safe(res.profile)), ids[res.profile],
                          str(res.detection.n_scored), f"{res.p_value:.3g}", VERDICT_CELL[res.verdict])
            if res.note:
                stderr.print(f"{terminal_safe(path)}: {res.note}", markup=False)
    if not as_json and table.row_count:
        console = Console(highlight=False)
        console.print(table)
        nulls = sorted({v["null"] for r in results if not isinstance(r, WmkitError) for v in r.per_profile.values() if "null" in v})
        console.print(f"verdict at FPR {fpr:g} over {len(profiles)} profile(s), Holm-Bonferroni; null: {', '.join(nulls)}"
                      + ("; calibrated p-values" if calibrations else ""), style="dim", markup=False)
    if failed:
        raise typer.Exit(EXIT_ERROR)


@scheme_options
def detect(
    scheme_args: SchemeArgs,
    files: list[str] = typer.Argument(..., help="Text files to check ('-' reads stdin)."),
    scheme_name: Optional[str] = typer.Option(None, "--scheme", "-s", help="Watermark scheme (default kgw): " + ", ".join(SCHEMES) + ".", show_default=False),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A generation record (a line of wm generate -o) or a JSON scheme config: detect with exactly its parameters.", show_default=False),
    model: Optional[Path] = ModelOpt,
    prompt: Optional[str] = typer.Option(None, "--prompt", help="The prompt the texts continue (ie, sweet, ewd score the text in its context; the others strip it if the text starts with it).", show_default=False),
    fpr: float = typer.Option(DEFAULT_FPR, help="False-positive rate of the verdict (p <= fpr)."),
    min_tokens: int = typer.Option(DEFAULT_MIN_TOKENS, help="Fewest scorable tokens to give a verdict."),
    ignore_repeated: bool = typer.Option(True, "--ignore-repeated/--count-repeated", help="Score each (context, token) n-gram once."),
    null: Optional[str] = NullOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file on stdout."),
    highlight: bool = typer.Option(False, "--highlight", help="Show green/red tokens in colour."),
    device: str = typer.Option("cpu", help="Where to score: cpu, or cuda (all files in one Triton launch)."),
    windowed: bool = typer.Option(False, "--windowed", help="Find a marked passage inside a longer text (max z over windows, Bonferroni-corrected p)."),
    calibration_file: Optional[Path] = typer.Option(None, "--calibration", help="A wm calibrate file for this key: add an empirical p-value (p_calibrated) from its null.", show_default=False),
    max_input_mb: Optional[float] = typer.Option(None, help=f"Refuse a file larger than this (MiB; default {STREAM_LIMIT_MB:g} for the schemes that stream a large file, 64 for the others).", show_default=False),
    profiles_file: Optional[Path] = typer.Option(None, "--profiles", help="A profiles file (every scheme, config and key reference served): test each text against all, Holm-corrected.", show_default=False),
    forensics: bool = typer.Option(False, "--forensics", help="Add p_spoof: does the mark show a learned (stolen) mark's artifacts? kgw, unigram, gumbel, synthid."),
    forensics_reference: Optional[Path] = typer.Option(None, "--forensics-reference", help="Genuine texts our model wrote (wm generate -o JSONL, ideally from the same prompts): p_spoof compares against them (implies --forensics).", show_default=False),
) -> None:
    """Report tokens scored, green fraction, z, p-value and verdict for each FILE.

    kgw, unigram and ie need only the key and the tokenizer (ie also its shipped entropy tagger);
    the sweet and ewd baselines load the generating model (--model) to find high-entropy tokens.
    Exit 0 whether or not a mark is found; 2 if any file could not be checked.
    """
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        die(f"--device {device!r} is not available here (use cpu{', cuda' if torch.cuda.is_available() else ''})")
    if profiles_file is not None:
        if (config_file or scheme_name or scheme_args != SchemeArgs() or windowed or highlight or device != "cpu"
                or prompt or forensics or forensics_reference is not None):
            die("--profiles names the schemes and keys; drop --scheme, --config, -k, --vllm-key, -P, the scheme options, "
                "--windowed, --highlight, --device, --prompt and --forensics")
        _detect_with_profiles(profiles_file, files, model, fpr, min_tokens, as_json, calibration_file, null)
        return
    forensics = forensics or forensics_reference is not None
    if forensics and windowed:
        die("--forensics tests whole texts against one key; drop --windowed")
    if windowed and calibration_file is not None:
        die("--calibration calibrates whole-text p-values, not the windowed scan's; drop --windowed or --calibration")
    if config_file is not None:
        config, recorded_id = run_guarded(read_record, config_file)
        explicit = getattr(SCHEMES.get(config.get("scheme")), "explicit_key_param", None)  # synthid's -P keys=...
        keys = [p for p in scheme_args.params if explicit and p.startswith(f"{explicit}=")]
        if (scheme_name is not None or any(x is not None for x in scheme_args.named())
                or len(scheme_args.params) > len(keys)):
            die("--config gives the scheme and its parameters; drop --scheme, --gamma, --delta, --context-width, --seeding, -P"
                + (f" (except -P {explicit}=..., the key)" if explicit else ""))
        if keys:
            if explicit in config:
                die(f"{config_file} holds {explicit}; drop -P {explicit}=...")
            config = {**config, explicit: keys[-1].split("=", 1)[1]}
        scheme = run_guarded(scheme_from_config, config, scheme_args.key_file, scheme_args.vllm_key)
        if recorded_id is not None and recorded_id != key_id(scheme):
            stderr.print(f"wm: warning: {config_file} was generated with key id {recorded_id}, but this key's id is "
                         f"{key_id(scheme)}: a wrong key finds no mark", markup=False)
    else:
        scheme = run_guarded(scheme_args.build, scheme_name or "kgw")
    scheme_name = scheme.name
    caps = scheme.capabilities
    if windowed and not caps.windowed:
        die(f"--windowed is not available for {scheme_name}")
    if device != "cpu" and not caps.device:
        die(f"--device applies to schemes with a batched kernel, not {scheme_name}")
    calibration = run_guarded(_load_calibration, calibration_file) if calibration_file is not None else None
    run_guarded(Verifier.checked_null, scheme, null, calibration)  # a wrong --null or calibration before any model loads
    lm = None
    if caps.needs_model:
        stderr.print(f"{scheme_name} is a baseline whose detector runs the generating model; loading it", markup=False)
        lm, tokenizer = run_guarded(load_lm, model)
    else:
        tokenizer = run_guarded(load_tokenizer, model)
    verifier = run_guarded(Verifier, scheme, tokenizer, fpr=fpr, min_tokens=min_tokens, null=null, calibration=calibration,
                           ignore_repeated_ngrams=ignore_repeated, model=lm)
    detector = verifier.detector
    spoof = run_guarded(_spoof_test, scheme, tokenizer, forensics_reference) if forensics else None
    console = Console(highlight=False)
    table = Table("file", "tokens", "green", "z", "p-value", "verdict", *(["p_spoof"] if spoof else []))
    kid = verifier.key_id
    if max_input_mb is None:
        max_input_mb = STREAM_LIMIT_MB if caps.streams else 64.0
    if not max_input_mb > 0:
        die(f"--max-input-mb must be positive, got {max_input_mb}")
    results: dict[int, Detection | WmkitError] = {}
    small: list[tuple[int, str]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr, transient=True,
                  disable=(len(files) < PROGRESS_FILES and not caps.streams) or not stderr.is_terminal) as bar:
        task = bar.add_task("reading", total=len(files))
        for i, path in enumerate(files):  # a text over STREAM_CHARS is scored as it is read, one chunk in memory
            try:
                text, rest = _peek(path, int(max_input_mb * 2**20), STREAM_CHARS if caps.streams else None)
                if rest is None:
                    small.append((i, text))
                elif prompt:
                    results[i] = InputError(f"{path}: over {STREAM_CHARS // 1024}k characters, so it is streamed, and "
                                            f"--prompt applies to texts read whole; check the text without its prompt")
                else:
                    bar.update(task, description=f"streaming {terminal_safe(path)}")
                    results[i] = detector.detect_stream(_counted(_rereadable(path, text, rest, int(max_input_mb * 2**20)),
                                                                 bar), windowed=windowed)
            except WmkitError as e:
                results[i] = e
            bar.update(task, advance=1, description="reading")
        try:
            texts = [t for _, t in small]
            batch: list[Detection | WmkitError] = []
            bar.update(task, description="scoring", completed=0, total=len(texts))
            for lo in range(0, len(texts), SCORE_BATCH):  # in batches: the bar moves, the results are the same
                part = texts[lo : lo + SCORE_BATCH]
                batch += verifier.detect(part, prompt, windowed, device) if device != "cpu" else \
                    run_guarded(verifier.detect, part, prompt, windowed)
                bar.update(task, advance=len(part))
        except (RuntimeError, ValueError) as e:
            die(f"cannot score on device {device!r}: {str(e).splitlines()[0]}")
    results.update((i, det) for (i, _), det in zip(small, batch, strict=True))
    failed = False
    for i, path in enumerate(files):
        det = results[i]
        if isinstance(det, WmkitError):
            failed = True
            _report_error(path, det, as_json)
            continue
        row = verifier.row(det, path)
        if spoof is not None:
            text = dict(small).get(i)
            row.update(spoof[0].test(_ids(tokenizer, text, prompt), spoof[1]) if text is not None else
                       {"p_spoof": None, "spoof_note": "streamed: --forensics reads texts whole"})
        if as_json:
            typer.echo(json.dumps(row))
        else:
            where = f" (tokens {row['window_tokens'][0]}-{row['window_tokens'][1]})" if windowed else ""
            green = "-" if row["green_fraction"] is None else f"{row['green_fraction']:.3f}"
            pcell = f"{det.p_value:.3g}" + (f" (calibrated {row['p_calibrated']:.3g})" if row.get("p_calibrated") else "")
            pspoof = [] if spoof is None else ["-" if row["p_spoof"] is None else f"{row['p_spoof']:.3g}"]
            table.add_row(Text(terminal_safe(path)), str(row["tokens_scored"]), green, f"{row['z']:.2f}", pcell,
                          VERDICT_CELL[row["verdict"]] + where, *pspoof)
            if row.get("note"):
                stderr.print(f"{terminal_safe(path)}: {row['note']}", markup=False)
        if highlight and det.evidence:  # with --json, stdout holds only JSON lines: the colours go to stderr
            _highlight(stderr if as_json else console, tokenizer, path, det)
        elif highlight:
            stderr.print(f"{terminal_safe(path)}: streamed (over {STREAM_CHARS // 1024}k characters): no per-token highlight", markup=False)
    if not as_json and table.row_count:
        console.print(table)
        console.print(f"verdict at FPR {fpr:g}; null: {detector.null}; key id {kid}; "
                      + ("calibrated p-values; " if calibration is not None else "")
                      + f"scheme {scheme.name}, {json.dumps(scheme.config())}", style="dim", markup=False)
        if spoof is not None:
            console.print("p_spoof: a small value says the mark looks learned (stolen), not generated with the key"
                          + (" (compared with the reference texts)" if spoof[1] is not None else
                             " (standard test; --forensics-reference calibrates it on genuine texts)"), style="dim", markup=False)
    if failed:
        raise typer.Exit(EXIT_ERROR)
