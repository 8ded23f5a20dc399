"""``wm generate``: complete prompts with a watermarked (or plain) model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress

from ..errors import InputError
from ..files import check_new, write_file
from ..models import load_lm, resolve_lm_path
from ..watermark.text.generate import generate_completions
from .common import ModelOpt, SchemeArgs, key_id, read_text, run_guarded, scheme_options, stderr


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


@scheme_options
def generate(
    scheme_args: SchemeArgs,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="One prompt.", show_default=False),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="A file with one prompt per line.", show_default=False),
    scheme_name: str = typer.Option("kgw", "--scheme", "-s", help="A scheme (see wm detect --help) or none."),
    model: Optional[Path] = ModelOpt,
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n", help="Tokens to generate per prompt."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for reproducible sampling.", show_default=False),
    batch_size: int = typer.Option(8, help="Prompts per generation batch."),
    chat: bool = typer.Option(False, "--chat/--no-chat", help="Wrap each prompt in the model's chat template."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write JSON lines here (must not exist).", show_default=False),
) -> None:
    """Generate completions; with -o write one JSON object per prompt, else print the completions."""
    run_guarded(_check_sampling, max_new_tokens, temperature, batch_size)  # before the model loads
    prompts = run_guarded(_prompts, prompt, prompts_file)
    scheme = None if scheme_name == "none" else run_guarded(scheme_args.build, scheme_name)
    if output is not None:
        run_guarded(check_new, output)  # fail before minutes of generation, not after
    model_path = run_guarded(resolve_lm_path, model)
    lm, tok = run_guarded(load_lm, model)
    with Progress(console=stderr, transient=True, disable=len(prompts) < 2) as bar:
        task = bar.add_task("generating", total=len(prompts))
        results = run_guarded(
            generate_completions, lm, tok, prompts, scheme, max_new_tokens=max_new_tokens, temperature=temperature,
            seed=seed, batch_size=batch_size, chat=chat, on_batch=lambda n: bar.advance(task, n),
        )
    config = scheme.config() if scheme is not None else {"scheme": "none"}
    if output is None:
        for r in results:
            typer.echo(r["completion"])
        return
    lines = [
        json.dumps({
            "prompt": r["prompt"], "completion": r["completion"], "scheme": config["scheme"], "config": config,
            "key_id": key_id(scheme) if scheme is not None else None,
            "model": str(model_path), "new_tokens": len(r["completion_ids"]), "seed": seed, "chat": chat,
            "temperature": temperature,
        })  # ASCII-escaped: no raw U+2028 or U+0085 to split a line
        for r in results
    ]
    run_guarded(write_file, output, "\n".join(lines) + "\n")
    stderr.print(f"wrote {len(lines)} completion(s) to {output}", markup=False)
