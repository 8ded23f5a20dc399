"""``wm demo``: the main job end to end on the default model with a throwaway key."""

from __future__ import annotations

import time
from typing import Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ..keys import SecretKey
from ..models import load_lm
from ..watermark.text import make_scheme
from ..engine import generate_completions
from ..watermark.text.detector import verdict_detector
from .common import ModelOpt, die, run_guarded
from .generate import MAX_NEW_TOKENS

DEMO_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def demo(
    prompt: str = typer.Option(DEMO_PROMPT, "--prompt", "-p", help="The prompt to complete."),
    scheme_name: str = typer.Option("kgw", "--scheme", "-s", help="kgw or unigram."),
    max_new_tokens: int = typer.Option(150, "--max-new-tokens", "-n", help="Tokens per completion."),
    seed: int = typer.Option(0, help="Sampling seed."),
    model: Optional[str] = ModelOpt,
) -> None:
    """Generate a marked and an unmarked completion of one prompt, detect both, show them side by side."""
    console = Console(highlight=False)
    if scheme_name not in ("kgw", "unigram"):
        die(f"the demo shows kgw or unigram (green lists), got {scheme_name!r}; wm generate and wm detect take every scheme")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:  # before the model loads
        die(f"--max-new-tokens must be in 1..{MAX_NEW_TOKENS}, got {max_new_tokens}")
    if not prompt.strip():
        die("--prompt is empty")
    scheme = run_guarded(make_scheme, scheme_name, SecretKey.generate())
    t0 = time.perf_counter()
    lm, tok = run_guarded(load_lm, model)
    console.print(f"model loaded in {time.perf_counter() - t0:.1f} s; key: a fresh random 256-bit key (not saved)", style="dim")
    detector = run_guarded(verdict_detector, scheme, tok, None, min_tokens=1)
    table = Table(title=f"{scheme.name} {scheme.to_json()}", show_lines=True, expand=True)
    cells, verdicts = [], []
    for label, s in (("watermarked", scheme), ("unwatermarked", None)):
        (res,) = run_guarded(generate_completions, lm, tok, [prompt], s, max_new_tokens=max_new_tokens,
                             temperature=0.7, seed=seed, chat=True)
        det = run_guarded(detector.detect, res["completion"])
        table.add_column(label, ratio=1)
        cells.append(res["completion"].strip())
        verdicts.append(
            f"{'[bold green]WATERMARKED' if det.verdict == 'watermarked' else '[bold]' + det.verdict}[/]\n"
            f"tokens scored {det.n_scored}, green {det.details['green_fraction']:.2f} (null rate {det.details['gamma']:.3f}, "
            f"{detector.null} null), "
            f"z = {det.statistic:.2f}, p = {det.p_value:.2g} (FPR {det.fpr:g})"
        )
    table.add_row(*cells)
    table.add_row(*verdicts)
    console.print(Panel(prompt, title="prompt"))
    console.print(table)
    console.print(f"done in {time.perf_counter() - t0:.1f} s", style="dim")
