"""``wm fingerprint enroll`` and ``wm fingerprint verify``: output-space fingerprints of a model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import Progress
from rich.console import Console

from ..errors import InputError
from ..fingerprint import (
    LocalAPI,
    ModelAccess,
    Signature,
    Top1Recovery,
    TopKRecovery,
    enroll,
    verify_fingerprint,
)
from ..fingerprint.verify import DEFAULT_FPR, DEFAULT_QUERIES
from ..models import load_lm
from ..files import check_new
from .common import check_fpr_option, run_guarded, stderr

fingerprint_app = typer.Typer(help="Output-space fingerprints: is a suspect model derived from yours?", no_args_is_help=True)
ACCESS = ("logits", "logprobs", "topk", "top1")


@fingerprint_app.command("enroll")
def enroll_cmd(
    model: Optional[str] = typer.Argument(None, help="Model folder or .gguf file (default: SmolLM2-135M-Instruct)."),
    output: Path = typer.Option(..., "--output", "-o", help="Signature file to write (.safetensors; never overwritten)."),
    queries: int = typer.Option(64, help="Queries per calibration model."),
) -> None:
    """Write the calibrated signature of MODEL (its output layer's column space)."""

    def run() -> Signature:
        check_new(output)  # fail before the work, not after
        if queries < 4:
            raise InputError(f"--queries must be at least 4, got {queries}")
        lm, _ = load_lm(model)
        with Progress(console=stderr, transient=True) as bar:
            task = bar.add_task("calibration models answering", total=None)

            def step(name: str, total: int) -> None:
                bar.update(task, total=total, advance=1, description=f"calibration models answering ({name} done)")

            sig = enroll(lm, queries=queries, victim=str(model or "SmolLM2-135M-Instruct"), on_model=step)
        sig.save(output)
        return sig

    sig = run_guarded(run)
    cal = sig.meta["calibration"]
    typer.echo(
        f"wrote {output}: vocabulary {sig.vocab_size}, hidden size {sig.hidden_size}, "
        f"derived max {cal['derived_max']:.3f}, unrelated min {cal['unrelated_min']:.3f}, tau {cal['tau']:.3f}, pi0 {cal['pi0']:.4f}"
    )


def default_access(access: str | None, suspect: str) -> str:
    """``--access`` as given, or by default the most a suspect of its kind offers: ``topk`` for a URL
    (an OpenAI-style API returns the top log-probs), ``logits`` for a model on disk."""
    if access is not None:
        return access
    return "topk" if suspect.startswith(("http://", "https://")) else "logits"


def check_suspect_options(access: str, queries: int | None, top_k: int) -> int:
    """Check ``--access``, ``--queries`` and ``--top-k`` before any model loads or request is sent;
    return the number of queries (``None``: the access level's default)."""
    if access not in ACCESS:
        raise InputError(f"--access must be one of {', '.join(ACCESS)}, got {access!r}")
    if access == "topk" and not 2 <= top_k <= 1000:
        raise InputError(f"--top-k must be in 2..1000, got {top_k}")
    q = queries if queries is not None else (10 if access == "top1" else DEFAULT_QUERIES)
    if q < 2:
        raise InputError(f"--queries must be at least 2, got {q}")
    return q


def open_suspect(suspect: str, access: str, top_k: int, chat: bool = False) -> Any:
    """The access level ``access`` to ``suspect`` (a model folder, a .gguf file, or an http(s) URL;
    ``chat``: ask the URL's chat endpoint)."""
    if access not in ACCESS:
        raise InputError(f"--access must be one of {', '.join(ACCESS)}, got {access!r}")
    if suspect.startswith(("http://", "https://")):
        from ..fingerprint.remote import RemoteAPI

        if access in ("logits", "logprobs"):
            raise InputError("an OpenAI-style URL returns at most the top-20 log-probs: use --access topk or top1")
        api: Any = RemoteAPI(suspect, chat=chat)
    else:
        if chat:
            raise InputError("--chat applies to a suspect served at a URL")
        if not Path(suspect).exists():
            raise InputError(f"{suspect}: no such model folder or .gguf file")
        lm, _ = load_lm(suspect)
        if access in ("logits", "logprobs"):
            return ModelAccess(lm, access)
        api = LocalAPI(lm)
    return TopKRecovery(api, top_k) if access == "topk" else Top1Recovery(api)


@fingerprint_app.command("verify")
def verify_cmd(
    signature: Path = typer.Option(..., "--signature", help="Signature file (wm fingerprint enroll)."),
    suspect: str = typer.Option(..., "--suspect", help="Suspect model folder, .gguf file, or base URL of `wm serve`."),
    access: Optional[str] = typer.Option(None, help=f"Access level: {', '.join(ACCESS)} (default: topk for a URL, logits for a model).", show_default=False),
    queries: Optional[int] = typer.Option(None, help=f"Queries (default {DEFAULT_QUERIES}; top1: 10).", show_default=False),
    top_k: int = typer.Option(20, help="Log-probs per call at the topk level."),
    fpr: float = typer.Option(DEFAULT_FPR, help="False-positive rate of the containment test."),
    chat: bool = typer.Option(False, "--chat", help="Query the URL as a chat model (/v1/chat/completions; its system prompt is its own)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Is SUSPECT derived from the signature's model? Exit 0 either way."""
    access = default_access(access, suspect)

    def run():  # noqa: ANN202
        check_fpr_option(fpr)  # before any model loads
        q = check_suspect_options(access, queries, top_k)
        sig = Signature.load(signature)
        acc = open_suspect(suspect, access, top_k, chat)
        t0 = time.perf_counter()
        rep = verify_fingerprint(sig, acc, queries=q, restricted=access in ("topk", "top1"), fpr=fpr)
        return rep, time.perf_counter() - t0

    rep, seconds = run_guarded(run)
    d = {"suspect": suspect, "access": access, **rep.to_dict(), "seconds": round(seconds, 2)}
    if as_json:
        typer.echo(json.dumps(d))
        return
    out = Console(highlight=False)
    out.print(f"suspect   {suspect} ({access})", markup=False)
    if not rep.compatible:
        out.print(f"verdict   not derived: {rep.reason}", markup=False)
        return
    out.print(f"test      {d['contained']}/{d['queries']} centered outputs inside the signature's space (residual <= tau "
              f"{d['tau']:.3g}); residual median {d['residual_median']:.2e} (margin {d['margin']:+.2f} decades), "
              f"max {d['residual_max']:.2e}; p {rep.p_value:.3g}")
    out.print(f"cost      {rep.queries} queries, {rep.api_calls} API calls, {seconds:.1f} s")
    out.print(f"verdict   {'DERIVED from the signed model' if rep.derived else 'not derived'} (FPR {fpr:g})", markup=False)
