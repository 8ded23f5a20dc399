"""``wm scan``: detect a watermark in every document of a corpus (files, folders, JSONL), resumably."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import InputError
from ..models import load_tokenizer
from ..scan import MAX_DOC_BYTES, InputSpec, check_inputs, open_output, run_scan
from ..watermark.text.detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, resolve_null
from .common import (
    CorpusArg, FieldOpt, GlobOpt, KeyOnlySchemeOpt, ModelOpt, NullOpt, SchemeArgs, check_fpr_option, die, key_id, run_guarded,
    scheme_options, stderr,
)


@scheme_options
def scan(
    scheme_args: SchemeArgs,
    inputs: list[str] = CorpusArg,
    output: Path = typer.Option(..., "--output", "-o", help="Output folder: part-NNNNN.jsonl per shard + _manifest.json (resumable)."),
    scheme_name: str = KeyOnlySchemeOpt,
    model: Optional[Path] = ModelOpt,
    glob: str = GlobOpt,
    field: Optional[str] = FieldOpt,
    id_field: Optional[str] = typer.Option(None, "--id-field", help="JSON field holding a document id (default: file:line).", show_default=False),
    fpr: float = typer.Option(DEFAULT_FPR, help="False-positive rate of each verdict (p <= fpr)."),
    min_tokens: int = typer.Option(DEFAULT_MIN_TOKENS, help="Fewest scorable tokens to give a verdict."),
    windowed: bool = typer.Option(False, "--windowed", help="Locate a marked passage in each document."),
    workers: int = typer.Option(1, "--workers", "-j", help="Processes scoring shards in parallel (0: one per core)."),
    shard_docs: int = typer.Option(2000, help="Documents per shard (memory: about 2 x workers x shard_docs documents)."),
    out_format: str = typer.Option("jsonl", "--format", help="Part files: jsonl or parquet (needs pyarrow)."),
    engine: str = typer.Option("local", "--engine", help="local (processes on this machine) or ray (--workers actors on a Ray cluster; needs ray)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="The Ray cluster (auto, ray://HOST:10001); default: a local Ray instance.", show_default=False),
    null: Optional[str] = NullOpt,
    max_doc_mb: float = typer.Option(MAX_DOC_BYTES / 2**20, "--max-doc-mb", help="A larger document gets an error row, not a score (check it alone with wm detect, which streams)."),
) -> None:
    """Score every document; one row each (id, source, tokens, statistic, z, p-value, decision or error).

    A rerun with the same output and options skips the shards already written; an output folder
    without a manifest, or from another scan, is refused. Exit 0 when the scan completes (documents
    that cannot be scored get an error row); 2 on a usage error.
    """
    scheme = run_guarded(scheme_args.build, scheme_name)
    caps = scheme.capabilities
    if caps.needs_model:
        die(f"{scheme.name}'s detector runs the generating model; wm scan takes key-only schemes")
    if windowed and not caps.windowed:
        die(f"--windowed is not available for {scheme.name}")
    if shard_docs < 1:
        die(f"--shard-docs must be >= 1, got {shard_docs}")
    if out_format not in ("jsonl", "parquet"):
        die(f"--format must be jsonl or parquet, got {out_format!r}")
    if out_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            die("--format parquet needs pyarrow (pip install 'wmkit[parquet]')")
    if engine not in ("local", "ray"):
        die(f"--engine must be local or ray, got {engine!r}")
    if ray_address is not None and engine != "ray":
        die("--ray-address applies to --engine ray")
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            die("--engine ray needs Ray (pip install 'wmkit[ray]')")
    n_workers = (os.cpu_count() or 1) if workers == 0 else workers
    if n_workers < 1:
        die(f"--workers must be >= 0, got {workers}")
    fpr = run_guarded(check_fpr_option, fpr)  # every check before the output folder is made
    if min_tokens < 1:
        die(f"--min-tokens must be >= 1, got {min_tokens}")
    if not 0 < max_doc_mb < 2**20:
        die(f"--max-doc-mb must be positive, got {max_doc_mb}")
    null_name = run_guarded(resolve_null, caps, null)
    spec = InputSpec(tuple(inputs), glob, field, id_field, shard_docs, int(max_doc_mb * 2**20))
    run_guarded(check_inputs, spec)
    det_opts: dict[str, Any] = {"fpr": fpr, "min_tokens": min_tokens, "null": null_name}
    kid = key_id(scheme)
    config = {"scheme": scheme.config(), "key_id": kid, "null": null_name, "fpr": fpr, "min_tokens": min_tokens,
              "windowed": windowed, "model": str(model) if model else None, "format": out_format, **spec.config()}
    run_guarded(open_output, output, config)  # a foreign or mismatched output folder: refused before any work
    run_guarded(load_tokenizer, model)  # a bad --model: one line, before any folder is made
    stderr.print(f"scanning with {scheme.name} {json.dumps(scheme.config())}, key id {kid}, null {null_name}, "
                 f"FPR {fpr:g}, model {model or 'default'}", markup=False)
    t0, stats = time.perf_counter(), {"docs": 0, "tokens": 0}
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=None), TextColumn("{task.fields[rate]}"),
                  TimeElapsedColumn(), console=stderr, transient=False) as bar:
        task = bar.add_task("scanning", total=None, rate="")

        def on_shard(rows: list[dict[str, Any]]) -> None:
            stats["docs"] += len(rows)
            stats["tokens"] += sum(r.get("tokens_scored", 0) for r in rows)
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=len(rows),
                       rate=f"{stats['docs']:,} docs, {stats['docs'] / dt:,.0f} docs/s, {stats['tokens'] / dt:,.0f} tokens/s")

        try:
            counts = run_scan(spec, scheme, output, config, model=str(model) if model else None, det_opts=det_opts,
                              windowed=windowed, workers=n_workers, on_shard=on_shard, engine=engine,
                              ray_address=ray_address, key_id=kid)
        except InputError as e:
            die(str(e))
    stderr.print(f"wrote {counts['shards']} shard(s), {counts['docs']:,} document(s) ({counts['errors']:,} with an error) "
                 f"to {output}; skipped {counts['skipped']} finished shard(s)", markup=False)
