"""``wm evidence text|eaas|fingerprint|radioactivity|probe`` write an ownership report (JSON + self-contained HTML); ``wm evidence check``
re-checks one."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import InputError
from ..evidence import check_report, load_report, render_html, text_report
from ..files import write_file
from ..keys import SecretKey, load_key
from ..models import load_tokenizer
from ..watermark.text import SCHEMES
from ..watermark.embedding.verify import DEFAULT_DECOYS as EMB_DECOYS, DEFAULT_FPR as EMB_FPR, DEFAULT_TEXTS as EMB_TEXTS
from ..fingerprint.verify import DEFAULT_FPR as FP_FPR
from .fingerprint import PassiveOpt, ReferenceOpt, TemperatureOpt
from ..watermark.text.detector import DEFAULT_FPR, resolve_null
from .common import (
    NAMED_PARAMS, ApiKeyEnvOpt, HeaderOpt, InsecureOpt, KeyFileOpt, KeyOnlySchemeOpt, ModelOpt, NullOpt, SchemeArgs, check_fpr_option,
    die, run_guarded, scheme_options, stderr, terminal_safe,
)

evidence_app = typer.Typer(help="Ownership evidence a third party can re-check.", no_args_is_help=True)
DEFAULT_TOKENIZER = "default (SmolLM2-135M-Instruct)"


def _tokenizer(name: str) -> Any:
    return load_tokenizer(None if name == DEFAULT_TOKENIZER else name)


@evidence_app.command("text")
@scheme_options
def text(
    scheme_args: SchemeArgs,
    files: list[Path] = typer.Argument(..., help="The text files in question."),
    output: Path = typer.Option(..., "--output", "-o", help="A new folder for report.json and report.html."),
    scheme_name: str = KeyOnlySchemeOpt,
    model: Optional[Path] = ModelOpt,
    fpr: float = typer.Option(DEFAULT_FPR, help="False-positive rate of the verdict (p <= fpr)."),
    null: Optional[str] = NullOpt,
) -> None:
    """Detect the mark in FILES and write the evidence: verdicts, p-values, the configuration, the key's
    id and commitment, input SHA-256s, versions, the command, and plots (per-token evidence, windowed
    scan, null distribution). Re-check it with: wm evidence check OUTPUT/report.json -k KEY_FILE."""
    fpr = run_guarded(check_fpr_option, fpr)
    _new_folder(output)
    for f in files:  # a report names its inputs; a name that is not UTF-8 cannot be written into it
        try:
            str(f).encode("utf-8")
        except UnicodeEncodeError:
            die(f"{terminal_safe(str(f))}: the file name is not valid UTF-8; rename the file (a report names its inputs)")
    scheme = run_guarded(scheme_args.build, scheme_name)
    if not isinstance(getattr(scheme, "key", None), SecretKey):
        die(f"evidence needs a wmkit key file (-k), whose commitment the report carries; {scheme.name} was given another key")
    if scheme.capabilities.needs_model:
        die(f"{scheme.name}'s detector runs the generating model; evidence takes key-only schemes")
    null_name = run_guarded(resolve_null, scheme.capabilities, null)
    tokenizer_name = str(model) if model else DEFAULT_TOKENIZER
    options = []  # the scheme's whole config, spelled as options: the command does not depend on defaults
    for k, v in scheme.config().items():
        if k in NAMED_PARAMS:
            options += [f"--{k.replace('_', '-')}", str(v)]
        elif k not in ("scheme", "prf_version"):
            options += ["-P", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    command = ["wm", "evidence", "text", *map(str, files), "-s", scheme.name, *options,
               *(["-k", str(scheme_args.key_file)] if scheme_args.key_file else []), "--fpr", repr(fpr),  # else $WMKIT_KEY
               *(["--null", null_name] if scheme.capabilities.reference_null else []),
               *(["--model", str(model)] if model else []), "-o", "NEW_FOLDER"]

    def build() -> dict[str, Any]:
        tok = _tokenizer(tokenizer_name)
        return text_report([str(f) for f in files], scheme, tok, fpr=fpr, key_id=scheme.key.fingerprint(),
                           commitment=scheme.key.commitment(), tokenizer_name=tokenizer_name, command=command,
                           base=output, null=null_name)

    report = run_guarded(build)
    _make_folder(output)
    _write(output, report)
    for item, r in zip(report["inputs"], report["results"]):
        stderr.print(f"{terminal_safe(item['path'])}: {r['verdict']} (p = {r['p_value']:.3g}, {r['tokens_scored']} tokens "
                     f"scored; null {report['null']}, key id {report['key']['id']})", markup=False)
    stderr.print(f"wrote {output / 'report.json'} and {output / 'report.html'}; reproduce: {shlex.join(command)}", markup=False)


def _new_folder(output: Path) -> None:
    if output.exists():
        die(f"{output} already exists; choose a new folder for the report")
    if not output.parent.is_dir():
        die(f"{output.parent} is not a folder; cannot create {output.name} there")


def _make_folder(output: Path) -> None:
    """Create the report's folder; a folder made meanwhile (two runs to one -o) is one line, not a traceback."""
    try:
        output.mkdir()
    except FileExistsError:
        die(f"{output} already exists (made by another run meanwhile?); choose a new folder for the report")
    except OSError as e:
        die(f"cannot create {output}: {e.strerror}")


