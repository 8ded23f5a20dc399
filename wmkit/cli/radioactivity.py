"""``wm radioactivity``: was a suspect model trained on our marked text? (:mod:`wmkit.forensics.radioactivity`)

A model folder or ``.gguf`` file is the open setting (our texts read through it, its greedy choices
scored); an ``http(s)://`` URL is the closed setting (it writes from prompts at ``/v1/completions``,
its tokens scored, optionally only after the windows our texts hold). Prints one JSON object with
``p_value``, ``statistic``, ``scored`` and ``setting``. A closed run that loses the suspect midway
scores what it gathered, says so (``"partial": true``) and exits 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import InputError
from ..files import read_text
from .common import (ApiKeyEnvOpt, HeaderOpt, InsecureOpt, SchemeArgs, check_fpr_option, die, error, read_texts,
                     run_guarded, scheme_options, stderr)


MAX_READ = 2048  # tokens of one text read through the suspect (the default LM's context is 8,192)


def _prompts(path: Path | None, n: int) -> list[str]:
    if path is not None:
        prompts = [ln.strip() for ln in read_text(str(path)).splitlines() if ln.strip()]
    else:
        from importlib.resources import files

        prompts = [ln.strip() for ln in (files("wmkit") / "data" / "prompts.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not prompts:
        raise InputError("--prompts: no prompts")
    return [prompts[i % len(prompts)] for i in range(n)]


@scheme_options
def radioactivity(
    ctx: typer.Context,
    scheme_args: SchemeArgs,
    suspect: str = typer.Option(..., "--suspect", help="The suspect: a model folder or .gguf file (open setting) or an "
                                "OpenAI-compatible URL (closed setting)."),
    scheme_name: str = typer.Option("kgw", "--scheme", "-s", help="Our scheme: kgw, unigram, gumbel, synthid."),
    texts: list[Path] = typer.Option([], "--texts", help="Our marked texts (wm generate -o JSON lines, other JSON lines with "
                                     "'text', or plain files); repeatable. Open setting: read through the suspect. Closed: "
                                     "the windows the filter keeps.", show_default=False),
    human: int = typer.Option(200, "--human", help="Open setting: also read this many shipped human news articles (never "
                              "marked: the tape alone; the test's power where our texts' own coins are excluded, e.g. unigram)."),
    use_filter: bool = typer.Option(True, "--filter/--no-filter", help="Closed setting: score only windows our texts hold."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Closed setting: prompts, one per line (default: the shipped prompts).", show_default=False),
    max_total: int = typer.Option(100_000, "--max-generated", help="Closed setting: most tokens to ask for in all."),
    max_tokens: int = typer.Option(200, "--max-tokens", help="Closed setting: tokens per completion."),
    temperature: float = typer.Option(0.8, help="Closed setting: the suspect's sampling temperature."),
    time_limit: float = typer.Option(3600.0, "--time-limit", help="Closed setting: stop asking after this many seconds."),
    api_key_env: Optional[str] = ApiKeyEnvOpt,
    header: list[str] = HeaderOpt,
    insecure: bool = InsecureOpt,
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="The model our texts were marked with (its tokenizer; "
                                             "default: SmolLM2-135M-Instruct).", show_default=False),
    batch_size: int = typer.Option(8, help="Open setting: texts per forward pass."),
    fpr: float = typer.Option(1e-3, help="False-positive rate of the verdict (p <= fpr)."),
    min_scored: int = typer.Option(100, help="Fewest scored (context, token) pairs to give a verdict."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON object only."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="wm evidence radioactivity: a new folder for report.json, "
                                          "report.html and pairs.npz (the scored pairs, which a re-check needs with the key).",
                                          show_default=False),
) -> None:
    """Test whether SUSPECT was trained on text marked with our key: exact p-value over deduplicated (context, token) pairs.

    As ``wm evidence radioactivity -o FOLDER`` it also writes the evidence a third party re-checks with
    the key (``wm evidence check FOLDER/report.json -k KEY``)."""
    from ..forensics.radioactivity import closed_pairs, greedy_predictions, open_pairs, pair_scorer, radioactivity_test, window_filter
    from ..models import load_tokenizer, tokenizer_fingerprint
    from ..remote import Completions, suspect_headers

    check = run_guarded(check_fpr_option, fpr)
    evidence = "evidence" in ctx.command_path.split()
    if evidence and output is None:
        die("wm evidence radioactivity writes a report: give -o NEW_FOLDER")
    if output is not None:
        from .evidence import _new_folder

        _new_folder(output)
    if min(max_total, max_tokens, batch_size, min_scored) < 1 or temperature < 0 or time_limit <= 0 or human < 0:
        die("--max-generated, --max-tokens, --batch-size and --min-scored must be >= 1; --temperature, --human >= 0; "
            "--time-limit > 0")
    scheme = run_guarded(scheme_args.build, scheme_name)
    scorer = run_guarded(pair_scorer, scheme)
    closed = suspect.startswith(("http://", "https://"))
    tok = run_guarded(load_tokenizer, tokenizer) if closed else None
    ours = run_guarded(read_texts, texts) if texts else []
    row: dict[str, Any] = {"suspect": suspect, "scheme": scheme_name}
    partial: str | None = None
    t0 = time.monotonic()
    if not closed:
        if not ours:
            die("the open setting reads our marked texts through the suspect: give --texts")
        from ..models import load_lm

        lm, tok = run_guarded(load_lm, suspect)
        mine = run_guarded(load_tokenizer, tokenizer)
        if tokenizer_fingerprint(tok) != tokenizer_fingerprint(mine):
            die("the suspect's tokenizer is not the one our texts were marked with (--tokenizer): the open setting needs "
                "the same token ids; use the closed setting (a URL) for another tokenizer")
        from ..watermark.text.reference import reference_texts

        people = reference_texts("news")[:human] if human else []
        ids = [run_guarded(_ids, tok, t)[:MAX_READ] for t in ours + people]
        preds = greedy_predictions(lm, ids, batch_size)
        pairs = open_pairs(scorer, ids, preds, marked=[True] * len(ours) + [False] * len(people))
        row.update({"texts": len(ours), "human_texts": len(people)})
        setting = "open"
    else:
        headers = run_guarded(suspect_headers, suspect, api_key_env, header, insecure)
        api = Completions(suspect, headers, 120.0)
        allowed = window_filter([_ids(tok, t) for t in ours], scorer.width) if (ours and use_filter) else None
        gens = []
        for i, p in enumerate(_prompts(prompts, -(-max_total // max_tokens))):
            if time.monotonic() - t0 > time_limit:
                partial = f"stopped at --time-limit {time_limit:g} s"
                break
            try:
                gens.append(_ids(tok, api.complete(p, max_tokens, temperature, seed=i)[0]))
            except InputError as e:
                partial = str(e)
                break
        pairs = closed_pairs(scorer, gens, allowed)
        setting = "closed" + ("+filter" if allowed is not None else "")
        row.update({"queries": api.calls, "generated_tokens": sum(len(g) for g in gens)})
    try:
        det = radioactivity_test(pairs, check, setting, min_scored)
    except InputError as e:
        if partial:
            error(partial)
        die(str(e))
    row.update({"setting": setting, "p_value": det.p_value, "statistic": det.statistic, "scored": det.n_scored,
                "verdict": "radioactive" if det.decision else "not shown", "fpr": check, "method": det.method,
                "seconds": round(time.monotonic() - t0, 1), **{k: v for k, v in det.details.items() if k not in row}})
    if partial:
        row["partial"], row["stopped"] = True, partial
    if output is not None:
        _evidence(output, pairs, scheme, suspect, row, check, ctx)
        row["report"] = str(output / "report.json")
    typer.echo(json.dumps(row))
    if not as_json:
        stderr.print(f"{setting}: {det.n_scored} pairs scored, p = {det.p_value:.3g} -> {row['verdict']} at FPR {check:g}",
                     markup=False)
    if partial:
        error(f"partial run: {partial}")
        raise typer.Exit(2)


def _evidence(output: Path, pairs: Any, scheme: Any, suspect: str, row: dict[str, Any], fpr: float, ctx: typer.Context) -> None:
    """Write the report folder: the scored pairs, the test's counts and the figures recomputed from them."""
    import sys

    from ..evidence import radioactivity_report
    from .evidence import _make_folder, _write

    test = {k: row[k] for k in ("setting", "candidates", "not_fresh", "filtered", "deduplicated", "queries",
                                "generated_tokens", "texts", "human_texts", "partial") if k in row}
    given = sys.argv[len(ctx.command_path.split()):]
    command = ["wm", *ctx.command_path.split()[1:], *("NEW_FOLDER" if a == str(output) else a for a in given)]
    _make_folder(output)
    report = run_guarded(radioactivity_report, output, pairs.windows, pairs.tokens, scheme, suspect=suspect, test=test,
                         fpr=fpr, key_id=scheme.key.fingerprint(), commitment=scheme.key.commitment(), command=command)
    _write(output, report)


def _ids(tok: Any, text: str) -> Any:
    import torch

    from ..watermark.text.normalize import normalize_text

    return torch.tensor(tok(normalize_text(text), add_special_tokens=False)["input_ids"], dtype=torch.long)
