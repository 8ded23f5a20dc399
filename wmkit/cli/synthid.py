"""``wm synthid train``: fit SynthID's Bayesian detector for one configuration and key on the default model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import typer

from ..errors import InputError
from ..files import check_new
from ..models import load_lm, tokenizer_fingerprint
from ..engine import generate_completions
from ..watermark.text.synthid import detector_config
from ..watermark.text.synthid_bayes import train_bayesian
from .common import ModelOpt, SchemeArgs, run_guarded, scheme_options, stderr

synthid_app = typer.Typer(help="SynthID-Text: train its Bayesian detector.", no_args_is_help=True)
PROMPTS = Path(__file__).resolve().parents[1] / "data" / "prompts.txt"


@synthid_app.command("train")
@scheme_options
def train(
    scheme_args: SchemeArgs,
    output: Path = typer.Option(..., "--output", "-o", help="Weights file to write (.safetensors; never overwritten)."),
    model: Optional[Path] = ModelOpt,
    texts: int = typer.Option(200, help="Marked and as many unmarked completions (20% held back for the report)."),
    tokens: int = typer.Option(200, help="New tokens per completion."),
    epochs: int = typer.Option(300, help="Training epochs (full batch, Adam)."),
    seed: int = typer.Option(0, help="Sampling and training seed."),
) -> None:
    """Generate marked and unmarked completions, fit transformers' BayesianDetectorModel on their g-values,
    write it; detect with: wm detect -s synthid -P score=bayesian -P weights=FILE (and the same key options)."""
    def log(msg: str) -> None:
        stderr.print(msg, markup=False)

    def run() -> dict[str, Any]:
        check_new(output)
        if texts < 10 or not 16 <= tokens <= 1024 or epochs < 1:
            raise InputError("--texts must be >= 10, --tokens in 16..1024, --epochs >= 1")
        scheme = scheme_args.build("synthid")
        if scheme.score == "bayesian" or scheme.num_leaves != 2:
            raise InputError("train for the non-distortionary tournament (num_leaves 2) with a mean or weighted-mean score")
        lm, tok = load_lm(model)
        base = [ln for ln in PROMPTS.read_text(encoding="utf-8").splitlines() if ln.strip()]
        prompts = [base[i % len(base)] for i in range(texts)]
        det = scheme.detector(tok, min_tokens=1)
        sets = []
        for label, s in (("marked", scheme), ("unmarked", None)):
            log(f"generating {texts} {label} completions of {tokens} tokens")
            out = generate_completions(lm, tok, prompts, s, max_new_tokens=tokens, min_new_tokens=tokens, seed=seed,
                                       batch_size=16)
            sets.append([det.scored_g(torch.tensor(r["completion_ids"]))[0] for r in out])
        meta = {"config": detector_config(scheme), "key_id": scheme.key_id(), "tokenizer": tokenizer_fingerprint(tok)}
        scorer = train_bayesian(sets[0], sets[1], scheme.depth, scheme.null_rate(), meta, epochs=epochs, seed=seed, log=log)
        scorer.save(output)
        return scorer.meta["report"]

    report = run_guarded(run)
    typer.echo(json.dumps(report))
    stderr.print(f"wrote {output}; held back: AUROC {report['auroc']:.3f}, TPR at 1% FPR {report['tpr_at_fpr_0.01']:.2f}, "
                 f"unmarked FPR at 1% {report['unmarked_fpr_at_0.01']:.2f}", markup=False)

