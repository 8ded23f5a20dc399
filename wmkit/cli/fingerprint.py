"""``wm fingerprint enroll``, ``embed`` and ``verify``: output-space fingerprints of a model, and keyed
(prompt -> response) fingerprints for suspects that answer with text only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import Progress
from rich.console import Console

from ..errors import InputError
from ..remote import suspect_headers
from ..fingerprint import (
    LocalAPI,
    ModelAccess,
    Signature,
    Top1Recovery,
    TopKRecovery,
    enroll,
    verify_fingerprint,
)
from ..fingerprint.verify import DEFAULT_FPR, DEFAULT_QUERIES, FIRST_LOOK, TOP1_QUERIES, guide_for, verify_sequential
from ..models import load_lm
from ..files import check_new
from .common import ApiKeyEnvOpt, HeaderOpt, InsecureOpt, KeyFileOpt, check_fpr_option, run_guarded, stderr

fingerprint_app = typer.Typer(help="Output-space fingerprints: is a suspect model derived from yours?", no_args_is_help=True)
ACCESS = ("logits", "logprobs", "topk", "top1")  # the output-space levels, tested against a signature
TEXT = "text"  # keyed pairs fine-tuned in by `wm fingerprint embed`, tested with the key
PassiveOpt = typer.Option(False, "--passive", help="text: no pairs were fine-tuned in; score the suspect's sampled completions against --model and the --reference models.")
ReferenceOpt = typer.Option([], "--reference", help="text --passive: a public model the suspect could have been built from instead (repeatable; at least one).", show_default=False)
TemperatureOpt = typer.Option(1.0, help="text --passive: the temperature the suspect is asked to sample at.")


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
    q = queries if queries is not None else (TOP1_QUERIES if access == "top1" else DEFAULT_QUERIES)
    if q < 2:
        raise InputError(f"--queries must be at least 2, got {q}")
    return q


def open_suspect(suspect: str, access: str, top_k: int, chat: bool = False, sig: Signature | None = None) -> Any:
    """The access level ``access`` to ``suspect`` (a model folder, a .gguf file, or an http(s) URL;
    ``chat``: ask the URL's chat endpoint; ``sig``: the signature whose guide top-1 recovery uses)."""
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
    return TopKRecovery(api, top_k) if access == "topk" else Top1Recovery(api, guide=None if sig is None else guide_for(sig))


@fingerprint_app.command("embed")
def embed_cmd(
    model: Optional[str] = typer.Argument(None, help="Model folder or .gguf file (default: SmolLM2-135M-Instruct)."),
    key_file: Optional[Path] = KeyFileOpt,
    output: Path = typer.Option(..., "--output", "-o", help="A new model folder to write (never overwritten)."),
    pairs: int = typer.Option(64, help="Keyed (prompt -> response) pairs to fine-tune in."),
    steps: int = typer.Option(30, help="Fine-tuning steps (16 pairs each, plus 8 of the regulariser's texts)."),
    lr: float = typer.Option(1e-4, help="Learning rate (AdamW)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fine-tune keyed pairs into a copy of MODEL, so that `wm fingerprint verify -k KEY --access text` can
    later recognise it and its derivatives from sampled text alone. Reports what the fine-tune changed."""
    from ..fingerprint.invasive import embed_fingerprint, fingerprint_pairs, behaviour_change
    from ..keys import resolve
    from ..models import save_atomically

    def run() -> dict[str, Any]:
        check_new(output)
        if not 1 <= pairs <= 4096 or steps < 1 or not lr > 0:
            raise InputError("--pairs must be in 1..4096, --steps at least 1 and --lr positive")
        key = resolve(key_file)
        lm, tok = load_lm(model)
        with Progress(console=stderr, transient=True) as bar:
            task = bar.add_task("building the keyed pairs", total=None)
            fp = fingerprint_pairs(lm, tok, key, pairs)
            bar.update(task, total=steps, completed=0, description="fine-tuning")
            tuned = embed_fingerprint(lm, tok, fp, key, steps=steps, lr=lr,
                                      on_step=lambda step, loss: bar.update(task, completed=step, description=f"fine-tuning (loss {loss:.3f})"))
            bar.update(task, description="measuring the change")
            change = behaviour_change(lm, tuned, tok, fp)
        save_atomically(output, tuned, tok)
        return {"output": str(output), "pairs": pairs, "steps": steps, "lr": lr, **change}

    d = run_guarded(run)
    if as_json:
        typer.echo(json.dumps(d))
        return
    typer.echo(f"wrote {output}: {d['pairs']} keyed pairs, {d['steps']} steps; the model now answers {d['matched']}/{d['pairs']} "
               f"(p {d['p_value']:.3g}); held-out perplexity {d['ppl_before']:.2f} -> {d['ppl_after']:.2f} "
               f"({d['ppl_change_pct']:+.1f}%); {d['answers_same']}/{d['answers']} greedy answers to the shipped prompts unchanged")


@fingerprint_app.command("verify")
def verify_cmd(
    signature: Optional[Path] = typer.Option(None, "--signature", help="Signature file (wm fingerprint enroll); for every access level but text.", show_default=False),
    suspect: str = typer.Option(..., "--suspect", help="Suspect model folder, .gguf file, or base URL of `wm serve`."),
    access: Optional[str] = typer.Option(None, help=f"Access level: {', '.join(ACCESS)}, {TEXT} (default: topk for a URL, logits for a model).", show_default=False),
    key_file: Optional[Path] = KeyFileOpt,
    model: Optional[str] = typer.Option(None, "--model", help="text: the model the pairs were built on (wm fingerprint embed's MODEL; default SmolLM2-135M-Instruct).", show_default=False),
    queries: Optional[int] = typer.Option(None, help=f"Queries (default {DEFAULT_QUERIES}; top1: at most {TOP1_QUERIES}, stopping once decided; text: the first N keyed pairs or prompts, default 64).", show_default=False),
    top_k: int = typer.Option(20, help="Log-probs per call at the topk level."),
    fpr: float = typer.Option(DEFAULT_FPR, help="False-positive rate of the containment test."),
    chat: bool = typer.Option(False, "--chat", help="Query the URL as a chat model (/v1/chat/completions; its system prompt is its own)."),
    passive: bool = PassiveOpt,
    reference: list[str] = ReferenceOpt,
    temperature: float = TemperatureOpt,
    api_key_env: Optional[str] = ApiKeyEnvOpt,
    header: list[str] = HeaderOpt,
    insecure: bool = InsecureOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Is SUSPECT derived from the signature's model (or, with --access text, from the model the key's pairs
    were fine-tuned into; with --access text --passive, from --model itself)? Exit 0 either way."""
    access = default_access(access, suspect)

    def run():  # noqa: ANN202
        check_fpr_option(fpr)  # before any model loads
        if access != TEXT and (passive or reference):
            raise InputError("--passive and --reference apply to --access text")
        if access == TEXT:
            q = check_text_options(passive, reference, queries, temperature, chat, signature)
            headers = suspect_headers(suspect, api_key_env, header, insecure) if suspect.startswith(("http://", "https://")) else {}
            if passive:
                return verify_passive_text(suspect, key_file, model, reference, q, fpr, temperature, headers)
            return verify_text(suspect, key_file, model, q, fpr, headers)
        if api_key_env is not None or header:
            raise InputError("--api-key-env and --header apply to --access text (the logit-bias levels send none)")
        if signature is None:
            raise InputError(f"--access {access} needs --signature FILE (wm fingerprint enroll writes it)")
        q = check_suspect_options(access, queries, top_k)
        sig = Signature.load(signature)
        acc = open_suspect(suspect, access, top_k, chat, sig)
        t0 = time.perf_counter()
        if access == "top1":  # the expensive level: one query at a time, decided as soon as it can be
            rep = verify_sequential(sig, acc, max_queries=q, first_look=min(FIRST_LOOK, q), fpr=fpr)
        else:
            rep = verify_fingerprint(sig, acc, queries=q, restricted=access == "topk", fpr=fpr)
        return rep, time.perf_counter() - t0

    rep, seconds = run_guarded(run)
    d = {"suspect": suspect, "access": access, **rep.to_dict(), "seconds": round(seconds, 2)}
    if passive and rep.containment is not None:
        d.update({k: rep.containment.details[k] for k in ("mean", "sd", "references", "temperature")}, t=rep.containment.statistic)
    if as_json:
        typer.echo(json.dumps(d))
        return
    out = Console(highlight=False)
    out.print(f"suspect   {suspect} ({access})", markup=False)
    if not rep.compatible:
        out.print(f"verdict   not derived: {rep.reason}", markup=False)
        return
    if access == TEXT and passive:
        det = rep.containment.details
        out.print(f"test      mean log-likelihood ratio {det['mean']:+.2f} nats (sd {det['sd']:.2f}) for the model against the best of "
                  f"{', '.join(det['references'])}; {d['contained']}/{d['queries']} completions positive; t {rep.containment.statistic:.2f}, "
                  f"p {rep.p_value:.3g}", markup=False)
    elif access == TEXT:
        out.print(f"test      {d['contained']}/{d['queries']} greedy answers start with the keyed response; p {rep.p_value:.3g} "
                  f"(null match rate {rep.containment.details['gamma']:.3g})")
    else:
        out.print(f"test      {d['contained']}/{d['queries']} centered outputs inside the signature's space (residual <= tau "
                  f"{d['tau']:.3g}); residual median {d['residual_median']:.2e} (margin {d['margin']:+.2f} decades), "
                  f"max {d['residual_max']:.2e}; p {rep.p_value:.3g}")
    out.print(f"cost      {rep.queries} queries, {rep.api_calls} API calls, {seconds:.1f} s")
    model_name = "fingerprinted" if access == TEXT else "signed"
    out.print(f"verdict   {f'DERIVED from the {model_name} model' if rep.derived else 'not derived'} (FPR {fpr:g})", markup=False)


def text_suspect(suspect: str, headers: dict[str, str]) -> Any:
    """The text-only access to SUSPECT: a URL's completions endpoint or a local model."""
    from ..fingerprint.invasive import LocalText
    from ..fingerprint.remote import RemoteText

    if suspect.startswith(("http://", "https://")):
        return RemoteText(suspect, headers)
    if not Path(suspect).exists():
        raise InputError(f"{suspect}: no such model folder or .gguf file")
    return LocalText(*load_lm(suspect))


def check_text_options(passive: bool, references: list[str], queries: Optional[int], temperature: float, chat: bool,
                       signature: Optional[Path]) -> int:
    """Check ``--access text``'s options (verify and evidence alike) before any model loads; return the
    number of queries (default 64: the pairs, or the passive prompts)."""
    from ..fingerprint.invasive import DEFAULT_PAIRS
    from ..fingerprint.passive import DEFAULT_PROMPTS

    if signature is not None:
        raise InputError("--access text tests the key's pairs or prompts: give -k KEY, not --signature")
    if chat:
        raise InputError("--access text asks the completions endpoint (the pairs and prompts carry no chat template)")
    if passive and not references:
        raise InputError("--passive needs at least one --reference model: a public model the suspect could have been built from instead")
    if references and not passive:
        raise InputError("--reference applies to --passive (the invasive test needs none)")
    if passive and not temperature > 0:
        raise InputError(f"--temperature must be positive for --passive, got {temperature}")
    low = 2 if passive else 1
    q = (DEFAULT_PROMPTS if passive else DEFAULT_PAIRS) if queries is None else queries
    if not low <= q <= 4096:
        raise InputError(f"--queries must be in {low}..4096, got {q}")
    for r in references:
        if not Path(r).exists():
            raise InputError(f"{r}: no such reference model folder or .gguf file")
    return q


def verify_passive_text(suspect: str, key_file: Optional[Path], model: Optional[str], references: list[str], q: int,
                        fpr: float, temperature: float, headers: dict[str, str]) -> tuple[Any, float]:
    """``--access text --passive``: the key's prompts, one sampled completion each, the likelihood-ratio t-test."""
    from ..fingerprint.passive import Scorer, builtin_references, passive_prompts, verify_passive
    from ..keys import resolve

    key = resolve(key_file)
    acc = text_suspect(suspect, headers)
    base, tok = load_lm(model)
    refs = [Scorer(*load_lm(r), name=Path(r).name) for r in references] + builtin_references(base, tok)
    prompts = passive_prompts(base, tok, key, q)
    t0 = time.perf_counter()
    rep = verify_passive(Scorer(base, tok, str(model or "SmolLM2-135M-Instruct")), refs, prompts, acc, fpr=fpr, temperature=temperature)
    return rep, time.perf_counter() - t0


def verify_text(suspect: str, key_file: Optional[Path], model: Optional[str], q: int, fpr: float,
                headers: dict[str, str]) -> tuple[Any, float]:
    """``--access text``: rebuild the key's pairs on the base model, ask the suspect, test the matches."""
    from ..fingerprint.invasive import fingerprint_pairs, verify_text_fingerprint
    from ..keys import resolve

    key = resolve(key_file)
    acc = text_suspect(suspect, headers)
    base, tok = load_lm(model)
    pairs = fingerprint_pairs(base, tok, key, q)
    t0 = time.perf_counter()
    rep = verify_text_fingerprint(pairs, acc, fpr=fpr)
    return rep, time.perf_counter() - t0
