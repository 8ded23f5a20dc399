"""``wm tagger train``: rebuild Invisible Entropy's entropy tagger from the Python standard library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import InputError
from ..models import cache_dir, load_lm
from ..watermark.text.ie.corpus import EntropyCorpus, build_corpus, split_files, stdlib_files
from ..watermark.text.ie.tagger import evaluate_tagger, tokenizer_fingerprint, train_tagger
from ..files import check_new
from .common import ModelOpt, run_guarded, stderr

tagger_app = typer.Typer(help="Invisible Entropy's entropy tagger.", no_args_is_help=True)


def corpora(model: Optional[Path], log: Any) -> tuple[Any, Any, EntropyCorpus, EntropyCorpus]:
    """``(lm, tokenizer, train, held_out)``: the LM's entropies over the stdlib files, cached on disk."""
    lm, tok = load_lm(model)
    train_files, held_files = split_files(stdlib_files())
    folder = cache_dir() / "ie" / tokenizer_fingerprint(tok)
    out = []
    for name, files in (("train", train_files), ("heldout", held_files)):
        path = folder / f"{name}-{'-'.join(str(model or 'default').split('/'))[-40:]}.npz"
        if path.is_file():
            out.append(EntropyCorpus.load(path))
            continue
        log(f"computing the LM's entropies over {len(files)} {name} files (first run only; minutes)")
        corpus = build_corpus(lm, tok, files)
        path.parent.mkdir(parents=True, exist_ok=True)
        corpus.save(path, overwrite=True)  # a cache: a stale or half-built one is replaced
        out.append(corpus)
    return lm, tok, out[0], out[1]


@tagger_app.command("train")
def train(
    output: Path = typer.Option(..., "--output", "-o", help="Tagger file to write (.safetensors; never overwritten)."),
    kind: str = typer.Option("causal", help="causal (token-id convolutions, the default) or paper (MiniLM + MLP)."),
    model: Optional[Path] = ModelOpt,
    epochs: int = typer.Option(8, help="Training epochs."),
    seed: int = typer.Option(0, help="Random seed (the run is deterministic for a seed on one machine)."),
) -> None:
    """Train a tagger on SmolLM2's entropies over the stdlib's top-level modules; report held-out accuracy."""
    def log(msg: str) -> None:
        stderr.print(msg, markup=False)

    def run() -> dict[str, Any]:
        check_new(output)  # fail before minutes of training, not after
        if kind not in ("causal", "paper"):
            raise InputError(f"--kind must be causal or paper, got {kind!r}")
        if epochs < 1:
            raise InputError(f"--epochs must be >= 1, got {epochs}")
        lm, tok, tr, held = corpora(model, log)
        log(f"training a {kind} tagger on {tr.tokens()} positions ({len(set(tr.files))} files)")
        tagger = train_tagger(kind, tr, tok, epochs=epochs, seed=seed, log=log,
                              lm_embeddings=lm.get_input_embeddings().weight.detach() if kind == "causal" else None)
        metrics = {"held_out": evaluate_tagger(tagger, held.ids, held.entropy, max_positions=4000 if kind == "paper" else None),
                   "train_files": sorted(set(tr.files)), "held_out_files": sorted(set(held.files)),
                   "train_positions": tr.tokens(), "epochs": epochs, "seed": seed, "parameters": tagger.n_parameters()}
        tagger.save(output, metrics)
        return metrics

    metrics = run_guarded(run)
    typer.echo(f"wrote {output} ({metrics['parameters']:,} parameters at detection)")
    typer.echo("held-out stdlib files: tau  accuracy  constant  AUROC")
    for tau, m in metrics["held_out"]["taus"].items():
        typer.echo(f"  {tau:>4}  {m['accuracy']:.3f}  {m['constant_accuracy']:.3f}  {m['auroc']:.3f}")


@tagger_app.command("show")
def show(path: Optional[Path] = typer.Argument(None, help="Tagger file (default: the shipped causal tagger).")) -> None:
    """Print a tagger's config and metrics (held-out accuracy, training files) as JSON."""
    from ..watermark.text.ie.tagger import tagger_info

    typer.echo(json.dumps(run_guarded(tagger_info, path), indent=1))