def _write(output: Path, report: dict[str, Any]) -> None:
    page = render_html(report)  # both rendered before either is written
    write_file(output / "report.json", json.dumps(report, indent=1) + "\n")
    write_file(output / "report.html", page)


@evidence_app.command("eaas")
def eaas(
    suspect: str = typer.Option(..., "--suspect", help="Suspect model folder, or the base URL of an OpenAI-compatible embeddings API."),
    output: Path = typer.Option(..., "--output", "-o", help="A new folder for report.json, report.html and responses.npz."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", "-k", help="Key file (wm keygen); else $WMKIT_KEY.", show_default=False),
    scheme_name: str = typer.Option("espew", "--scheme", "-s", help="Embedding scheme: embmarker or espew."),
    mode: str = typer.Option("target", help="Test: target, copy-target or target-free."),
    provider_model: Optional[Path] = typer.Option(None, help="Your clean provider model (the target embedding; default: all-MiniLM-L6-v2).", show_default=False),
    texts: int = typer.Option(EMB_TEXTS, help="Verification texts per set."),
    decoys: int = typer.Option(EMB_DECOYS, help="Decoy trigger sets (the null distribution)."),
    fpr: float = typer.Option(EMB_FPR, help="False-positive rate of the verdict."),
    api_key_env: Optional[str] = ApiKeyEnvOpt,
    header: list[str] = HeaderOpt,
    insecure: bool = InsecureOpt,
) -> None:
    """Run the EaaS ownership test against SUSPECT and write the evidence: the suspect's answers to the
    key-derived queries (responses.npz), the verdict, p-value, decoy distribution, configuration, key id
    and commitment. A re-check needs the revealed key and the folder, not the suspect."""
    from ..watermark.embedding import SentenceEncoder, load_encoder, make_scheme, ownership_queries

    from ..remote import suspect_headers

    fpr = run_guarded(check_fpr_option, fpr)
    headers = run_guarded(suspect_headers, suspect, api_key_env, header, insecure)
    if mode not in ("target", "copy-target", "target-free"):
        die(f"--mode must be target, copy-target or target-free (positions mode needs the clean model at check time), got {mode!r}")
    if scheme_name in ("warden", "wet"):
        die(f"wm evidence eaas records the one-target ownership test (embmarker, espew); for {scheme_name} use wm eaas verify --json")
    _new_folder(output)

    def run() -> tuple[Any, Any, Any]:
        key = load_key(key_file=key_file)
        scheme = make_scheme(scheme_name, key)
        queries = ownership_queries(scheme, texts, decoys)
        enc = load_encoder(suspect, headers=headers)
        target = None
        if mode == "target":
            target = SentenceEncoder(provider_model).encode([scheme.target_text()])[0]
        elif mode == "copy-target":
            target = enc.encode([scheme.target_text()])[0]
        return scheme, enc.encode(queries), target

    scheme, emb, target = run_guarded(run)
    command = ["wm", "evidence", "eaas", "--suspect", suspect, "-s", scheme.name, "--mode", mode, "--texts", str(texts),
               "--decoys", str(decoys), "--fpr", repr(fpr), *(["-k", str(key_file)] if key_file else []),
               *(["--provider-model", str(provider_model)] if provider_model else []), "-o", "NEW_FOLDER"]
    _make_folder(output)
    from ..evidence import eaas_report

    report = run_guarded(eaas_report, output, emb, target, scheme, suspect=suspect, mode=mode, n_texts=texts,
                         n_decoys=decoys, fpr=fpr, key_id=scheme.key.fingerprint(), commitment=scheme.key.commitment(),
                         command=command)
    _write(output, report)
    r = report["results"][0]
    verdict = "carries the watermark" if r["watermarked"] else "not shown to carry the watermark"
    stderr.print(f"{suspect}: {verdict} (p = {r['p_value']:.3g}, delta-cos {r['delta_cos']:+.4f}); wrote {output}", markup=False)


@evidence_app.command("fingerprint")
def fingerprint(
    signature: Optional[Path] = typer.Option(None, "--signature", help="Signature file (wm fingerprint enroll); every access level but text.", show_default=False),
    suspect: str = typer.Option(..., "--suspect", help="Suspect model folder, .gguf file, or base URL of an OpenAI-style completions API."),
    output: Path = typer.Option(..., "--output", "-o", help="A new folder for report.json, report.html and outputs.npz (text: completions.json)."),
    access: Optional[str] = typer.Option(None, help="Access level: logits, logprobs, topk, top1, text (default: topk for a URL, logits for a model).", show_default=False),
    queries: Optional[int] = typer.Option(None, help="Queries (default 64; top1: 6).", show_default=False),
    top_k: int = typer.Option(20, help="Log-probs per call at the topk level."),
    fpr: float = typer.Option(FP_FPR, help="False-positive rate of the containment test."),
    chat: bool = typer.Option(False, "--chat", help="Query the URL as a chat model (/v1/chat/completions)."),
    key_file: Optional[Path] = KeyFileOpt,
    model: Optional[str] = typer.Option(None, "--model", help="text: the model the key's pairs or prompts are built on (default SmolLM2-135M-Instruct).", show_default=False),
    passive: bool = PassiveOpt,
    reference: list[str] = ReferenceOpt,
    temperature: float = TemperatureOpt,
    api_key_env: Optional[str] = ApiKeyEnvOpt,
    header: list[str] = HeaderOpt,
    insecure: bool = InsecureOpt,
) -> None:
    """Test whether SUSPECT is derived from the signed model and write the evidence: its output vectors
    (outputs.npz), the containment test, the residual histogram and its null. Keyless: the signature's
    SHA-256 is what an owner publishes before a dispute. With --access text: the key's prompts and the
    suspect's completions (completions.json) and the text-only test; keyed, so the report carries the
    key's commitment. Re-check: wm evidence check OUTPUT/report.json [-k KEY]."""
    from ..evidence import fingerprint_report
    from ..fingerprint import Signature, suspect_vectors
    from ..fingerprint.verify import FIRST_LOOK, verify_sequential
    from .fingerprint import TEXT, check_suspect_options, default_access, open_suspect

    fpr = run_guarded(check_fpr_option, fpr)
    _new_folder(output)
    access = default_access(access, suspect)
    if access == TEXT:
        return _text_fingerprint(suspect, output, queries, fpr, chat, signature, key_file, model, passive, reference,
                                 temperature, api_key_env, header, insecure)
    if passive or reference or api_key_env is not None or header:
        die("--passive, --reference, --api-key-env and --header apply to --access text")
    if signature is None:
        die(f"--access {access} needs --signature FILE (wm fingerprint enroll writes it)")
    q = run_guarded(check_suspect_options, access, queries, top_k)
    restricted = access in ("topk", "top1")

    def run() -> Any:
        sig = Signature.load(signature)
        acc = open_suspect(suspect, access, top_k, chat, sig)
        if acc.vocab_size < sig.vocab_size:
            raise InputError(f"{suspect}: incompatible vocabulary ({acc.vocab_size} tokens, the signature {sig.vocab_size}): "
                             "not derived, and no output-space evidence to record")
        if access == "top1":  # asked one query at a time, as wm fingerprint verify asks them
            record: list = []
            verify_sequential(sig, acc, max_queries=q, first_look=min(FIRST_LOOK, q), fpr=fpr, record=record)
            return record
        return suspect_vectors(sig, acc, q, restricted)

    vectors = run_guarded(run)
    command = ["wm", "evidence", "fingerprint", "--signature", str(signature), "--suspect", suspect, "--access", access,
               "--queries", str(q), "--top-k", str(top_k), "--fpr", repr(fpr), *(["--chat"] if chat else []), "-o", "NEW_FOLDER"]
    _make_folder(output)
    report = run_guarded(fingerprint_report, output, signature, vectors, suspect=suspect, access=access,
                         restricted=restricted, fpr=fpr, command=command,
                         sequential={"max_queries": q, "first_look": min(FIRST_LOOK, q)} if access == "top1" else None)
    _write(output, report)
    r = report["results"][0]
    verdict = "derived from the signed model" if r["watermarked"] else "not derived"
    stderr.print(f"{suspect}: {verdict} (containment: {r['contained']}/{r['queries']}, p = {r['p_value']:.3g}); "
                 f"wrote {output}", markup=False)


def _text_fingerprint(suspect: str, output: Path, queries: Optional[int], fpr: float, chat: bool, signature: Optional[Path],
                      key_file: Optional[Path], model: Optional[str], passive: bool, reference: list[str], temperature: float,
                      api_key_env: Optional[str], header: list[str], insecure: bool) -> None:
    """``wm evidence fingerprint --access text``: ask the suspect, record the completions, write the keyed report."""
    from ..evidence import text_fingerprint_report
    from ..fingerprint.invasive import RESPONSE_TOKENS, fingerprint_pairs
    from ..fingerprint.passive import COMPLETION_TOKENS, passive_prompts
    from ..models import load_lm
    from ..remote import suspect_headers
    from .fingerprint import check_text_options, text_suspect

    def ask() -> tuple[Any, list[str], list[str], dict[str, Any]]:
        q = check_text_options(passive, reference, queries, temperature, chat, signature)
        key = load_key(key_file=key_file)
        headers = suspect_headers(suspect, api_key_env, header, insecure) if suspect.startswith(("http://", "https://")) else {}
        acc = text_suspect(suspect, headers)
        base, tok = load_lm(model)
        test: dict[str, Any] = {"access": "text", "mode": "passive" if passive else "invasive",
                                "model": str(Path(model).resolve()) if model else None}
        if passive:
            prompts = passive_prompts(base, tok, key, q)
            test.update(references=[str(Path(r).resolve()) for r in reference], temperature=temperature)  # a re-check from elsewhere finds them
            return key, prompts, acc.sample(prompts, COMPLETION_TOKENS, temperature, seed=0), test
        prompts = [p.prompt for p in fingerprint_pairs(base, tok, key, q)]
        return key, prompts, acc.complete(prompts, RESPONSE_TOKENS), test

    key, prompts, completions, test = run_guarded(ask)
    command = ["wm", "evidence", "fingerprint", "--access", "text", "--suspect", suspect, "--queries", str(len(prompts)),
               "--fpr", repr(fpr), *(["--model", model] if model else []), *(["--passive"] if passive else []),
               *[a for r in reference for a in ("--reference", r)], *(["--temperature", repr(temperature)] if passive else []),
               "-o", "NEW_FOLDER"]
    _make_folder(output)
    report = run_guarded(text_fingerprint_report, output, prompts, completions, key, suspect=suspect, test=test, fpr=fpr,
                         command=command)
    _write(output, report)
    r = report["results"][0]
    verdict = "derived from our model" if r["watermarked"] else "not derived"
    stderr.print(f"{suspect}: {verdict} (text {test['mode']}: {r['contained']}/{r['queries']}, p = {r['p_value']:.3g}); "
                 f"wrote {output}", markup=False)


@evidence_app.command("check")
def check(
    report_file: Path = typer.Argument(..., help="A report.json written by wm evidence text."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", "-k", help="The revealed key file (else $WMKIT_KEY).", show_default=False),
) -> None:
    """Recompute every figure of REPORT from the revealed key and the inputs beside it; exit 0 only if the
    key opens the report's commitment and every figure matches, 1 if the evidence does not hold, 2 on bad input.
    A fingerprint report needs no key (its signature file's SHA-256 stands for the commitment), nor does a
    probe report (it is recomputed from the recorded answers)."""
    report = run_guarded(load_report, report_file)
    from ..evidence import KEYLESS

    key = run_guarded(load_key, key_file=key_file) if report["family"] not in KEYLESS else None

    def build(family: str, config: dict[str, Any], k: SecretKey) -> Any:
        from ..watermark.embedding import SCHEMES as EMB_SCHEMES

        registry = SCHEMES if family in ("text", "radioactivity") else EMB_SCHEMES
        config = dict(config)
        name = config.pop("scheme", None)
        if name not in registry:
            raise InputError(f"the report names an unknown {family} scheme {name!r}")
        return registry[name].from_config(config, k)

    problems = run_guarded(check_report, report_file, key, build, _tokenizer)
    if problems:
        for p in problems:
            stderr.print(f"wm: evidence does not hold: {p}", markup=False)
        raise typer.Exit(1)
    opened = "the key opens the commitment and " if key is not None else ""
    stderr.print(f"{report_file}: {opened}every figure matches", markup=False)

