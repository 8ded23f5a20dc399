"""``wm serve-embeddings`` and ``wm eaas verify``: a watermarked embeddings API and its ownership test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import InputError
from ..keys import load_key
from ..server.embeddings import MAX_BATCH, MAX_BODY_BYTES, MAX_CHARS, MAX_INPUTS
from ..watermark.embedding import (
    SCHEMES,
    SentenceEncoder,
    load_encoder,
    make_scheme,
    plan_budget,
    verify_ownership,
    verify_warden,
    verify_wet,
)
from ..watermark.embedding.wet import DEFAULT_RECOVER_TEXTS, DEFAULT_WET_TEXTS, MAX_WET_TEXTS
from ..watermark.embedding.schemes import check_scheme_name
from ..watermark.embedding.verify import DEFAULT_DECOYS, DEFAULT_FPR, DEFAULT_TEXTS, MIN_DECOYS, MIN_TEXTS, MODES
from ..remote import suspect_headers
from .common import ApiKeyEnvOpt, HeaderOpt, InsecureOpt, KeyFileOpt, check_fpr_option, run_guarded

WET_MODES = ("target", "inverse", "gram", "recover")
eaas_app = typer.Typer(help="Embedding watermarks for Embeddings-as-a-Service.", no_args_is_help=True)
EmbSchemeOpt = typer.Option("espew", "--scheme", "-s", help=f"Embedding scheme: {', '.join(SCHEMES)}.")
EmbModelOpt = typer.Option(
    None, "--model", "-m", help="Provider model folder (default: all-MiniLM-L6-v2).", show_default=False
)


def _scheme(name: str, key_file: Optional[Path], ratio: Optional[float]):  # noqa: ANN202
    check_scheme_name(name)  # before the key: a misspelt scheme is the error to report
    if ratio is not None and name != "espew":
        raise InputError("--ratio applies to espew only")
    return make_scheme(name, load_key(key_file=key_file), ratio=ratio)


def serve_embeddings(
    scheme: str = typer.Option("espew", "--scheme", "-s", help=f"{', '.join(SCHEMES)}, or none (no watermark)."),
    key_file: Optional[Path] = KeyFileOpt,
    model: Optional[Path] = EmbModelOpt,
    ratio: Optional[float] = typer.Option(None, help="ESpeW: fraction of positions rewritten (default 0.25).", show_default=False),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_inputs: int = typer.Option(MAX_INPUTS, help="Most texts per request."),
    max_chars: int = typer.Option(MAX_CHARS, help="Most characters per text."),
    max_body_bytes: int = typer.Option(MAX_BODY_BYTES, help="Largest request body (bytes)."),
    max_batch: int = typer.Option(MAX_BATCH, help="Most texts encoded together (concurrent requests are batched; "
                                  "a request is never split). 1: one request at a time."),
) -> None:
    """Serve an OpenAI-compatible /v1/embeddings endpoint whose embeddings carry the watermark."""
    from ..server.embeddings import create_app
    from ..server.http import serve

    def build():  # noqa: ANN202
        if not (1 <= port <= 65535):
            raise InputError(f"--port must be in 1..65535, got {port}")
        limits = {"--max-inputs": max_inputs, "--max-chars": max_chars, "--max-body-bytes": max_body_bytes,
                  "--max-batch": max_batch}
        for option, value in limits.items():
            if value < 1:
                raise InputError(f"{option} must be positive, got {value}")
        if scheme == "none":
            return SentenceEncoder(model)
        s = _scheme(scheme, key_file, ratio)  # key and parameters first: fail before loading the model
        return s.provider(SentenceEncoder(model))

    encoder = run_guarded(build)
    name = Path(model).name if model else "all-MiniLM-L6-v2"
    serve(create_app(encoder, name, max_inputs, max_chars, max_body_bytes, max_batch), host, port)


@eaas_app.command("verify")
def verify(
    suspect: str = typer.Option(..., "--suspect", help="Suspect model folder, or the base URL of an OpenAI-compatible API."),
    key_file: Optional[Path] = KeyFileOpt,
    scheme: str = EmbSchemeOpt,
    mode: str = typer.Option("target", help=f"Test: {', '.join(MODES)}; wet: target (forward), inverse, gram, or recover "
                             "(fits the copy's map from 512 texts: a rotated copy scores as the copy does)."),
    provider_model: Optional[Path] = typer.Option(
        None, help="Your clean provider model: the target embedding, ESpeW's positions (default: all-MiniLM-L6-v2).",
        show_default=False,
    ),
    texts: int = typer.Option(DEFAULT_TEXTS, help="Verification texts per set."),
    decoys: int = typer.Option(DEFAULT_DECOYS, help="Decoy trigger sets (the null distribution)."),
    budget: Optional[int] = typer.Option(
        None, help="Spend at most this many suspect queries (sets --texts and --decoys; the test stops as soon as "
        "its verdict is decided). WET: the number of texts sent (default 32; recover 512).", show_default=False,
    ),
    fpr: float = typer.Option(DEFAULT_FPR, help="False-positive rate of the verdict."),
    batch_size: int = typer.Option(256, help="Texts per request to a URL suspect."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    api_key_env: Optional[str] = ApiKeyEnvOpt,
    header: list[str] = HeaderOpt,
    insecure: bool = InsecureOpt,
) -> None:
    """Ownership test: does SUSPECT carry the embedding watermark of this key? Exit 0 either way."""

    def run():  # noqa: ANN202
        check_fpr_option(fpr)  # before any model loads
        headers = suspect_headers(suspect, api_key_env, header, insecure)
        if mode not in MODES and not (scheme == "wet" and mode in WET_MODES):
            raise InputError(f"--mode must be one of {', '.join(MODES)} (wet: {', '.join(WET_MODES)}), got {mode!r}")
        if batch_size < 1:
            raise InputError(f"--batch-size must be positive, got {batch_size}")
        if texts < MIN_TEXTS or decoys < MIN_DECOYS:
            raise InputError(f"--texts must be at least {MIN_TEXTS} and --decoys at least {MIN_DECOYS}, "
                             f"got {texts} and {decoys}")
        s = _scheme(scheme, key_file, None)
        if s.name == "wet":
            if mode not in WET_MODES:
                raise InputError(f"--mode for wet must be one of {', '.join(WET_MODES)} (target: the forward statistic), got {mode!r}")
            n = (DEFAULT_RECOVER_TEXTS if mode == "recover" else DEFAULT_WET_TEXTS) if budget is None else budget
            if not MIN_TEXTS <= n <= MAX_WET_TEXTS:
                raise InputError(f"--budget for wet must be in {MIN_TEXTS}..{MAX_WET_TEXTS}, got {n}")
            enc = load_encoder(suspect, batch_size=batch_size, headers=headers)
            stat = "forward" if mode == "target" else mode
            return verify_wet(enc, s, SentenceEncoder(provider_model), n_texts=n, fpr=fpr, statistic=stat), enc
        if budget is not None:
            plan_budget(budget)  # a budget too small is refused before any model loads
            if mode == "target-free":
                raise InputError("--budget needs a test with a target (target, copy-target or positions); "
                                 "target-free needs hundreds of decoy sets")
        if s.name == "warden" and mode not in ("target", "copy-target"):
            raise InputError(f"--mode {mode} does not apply to warden (target or copy-target)")
        enc = load_encoder(suspect, batch_size=batch_size, headers=headers)
        if s.name == "warden":
            targets = s.target_embedding(SentenceEncoder(provider_model)) if mode == "target" else None
            if targets is not None and targets.shape[1] != enc.dim:
                raise InputError(f"{suspect}: embeddings have {enc.dim} dimensions, the provider's {targets.shape[1]}")
            return verify_warden(enc, s, targets, mode, n_texts=texts, n_decoys=decoys, fpr=fpr, budget=budget), enc
        target = clean = None
        if mode in ("target", "positions"):
            clean = SentenceEncoder(provider_model)
            target = clean.encode([s.target_text()])[0]
        if target is not None and len(target) != enc.dim:
            raise InputError(f"{suspect}: embeddings have {enc.dim} dimensions, the provider's {len(target)}")
        return verify_ownership(enc, s, target, mode, clean, n_texts=texts, n_decoys=decoys, fpr=fpr, budget=budget), enc

    rep, enc = run_guarded(run)
    d = rep.to_dict()
    d["queries"] = getattr(enc, "texts_sent", rep.queries)  # a URL's count includes its dimension probe
    if as_json:
        typer.echo(json.dumps({"suspect": suspect, "scheme": scheme, **d}))
        return
    out = Console(highlight=False)
    ks = "n/a (no target)" if rep.ks_p is None else f"{rep.ks_p:.3g}"
    out.print(f"suspect   {suspect}", markup=False)
    details = rep.detection.details
    if scheme == "wet":
        size = f"{rep.queries} texts, {len(details['null_samples'])} decoy keys"
    else:
        size = f"{details.get('texts_per_set', texts)} texts per set, {details.get('decoy_sets', decoys)} decoy sets"
    out.print(f"test      {scheme} ownership, mode {rep.mode}, {size}; {d['queries']} queries")
    out.print(f"delta-cos {rep.delta_cos:+.4f}   delta-L2 {rep.delta_l2:+.4f}   KS p {ks}")
    out.print(f"decoy z   {rep.detection.statistic:.2f}   p {rep.p_value:.3g}")
    verdict = "DERIVED: carries the watermark" if d["derived"] else "not shown to carry the watermark"
    out.print(f"verdict   {verdict} (FPR {fpr:g})", markup=False)
