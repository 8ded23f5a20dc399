"""``wm generate``: complete prompts with a watermarked (or plain) model."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import Progress

from ..errors import InputError
from ..files import check_new
from ..models import load_lm, resolve_lm_path
from ..engine import generate_completions
from .common import ModelOpt, SchemeArgs, die, key_id, read_text, run_guarded, scheme_options, stderr


def _prompts(prompt: Optional[str], prompts_file: Optional[Path]) -> list[str]:
    if (prompt is None) == (prompts_file is None):
        raise InputError("give exactly one of --prompt TEXT or --prompts FILE")
    if prompt is not None:
        if not prompt.strip():
            raise InputError("--prompt is empty")
        return [prompt]
    return [ln for ln in read_text(str(prompts_file)).splitlines() if ln.strip()]


MAX_NEW_TOKENS = 8192  # the default model's context


def _check_sampling(max_new_tokens: int, temperature: float, batch_size: int) -> None:
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"--max-new-tokens must be in 1..{MAX_NEW_TOKENS} (the model's context), got {max_new_tokens}")
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 100.0):
        raise InputError(f"--temperature must be a number in [0, 100], got {temperature}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")


class _Records:
    """The ``-o`` file, written a record at a time: the file is claimed before the model loads (the
    loser of two runs to one path stops at once), each completion is appended as one line and synced
    as its batch finishes, so an interrupted run keeps every finished record; ``--resume`` reads
    them back (a last line cut short by a crash is dropped) and generates only the rest."""

    def __init__(self, path: Path, header: dict[str, Any], resume: bool):
        self.path, self.header, self.done = path, header, {}
        self.created = not (resume and path.exists())
        if resume and path.exists():
            self._read_back()
            flags = os.O_WRONLY | os.O_APPEND
        else:
            if path.exists():
                raise InputError(f"{path} already exists; refusing to overwrite it (choose another -o, or --resume to "
                                 f"continue an interrupted run)")
            check_new(path)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            self.fd = os.open(path, flags, 0o666)
        except FileExistsError:
            raise InputError(f"{path} already exists (another run made it meanwhile?); choose another -o, or --resume") from None
        except OSError as e:
            raise InputError(f"cannot write {path}: {e.strerror}") from None

    def _read_back(self) -> None:
        raw = self.path.read_bytes()
        keep = raw[: raw.rfind(b"\n") + 1]  # a last line without its newline was cut by a crash
        for n, line in enumerate(keep.splitlines(), 1):
            try:
                rec = json.loads(line)
                mine = {k: rec[k] for k in self.header}
                index = int(rec["index"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
                raise InputError(f"{self.path}:{n}: not a record of wm generate -o with --resume (or from before "
                                 f"records were numbered); choose another -o") from None
            if mine != self.header:
                diff = next(k for k in self.header if mine[k] != self.header[k])
                raise InputError(f"{self.path}:{n}: written with another {diff} ({json.dumps(mine[diff])}); "
                                 f"resume with the same options, or choose another -o")
            self.done[index] = rec
        if len(keep) != len(raw):
            with open(self.path, "r+b") as f:  # drop the partial line before appending
                f.truncate(len(keep))

    def add(self, records: list[dict[str, Any]]) -> None:
        """Append whole records (one write each, then fsync)."""
        for rec in records:
            os.write(self.fd, (json.dumps(rec) + "\n").encode("utf-8"))  # ASCII-escaped: no raw U+2028 to split a line
            self.done[rec["index"]] = rec
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the file; one this run created and wrote nothing to (the model failed to load) is removed."""
        os.close(self.fd)
        if self.created and not self.done:
            self.path.unlink(missing_ok=True)


@scheme_options
def generate(
    scheme_args: SchemeArgs,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One prompt.", show_default=False),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="A file with one prompt per line.", show_default=False),
    scheme_name: str = typer.Option("kgw", "--scheme", "-s", help="A scheme (see wm detect --help) or none."),
    model: Optional[Path] = ModelOpt,
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n", help="Tokens to generate per prompt."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0 = greedy)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for reproducible sampling (prompt i uses seed + i, in any batch, so a resumed run gives what one run would, and wm serve gives prompt i the same tokens with seed + i).", show_default=False),
    batch_size: int = typer.Option(8, help="Prompts per generation batch."),
    chat: bool = typer.Option(True, "--chat/--no-chat", help="Wrap each prompt in the model's chat template (--no-chat: continue the prompt as raw text)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write JSON lines here, each as it completes (must not exist, unless --resume).", show_default=False),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted -o file: keep its records, generate the missing ones."),
) -> None:
    """Generate completions; with -o write one JSON object per prompt, else print the completions
    (several prompts: each under a '### prompt N' line)."""
    run_guarded(_check_sampling, max_new_tokens, temperature, batch_size)  # before the model loads
    prompts = run_guarded(_prompts, prompt, prompts_file)
    if resume and output is None:
        die("--resume continues an -o file; give -o")
    scheme = None if scheme_name == "none" else run_guarded(scheme_args.build, scheme_name)
    model_path = run_guarded(resolve_lm_path, model)
    config = scheme.config() if scheme is not None else {"scheme": "none"}
    header = {"scheme": config["scheme"], "config": config, "key_id": key_id(scheme) if scheme is not None else None,
              "model": str(model_path), "seed": seed, "chat": chat, "temperature": temperature, "max_new_tokens": max_new_tokens}
    records = run_guarded(_Records, output, header, resume) if output is not None else None  # claimed before minutes of work
    todo = [i for i in range(len(prompts)) if records is None or i not in records.done]
    if records is not None and records.done:
        stderr.print(f"{output}: {len(records.done)} of {len(prompts)} completion(s) already written; generating "
                     f"{len(todo)}", markup=False)
    written = 0
    try:
        lm, tok = run_guarded(load_lm, model) if todo else (None, None)
        with Progress(console=stderr, transient=True, disable=len(todo) < 2) as bar:
            task = bar.add_task("generating", total=len(todo))
            for b in range(0, len(todo), batch_size):
                idx = todo[b : b + batch_size]
                results = run_guarded(
                    generate_completions, lm, tok, [prompts[i] for i in idx], scheme, max_new_tokens=max_new_tokens,
                    temperature=temperature, seed=None if seed is None else [seed + i for i in idx], batch_size=batch_size, chat=chat)
                bar.advance(task, len(idx))
                if records is None:
                    for i, r in zip(idx, results):
                        if len(prompts) > 1:
                            typer.echo(f"### prompt {i + 1}: {r['prompt'][:60]}")
                        typer.echo(r["completion"])
                    continue
                records.add([{"index": i, "prompt": r["prompt"], "completion": r["completion"], **header,
                              "new_tokens": len(r["completion_ids"])} for i, r in zip(idx, results)])
                written += len(idx)
    except KeyboardInterrupt:
        if records is not None:
            stderr.print(f"wm: interrupted: {len(records.done)} of {len(prompts)} completion(s) are in {output}; "
                         f"finish with the same command and --resume", markup=False)
        raise typer.Exit(130) from None
    finally:
        if records is not None:
            records.close()
    if records is not None:
        stderr.print(f"wrote {written} completion(s) to {output} ({len(records.done)} of {len(prompts)} in all)", markup=False)
