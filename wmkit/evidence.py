"""Ownership evidence a third party can re-check: ``report.json`` + a self-contained ``report.html``.

A report (format ``wmkit-evidence/1``, family ``text``) records what was tested and how: the
scheme's configuration (no key material), the key's public id and its commitment (SHA-256 over a
domain tag and the key: publish it before a dispute, reveal the key later), the FPR, the tokenizer,
each input's SHA-256 and size, the versions of wmkit and its key dependencies, the command that
made it, and per input the verdict, p-value, statistic, method and, where the scheme has them,
the per-token evidence and the windowed scan. :func:`render_html` draws it as one HTML file with
inline CSS and inline SVG plots (per-token evidence, the windowed scan, the exact null distribution
of the statistic with the observed value), no script, and a Content-Security-Policy that forbids
every request, so opening it contacts nothing.

:func:`check_report` re-does everything from the revealed key: the key must open the commitment
and have the recorded id, every input must still have its recorded SHA-256 (an input that changed
is an :class:`~wmkit.errors.InputError`), and every recorded figure must come out the same. It
returns the list of mismatches (empty: the evidence holds).
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .files import read_text

__all__ = ["REPORT_FORMAT", "text_report", "radioactivity_report", "render_html", "check_report", "sha256_file"]

REPORT_FORMAT = "wmkit-evidence/1"
VERSIONED = ("wmkit", "torch", "transformers", "tokenizers", "numpy", "scipy")
MAX_STRIP_TOKENS = 2000  # per-token evidence drawn in the HTML (the JSON keeps every token)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of Python, wmkit and its key dependencies."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _figures(detector: Any, text: str, windowed: bool) -> dict[str, Any]:
    """The figures of one input: verdict, statistic, p-value, counts, and what the plots need."""
    det = detector.detect(text)
    d = det.details
    out: dict[str, Any] = {"method": det.method, "tokens_scored": det.n_scored, "statistic": det.statistic,
                           "z": d.get("z", det.statistic), "p_value": det.p_value, "verdict": det.verdict,
                           "watermarked": det.verdict == "watermarked"}
    for k in ("green", "gamma", "tokens_total", "tau", "p_uncorrected", "sentences", "matches", "channel_tests"):
        if k in d:
            out[k] = d[k]
    if "sentence_layer" in d:  # a layered mark: each layer's p-value beside the Holm verdict
        out["layers"] = {"sentence": d["sentence_layer"]["p_value"], "token": d["token_layer"]["p_value"]}
    ev = det.evidence or {}
    if "green" in ev:
        out["evidence"] = {"token_ids": ev["token_ids"], "scored": [int(x) for x in ev["scored"]],
                           "green": [int(x) for x in ev["green"]]}
    if windowed:
        w = detector.detect_windowed(text)
        wd = w.details
        out["window"] = {"p_value": w.p_value, "z": w.statistic, "watermarked": w.verdict == "watermarked",
                         "token_start": wd["token_start"],
                         "token_end": wd["token_end"], "window": wd["window"], "window_start": wd["window_start"],
                         "n_tests": wd["n_tests"]}
    return out


def text_report(paths: Sequence[str], scheme: Any, tokenizer: Any, *, fpr: float, key_id: str, commitment: str,
                tokenizer_name: str, command: Sequence[str], base: str | os.PathLike[str], min_tokens: int = 16,
                null: str | None = None) -> dict[str, Any]:
    """The report of text inputs ``paths`` under ``scheme`` (paths are recorded relative to ``base``,
    the report's folder, so the folder and its inputs can be handed over together). ``null`` is the
    verdict's null (:func:`~wmkit.watermark.text.detector.resolve_null`; default: the per-key
    reference null for green-list schemes), recorded in the report."""
    from .verify import Verifier

    caps = scheme.capabilities
    if caps.needs_model:
        raise InputError(f"{scheme.name}'s detector runs the generating model; evidence takes key-only schemes")
    windowed = caps.windowed and not getattr(scheme, "sentence_level", False)  # the plots draw token windows
    detector = Verifier(scheme, tokenizer, fpr=fpr, min_tokens=min_tokens, null=null, scheme_key_id=key_id).detector
    spoof = _spoof_test(scheme, tokenizer)
    inputs, results = [], []
    for p in paths:
        text = read_text(p)
        inputs.append({"path": os.path.relpath(os.path.abspath(p), os.path.abspath(base)), "sha256": sha256_file(p),
                       "bytes": os.path.getsize(p)})
        try:
            results.append(_figures(detector, text, windowed))
        except InputError as e:  # which of several files is too short
            raise InputError(f"{p}: {e}") from None
        if spoof is not None:  # beside every detection: does the mark look learned (stolen)?
            import torch

            ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
            results[-1]["spoof"] = spoof.test(ids)
    return {**_header("text", scheme, fpr=fpr, key_id=key_id, commitment=commitment, command=command),
            "min_tokens": min_tokens, "null": detector.null, "tokenizer": tokenizer_name, "windowed": windowed,
            "inputs": inputs,
            "results": results}


def _spoof_test(scheme: Any, tokenizer: Any) -> Any:
    """The spoof test (:mod:`wmkit.forensics.spoof`) for a scheme it covers, else ``None``."""
    from .forensics.pairs import PAIR_SCHEMES
    from .forensics.spoof import spoof_test_for

    return spoof_test_for(scheme, tokenizer) if scheme.name in PAIR_SCHEMES else None


def _header(family: str, scheme: Any, *, fpr: float, key_id: str, commitment: str, command: Sequence[str]) -> dict[str, Any]:
    return {"format": REPORT_FORMAT, "family": family, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": list(command), "versions": versions(), "key": {"id": key_id, "commitment": commitment},
            "scheme": json.loads(json.dumps(scheme.config())), "fpr": fpr}


RESPONSES = "responses.npz"


def eaas_figures(responses: str | os.PathLike[str], scheme: Any, test: dict[str, Any], fpr: float) -> dict[str, Any]:
    """The ownership test recomputed from the recorded answers (float64 arithmetic on the stored
    float32 embeddings, so any machine gets the same figures)."""
    from .watermark.embedding import score_ownership

    with np.load(responses) as z:
        emb = z["embeddings"].astype(np.float64)
        target = z["target"].astype(np.float64) if "target" in z.files else None
    rep = score_ownership(emb, scheme, target, test["mode"], test["texts"], test["decoys"], fpr)
    d = rep.to_dict()
    return {"method": rep.detection.method, "watermarked": d["derived"], "p_value": d["p_value"], "z": d["z"],
            "ks_p": d["ks_p"], "delta_cos": d["delta_cos"], "rank_p_value": d["details"].get("rank_p_value"),
            "null": d["details"]["null_samples"]}


def eaas_report(folder: str | os.PathLike[str], embeddings: np.ndarray, target: np.ndarray | None, scheme: Any, *,
                suspect: str, mode: str, n_texts: int, n_decoys: int, fpr: float, key_id: str, commitment: str,
                command: Sequence[str]) -> dict[str, Any]:
    """Write the suspect's answers to ``folder/responses.npz`` (float32) and return the report of the
    ownership test on them. A re-check needs the key and that file, not the suspect."""
    import io

    from .files import write_file

    buf = io.BytesIO()
    arrays = {"embeddings": np.asarray(embeddings, dtype=np.float32)}
    if target is not None:
        arrays["target"] = np.asarray(target, dtype=np.float32)
    np.savez(buf, **arrays)
    path = write_file(Path(folder) / RESPONSES, buf.getvalue())
    test = {"mode": mode, "texts": n_texts, "decoys": n_decoys}
    return {**_header("eaas", scheme, fpr=fpr, key_id=key_id, commitment=commitment, command=command), "test": test,
            "suspect": suspect, "inputs": [{"path": RESPONSES, "sha256": sha256_file(path), "bytes": path.stat().st_size}],
            "results": [eaas_figures(path, scheme, test, fpr)]}


OUTPUTS = "outputs.npz"


def fingerprint_figures(signature: str | os.PathLike[str], outputs: str | os.PathLike[str], test: dict[str, Any],
                        fpr: float) -> dict[str, Any]:
    """The fingerprint's containment test recomputed from the signature file and the recorded output
    vectors (``test["sequential"]``: replayed look by look, as top-1 access asks)."""
    from .fingerprint import Signature, score_fingerprint
    from .fingerprint.verify import score_sequential

    with np.load(outputs) as z:
        vecs = z["vectors"].astype(np.float64)
    if seq := test.get("sequential"):
        rep = score_sequential(Signature.load(signature), vecs, seq["max_queries"], seq["first_look"], fpr)
    else:
        rep = score_fingerprint(Signature.load(signature), vecs, test["restricted"], fpr)
    d = rep.to_dict()
    cal = rep.containment.details if rep.containment else {}
    return {"method": "fingerprint", "watermarked": d["derived"], "p_value": d["p_value"], "contained": d["contained"],
            "queries": d["queries"], "tau": cal.get("tau"), "pi0": cal.get("gamma"), "residuals": rep.residuals}


def fingerprint_report(folder: str | os.PathLike[str], signature: str | os.PathLike[str], vectors: np.ndarray, *,
                       suspect: str, access: str, restricted: bool, fpr: float, command: Sequence[str],
                       sequential: dict[str, int] | None = None) -> dict[str, Any]:
    """Write the suspect's output vectors to ``folder/outputs.npz`` (float32) and return the report of
    the fingerprint's containment test on them (``sequential``: ``max_queries`` and ``first_look`` of
    the sequential test that asked them). No key: the signature's SHA-256 is what an owner publishes first."""
    import io

    from .files import write_file

    buf = io.BytesIO()
    np.savez(buf, vectors=np.asarray(vectors, dtype=np.float32))
    path = write_file(Path(folder) / OUTPUTS, buf.getvalue())
    test = {"access": access, "restricted": restricted, "queries": len(vectors), **({"sequential": sequential} if sequential else {})}
    sig_sha = sha256_file(signature)
    inputs = [{"path": os.path.relpath(os.path.abspath(signature), os.path.abspath(folder)), "sha256": sig_sha,
               "bytes": os.path.getsize(signature)},
              {"path": OUTPUTS, "sha256": sha256_file(path), "bytes": path.stat().st_size}]
    return {"format": REPORT_FORMAT, "family": "fingerprint", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": list(command), "versions": versions(), "key": None, "signature_sha256": sig_sha, "fpr": fpr,
            "test": test, "suspect": suspect, "inputs": inputs,
            "results": [fingerprint_figures(signature, path, test, fpr)]}


TEXT_ANSWERS = "completions.json"


def _text_fingerprint_models(test: dict[str, Any]) -> tuple[Any, Any]:
    from .models import load_lm

    return load_lm(test.get("model"))


def text_fingerprint_figures(completions: str | os.PathLike[str], key: Any, test: dict[str, Any], fpr: float) -> dict[str, Any]:
    """A text-only fingerprint test recomputed from the recorded prompts and completions: the key's pairs
    (``mode`` invasive) or prompts (passive) rebuilt on ``test["model"]`` must be the recorded prompts,
    then the matches (invasive) or the likelihood-ratio scores against ``test["references"]`` (passive)
    are computed again."""
    try:
        rec = json.loads(read_text(str(completions)))
        prompts, answers = list(rec["prompts"]), list(rec["completions"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{TEXT_ANSWERS}: not a record of prompts and completions ({type(e).__name__})") from None
    if len(prompts) != len(answers) or not all(isinstance(x, str) for x in prompts + answers):
        raise InputError(f"{TEXT_ANSWERS}: prompts and completions must be two lists of strings of one length")
    base, tok = _text_fingerprint_models(test)
    if test["mode"] == "invasive":
        from .fingerprint.invasive import fingerprint_pairs, score_answers

        pairs = fingerprint_pairs(base, tok, key, len(prompts))
        if [q.prompt for q in pairs] != prompts:
            raise InputError(f"{TEXT_ANSWERS}: the recorded prompts are not the key's fingerprint pairs on {test.get('model') or 'the default model'}")
        det = score_answers(pairs, answers, fpr)
        per = det.evidence["hits"] if det.evidence else []
    else:
        from .fingerprint.passive import Scorer, builtin_references, passive_prompts, score_completions
        from .models import load_lm

        if passive_prompts(base, tok, key, len(prompts)) != prompts:
            raise InputError(f"{TEXT_ANSWERS}: the recorded prompts are not the key's passive prompts on {test.get('model') or 'the default model'}")
        refs = [Scorer(*load_lm(r), name=Path(r).name) for r in test["references"]] + builtin_references(base, tok)
        det = score_completions(Scorer(base, tok), refs, prompts, answers, fpr)
        per = det.evidence["scores"] if det.evidence else []
    return {"method": det.method, "watermarked": det.decision, "p_value": det.p_value, "statistic": det.statistic,
            "queries": len(prompts), "contained": det.details["green"], "null_rate": det.details.get("gamma"),
            "mean": det.details.get("mean"), "per_query": per}


def text_fingerprint_report(folder: str | os.PathLike[str], prompts: Sequence[str], completions: Sequence[str], key: Any, *,
                            suspect: str, test: dict[str, Any], fpr: float, command: Sequence[str]) -> dict[str, Any]:
    """Write the prompts and the suspect's completions to ``folder/completions.json`` and return the report
    of the text-only fingerprint test on them. A re-check needs the key, that file and the models named in
    ``test`` (``model``, and ``references`` when passive), not the suspect."""
    from .files import write_file

    path = write_file(Path(folder) / TEXT_ANSWERS,
                      json.dumps({"prompts": list(prompts), "completions": list(completions)}, ensure_ascii=False) + "\n")
    return {"format": REPORT_FORMAT, "family": "fingerprint-text", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": list(command), "versions": versions(), "key": {"id": key.fingerprint(), "commitment": key.commitment()},
            "fpr": fpr, "test": dict(test), "suspect": suspect,
            "inputs": [{"path": TEXT_ANSWERS, "sha256": sha256_file(path), "bytes": path.stat().st_size}],
            "results": [text_fingerprint_figures(path, key, test, fpr)]}


PAIRS = "pairs.npz"


def radioactivity_figures(pairs: str | os.PathLike[str], scheme: Any, fpr: float) -> dict[str, Any]:
    """The radioactivity test recomputed from the recorded (window, token) pairs with the key: the
    pairs must be distinct coins (the tape), and the scheme's exact test is run on them again."""
    import torch

    from .forensics.radioactivity import pair_scorer

    scorer = pair_scorer(scheme)
    with np.load(pairs) as z:
        windows, tokens = z["windows"].astype(np.int64), z["tokens"].astype(np.int64)
    if windows.ndim != 2 or windows.shape != (len(tokens), scorer.width):
        raise InputError(f"{PAIRS}: windows of shape {windows.shape}, expected ({len(tokens)}, {scorer.width})")
    w, t = torch.from_numpy(windows), torch.from_numpy(tokens)
    coins = scorer.coins(w, t) if len(t) else []
    det = scorer.detect(w, t, fpr)
    trials = det.details.get("layers", 1) * det.n_scored
    distinct = len(set(coins)) == len(coins)  # a repeated coin would count one key draw twice: no verdict from it
    return {"method": det.method, "watermarked": det.decision and distinct, "p_value": det.p_value, "statistic": det.statistic,
            "scored": det.n_scored, "distinct_coins": distinct, "green": det.details.get("green"),
            "trials": trials if "green" in det.details else None, "gamma": det.details.get("gamma")}


def radioactivity_report(folder: str | os.PathLike[str], windows: np.ndarray, tokens: np.ndarray, scheme: Any, *,
                         suspect: str, test: dict[str, Any], fpr: float, key_id: str, commitment: str,
                         command: Sequence[str]) -> dict[str, Any]:
    """Write the scored (window, token) pairs to ``folder/pairs.npz`` and return the report of the
    radioactivity test on them. A re-check needs the key and that file, not the suspect."""
    import io

    from .files import write_file

    buf = io.BytesIO()
    np.savez(buf, windows=np.asarray(windows, dtype=np.int64).reshape(len(tokens), -1), tokens=np.asarray(tokens, dtype=np.int64))
    path = write_file(Path(folder) / PAIRS, buf.getvalue())
    return {**_header("radioactivity", scheme, fpr=fpr, key_id=key_id, commitment=commitment, command=command),
            "test": test, "suspect": suspect,
            "inputs": [{"path": PAIRS, "sha256": sha256_file(path), "bytes": path.stat().st_size}],
            "results": [radioactivity_figures(path, scheme, fpr)]}


ANSWERS = "answers.json"


def probe_figures(answers: str | os.PathLike[str], rows: Sequence[dict[str, Any]], fpr: float) -> list[dict[str, Any]]:
    """``wm probe``'s tests scored again from the recorded answers, with the parameters of the rows that
    were measured; Holm over the families, as the probe did. One result per family, then the summary."""
    from .forensics.probe import rescore
    from .stats import holm

    try:
        recorded = json.loads(read_text(str(answers)))
    except json.JSONDecodeError as e:
        raise InputError(f"{ANSWERS}: not JSON ({e.msg})") from None
    done = [r for r in rows if "family" in r and not r.get("partial")]
    dets = [rescore(r, recorded[r["family"]], fpr) for r in done]
    adjusted = holm([d.p_value for d in dets]) if dets else []
    out = [{"family": r["family"], "p_value": d.p_value, "statistic": d.statistic, "p_holm": a, "present": a <= fpr}
           for r, d, a in zip(done, dets, adjusted)]
    found = sorted((a, r["family"]) for r, a in zip(done, adjusted) if a <= fpr)
    return out + [{"family": "summary", "present": bool(found), "strongest": found[0][1] if found else None}]


def probe_report(folder: str | os.PathLike[str], rows: Sequence[dict[str, Any]], answers: dict[str, Any], *, api: str,
                 fpr: float, command: Sequence[str]) -> dict[str, Any]:
    """Write the API's answers to ``folder/answers.json`` and return the report of ``wm probe``'s tests on
    them. No key: anyone re-checks it from that file, without the API."""
    from .files import write_file

    path = write_file(Path(folder) / ANSWERS, json.dumps(answers, ensure_ascii=False) + "\n")
    return {"format": REPORT_FORMAT, "family": "probe", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": list(command), "versions": versions(), "key": None, "fpr": fpr, "test": {"rows": list(rows)},
            "suspect": api, "inputs": [{"path": ANSWERS, "sha256": sha256_file(path), "bytes": path.stat().st_size}],
            "results": probe_figures(path, rows, fpr)}


# ---- checking ----

FIGURES = {"text": ("method", "tokens_scored", "green", "gamma", "z", "statistic", "p_value", "verdict", "watermarked", "tau",
                    "window", "evidence", "tokens_total", "spoof"),
           "eaas": ("method", "watermarked", "p_value", "z", "ks_p", "delta_cos", "rank_p_value", "null"),
           "fingerprint": ("watermarked", "p_value", "contained", "queries", "tau", "pi0", "residuals"),
           "fingerprint-text": ("method", "watermarked", "p_value", "statistic", "queries", "contained", "null_rate", "mean",
                                "per_query"),
           "radioactivity": ("method", "watermarked", "p_value", "statistic", "scored", "distinct_coins", "green", "trials",
                             "gamma"),
           "probe": ("family", "p_value", "statistic", "p_holm", "present", "strongest")}
FAMILIES = tuple(FIGURES)
KEYLESS = ("fingerprint", "probe")  # a fingerprint's commitment is its signature's SHA-256; a probe has no key


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-300)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A report file, checked for its format; an :class:`InputError` otherwise."""
    try:
        report = json.loads(read_text(str(path)))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e.msg})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise InputError(f"{path}: not a wmkit evidence report (format {REPORT_FORMAT})")
    if report.get("family") not in FAMILIES:
        raise InputError(f"{path}: family {report.get('family')!r} cannot be checked by this wmkit ({', '.join(FAMILIES)})")
    need = {"inputs": list, "results": list, "fpr": (int, float), "versions": dict, "command": list, "created": str}
    need.update({"text": {"key": dict, "scheme": dict, "tokenizer": str}, "eaas": {"key": dict, "scheme": dict, "test": dict},
                 "fingerprint": {"test": dict, "signature_sha256": str},
                 "fingerprint-text": {"key": dict, "test": dict, "suspect": str},
                 "radioactivity": {"key": dict, "scheme": dict, "test": dict, "suspect": str},
                 "probe": {"test": dict, "suspect": str}}[report["family"]])
    for name, kind in need.items():
        if not isinstance(report.get(name), kind):
            raise InputError(f"{path}: the report's {name!r} is missing or malformed; not a complete wmkit evidence report")
    if isinstance(report.get("key"), dict) and not all(isinstance(report["key"].get(k), str) for k in ("id", "commitment")):
        raise InputError(f"{path}: the report's 'key' needs an 'id' and a 'commitment'")
    if not all(isinstance(i, dict) and isinstance(i.get("path"), str) and isinstance(i.get("sha256"), str)
               for i in report["inputs"]):
        raise InputError(f"{path}: each of the report's 'inputs' needs a 'path' and a 'sha256'")
    return report


def check_report(report_path: str | os.PathLike[str], key: Any, build_scheme: Any, load_tok: Any) -> list[str]:
    """Re-check a report with the revealed ``key``: returns the mismatches (empty: it holds).

    ``build_scheme(family, config, key)`` makes the scheme; ``load_tok(name)`` the tokenizer (text
    reports). An input whose SHA-256 differs from the recorded one is an :class:`InputError` (the
    evidence is not the one reported), as is a missing input. The HTML beside the report
    (``report.html`` for ``report.json``) must be exactly what :func:`render_html` draws from the
    verified JSON: what is shown is what was checked.
    """
    report = load_report(report_path)
    try:
        return _check(report_path, report, key, build_scheme, load_tok)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{report_path}: malformed report ({type(e).__name__}: {e})") from None


def _check(report_path: str | os.PathLike[str], report: dict[str, Any], key: Any, build_scheme: Any,
           load_tok: Any) -> list[str]:
    base = Path(report_path).resolve().parent
    problems: list[str] = []
    if report["family"] not in KEYLESS:
        if key is None:
            raise InputError(f"a {report['family']} report is re-checked with the revealed key (-k)")
        if key.commitment() != report["key"]["commitment"]:
            problems.append("the key does not open the report's commitment")
        if key.fingerprint() != report["key"]["id"]:
            problems.append(f"the key's id is {key.fingerprint()}, the report's {report['key']['id']}")
    paths = []
    for item in report["inputs"]:
        p = base / item["path"]
        if not p.is_file():
            raise InputError(f"{item['path']}: the report's input is missing (looked in {base})")
        if sha256_file(p) != item["sha256"]:
            raise InputError(f"{item['path']}: changed since the report was written (SHA-256 differs)")
        paths.append(str(p))
    if problems:
        return problems
    family = report["family"]
    if family == "probe":
        return _compare(report, probe_figures(paths[0], report["test"]["rows"], report["fpr"]), family) or \
            _check_html(report_path, report)
    if family == "fingerprint":
        if report["inputs"][0]["sha256"] != report["signature_sha256"]:
            return ["the signature's SHA-256 is not the one the report commits to"]
        again = [fingerprint_figures(paths[0], paths[1], report["test"], report["fpr"])]
        return _compare(report, again, family) or _check_html(report_path, report)
    if family == "fingerprint-text":
        again = [text_fingerprint_figures(paths[0], key, report["test"], report["fpr"])]
        return _compare(report, again, family) or _check_html(report_path, report)
    scheme = build_scheme(family, report["scheme"], key)
    if json.loads(json.dumps(scheme.config())) != report["scheme"]:
        return [f"the scheme config does not round-trip: {scheme.config()} != {report['scheme']}"]
    if family == "text":
        again = text_report(paths, scheme, load_tok(report["tokenizer"]), fpr=report["fpr"], key_id=report["key"]["id"],
                            commitment=report["key"]["commitment"], tokenizer_name=report["tokenizer"], command=[],
                            base=base, min_tokens=report.get("min_tokens", 16),
                            null=report.get("null", "gamma" if scheme.capabilities.reference_null else None))["results"]
    elif family == "radioactivity":
        again = [radioactivity_figures(paths[0], scheme, report["fpr"])]
    else:
        again = [eaas_figures(paths[0], scheme, report["test"], report["fpr"])]
    return _compare(report, again, family) or _check_html(report_path, report)


def _check_html(report_path: str | os.PathLike[str], report: dict[str, Any]) -> list[str]:
    """The report's HTML, if present, must be the one its (verified) JSON renders to."""
    page = Path(report_path).with_suffix(".html")
    if not page.exists():
        return []
    try:
        shown = page.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return [f"{page.name} is not readable UTF-8 text"]
    if shown != render_html(report):
        made_by = report.get("versions", {}).get("wmkit")
        return [f"{page.name} does not show what {Path(report_path).name} holds: it was edited after the report was "
                f"written (report by wmkit {made_by}; checked with {versions()['wmkit']})"]
    return []


def _compare(report: dict[str, Any], again: list[dict[str, Any]], family: str) -> list[str]:
    problems = []
    names = ([i["path"] for i in report["inputs"]] if family == "text" else
             [r.get("family") for r in report["results"]] if family == "probe" else [report.get("suspect", "suspect")])
    for name, old, new in zip(names, report["results"], again, strict=True):
        for k in FIGURES[family]:
            if k in ("verdict", "spoof") and k not in old:  # reports from before these figures: the rest is checked
                continue
            if not _same(old.get(k), new.get(k)):
                problems.append(f"{name}: {k} is {_short(new.get(k))}, the report says {_short(old.get(k))}")
    return problems


def _short(x: Any) -> str:
    s = json.dumps(x) if not isinstance(x, str) else x
    return s if len(s) <= 60 else s[:57] + "..."


# ---- HTML ----

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
.yes{color:#0a0;font-weight:bold}.no{color:#555}code{font-size:.9em;word-break:break-all}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}svg{background:#fafafa;border:1px solid #ddd}"""


def _svg(width: int, height: int, body: str, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{html.escape(label)}" class="plot">{body}</svg>')


def _strip(ev: dict[str, list[int]]) -> str:
    """Per-token evidence: one cell per token (green, red = scored not green, grey = not scored)."""
    n = min(len(ev["token_ids"]), MAX_STRIP_TOKENS)
    cols = 100
    rows = max(1, math.ceil(n / cols))
    cells = []
    for i in range(n):
        colour = "#2a2" if ev["green"][i] else "#d33" if ev["scored"][i] else "#ccc"
        cells.append(f'<rect x="{(i % cols) * 6}" y="{(i // cols) * 6}" width="5" height="5" fill="{colour}"/>')
    return _svg(cols * 6, rows * 6, "".join(cells), "per-token evidence")


def _bars(xs: np.ndarray, ys: np.ndarray, mark: float, label: str, w: int = 600, h: int = 160) -> str:
    """A bar chart of ``ys`` over ``xs`` with a vertical line at ``mark``."""
    lo, hi = float(min(xs.min(), mark)), float(max(xs.max(), mark)) + 1
    sx = lambda x: 30 + (x - lo) / (hi - lo) * (w - 40)  # noqa: E731
    top = float(ys.max()) or 1.0
    bars = "".join(f'<rect x="{sx(x):.1f}" y="{h - 20 - y / top * (h - 30):.1f}" width="{max(1.0, (w - 40) / (hi - lo)):.1f}" '
                   f'height="{y / top * (h - 30):.1f}" fill="#69c"/>' for x, y in zip(xs, ys))
    line = f'<line x1="{sx(mark):.1f}" x2="{sx(mark):.1f}" y1="5" y2="{h - 20}" stroke="#d33" stroke-width="2"/>'
    axis = (f'<text x="30" y="{h - 5}" font-size="10">{lo:g}</text><text x="{w - 40}" y="{h - 5}" font-size="10">{hi:g}</text>'
            f'<text x="{sx(mark) + (4 if sx(mark) < w - 90 else -80):.1f}" y="14" font-size="10" fill="#d33">observed {mark:g}</text>')
    return _svg(w, h, bars + line + axis, label)


NULL_WORDS = {"reference": "reference: the key's own green rate on the shipped reference corpora (at least gamma), "
                            "their commonest n-grams not scored",
              "gamma": "gamma: each scored token green with probability gamma (exact over random keys)",
              "exact": "the scheme's exact test"}


def _null_plot(r: dict[str, Any]) -> str:
    """The exact null of the green count, Binomial(tokens scored, gamma), and the observed count."""
    from scipy.stats import binom

    n, g = r["tokens_scored"], r["gamma"]
    k = np.arange(0, n + 1)
    pmf = binom.pmf(k, n, g)
    keep = pmf > pmf.max() * 1e-4
    return _bars(k[keep | (k == r["green"])], pmf[keep | (k == r["green"])], r["green"], "null distribution")


def _scan_plot(r: dict[str, Any]) -> str:
    """z of every window along the scored tokens (the reported size, or 100 when that is the whole
    text), with the reported window shaded."""
    ev, win = r["evidence"], r["window"]
    flags = np.array([g for g, s in zip(ev["green"], ev["scored"]) if s], dtype=float)
    n, gamma = len(flags), r["gamma"]
    w = win["window"] if win["window"] < n else min(100, n // 2)
    if w < 2:
        return ""
    c = np.concatenate([[0], np.cumsum(flags)])
    z = (c[w:] - c[:-w] - gamma * w) / math.sqrt(w * gamma * (1 - gamma))
    width, height = 600, 160
    zmin, zmax = min(float(z.min()), 0.0), max(float(z.max()), 1.0)
    sx = lambda i: 10 + i / max(1, n) * (width - 20)  # noqa: E731
    pts = " ".join(f"{sx(i + w / 2):.1f},{height - 10 - (v - zmin) / (zmax - zmin) * (height - 20):.1f}" for i, v in enumerate(z))
    a, b = sx(win["window_start"]), sx(win["window_start"] + win["window"])
    body = (f'<rect x="{a:.1f}" y="5" width="{max(1.0, b - a):.1f}" height="{height - 10}" fill="#fdd"/>'
            f'<polyline points="{pts}" fill="none" stroke="#36c" stroke-width="1.2"/>'
            f'<text x="14" y="16" font-size="10">z of windows of {w} scored tokens; shaded: the reported window '
            f'({win["window"]} tokens, z {win["z"]:.2f})</text>')
    return _svg(width, height, body, "windowed scan")


def _hist(values: Sequence[float], observed: float, label: str, w: int = 600, h: int = 160, bins: int = 30,
          mark: str = "observed") -> str:
    """A histogram of ``values`` with a vertical line at ``observed`` (the range covers both)."""
    lo, hi = min(min(values), observed), max(max(values), observed)
    hi = hi if hi > lo else lo + 1.0
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    sx = lambda x: 30 + (x - lo) / (hi - lo) * (w - 60)  # noqa: E731
    top = float(counts.max()) or 1.0
    bars = "".join(f'<rect x="{sx(edges[i]):.1f}" y="{h - 20 - c / top * (h - 30):.1f}" '
                   f'width="{max(1.0, sx(edges[i + 1]) - sx(edges[i]) - 1):.1f}" height="{c / top * (h - 30):.1f}" fill="#69c"/>'
                   for i, c in enumerate(counts))
    x = sx(observed)
    line = f'<line x1="{x:.1f}" x2="{x:.1f}" y1="5" y2="{h - 20}" stroke="#d33" stroke-width="2"/>'
    axis = (f'<text x="30" y="{h - 5}" font-size="10">{lo:.3g}</text><text x="{w - 70}" y="{h - 5}" font-size="10">{hi:.3g}</text>'
            f'<text x="{x + (4 if x < w - 110 else -100):.1f}" y="14" font-size="10" fill="#d33">{mark} {observed:.3g}</text>')
    return _svg(w, h, bars + line + axis, label)


def _text_sections(report: dict[str, Any]) -> list[str]:
    e = html.escape
    parts = []
    for item, r in zip(report["inputs"], report["results"]):
        cls = "yes" if r["watermarked"] else "no"
        parts += [
            f"<h2>{e(item['path'])}</h2><table>",
            f"<tr><th>verdict</th><td class='{cls}'>{r.get('verdict', 'watermarked' if r['watermarked'] else 'not watermarked')}</td></tr>",
            f"<tr><th>p-value</th><td>{r['p_value']:.3g} ({e(r['method'])})</td></tr>",
            f"<tr><th>statistic (z)</th><td>{r['z']:.3f}</td></tr>",
            f"<tr><th>tokens scored</th><td>{r['tokens_scored']}"
            + (f", {r['green']} green (null rate {r['gamma']:g})" if "green" in r and "gamma" in r else "") + "</td></tr>",
            f"<tr><th>SHA-256</th><td><code>{e(item['sha256'])}</code> ({item['bytes']} bytes)</td></tr>",
        ]
        if r.get("spoof"):
            sp = r["spoof"]
            parts.append("<tr><th>spoof test</th><td>" + ("p_spoof -" if sp["p_spoof"] is None else f"p_spoof {sp['p_spoof']:.3g}")
                         + f" ({e(sp['spoof_test'])}: colour vs learnability over {sp['spoof_coins']} coins, r {sp['r_spoof']:.3f}; "
                         "small: the mark looks learned from our output, not generated with the key)</td></tr>")
        if "window" in r:
            w = r["window"]
            parts.append(f"<tr><th>windowed scan</th><td>tokens {w['token_start']}&ndash;{w['token_end']}, p {w['p_value']:.3g} "
                         f"(Bonferroni over {w['n_tests']} windows)</td></tr>")
        parts.append("</table>")
        if "green" in r and "gamma" in r:
            parts.append(f"<figure>{_null_plot(r)}<figcaption>Null distribution of the green count: "
                         f"Binomial({r['tokens_scored']}, {r['gamma']:g}); red: the observed count.</figcaption></figure>")
        if "evidence" in r:
            parts.append(f"<figure>{_strip(r['evidence'])}<figcaption>Per-token evidence (first {MAX_STRIP_TOKENS} tokens): "
                         "green = green token, red = scored and not green, grey = not scored (no full context or a "
                         "repeated n-gram).</figcaption></figure>")
        if "window" in r and "evidence" in r and "gamma" in r:
            scan = _scan_plot(r)
            if scan:
                parts.append(f"<figure>{scan}<figcaption>Windowed scan along the scored tokens; shaded: the most "
                             "significant window.</figcaption></figure>")
    return parts


def _eaas_sections(report: dict[str, Any]) -> list[str]:
    e = html.escape
    r, item, t = report["results"][0], report["inputs"][0], report["test"]
    cls = "yes" if r["watermarked"] else "no"
    ks = "n/a (no target)" if r["ks_p"] is None else f"{r['ks_p']:.3g}"
    return [
        f"<h2>suspect: {e(report['suspect'])}</h2><table>",
        f"<tr><th>verdict</th><td class='{cls}'>{'carries the watermark (derived)' if r['watermarked'] else 'not shown to carry the watermark'}</td></tr>",
        f"<tr><th>p-value</th><td>{r['p_value']:.3g} ({e(r['method'])}, mode {e(t['mode'])})</td></tr>",
        f"<tr><th>statistic</th><td>delta-cos {r['delta_cos']:+.4f}, decoy z {r['z']:.2f}, KS p {ks}</td></tr>",
        f"<tr><th>test</th><td>{t['texts']} texts per set, {t['decoys']} decoy trigger sets</td></tr>",
        f"<tr><th>suspect's answers</th><td><code>{e(item['path'])}</code>, SHA-256 <code>{e(item['sha256'])}</code></td></tr>",
        "</table>",
        f"<figure>{_hist(r['null'], r['delta_cos'], 'decoy distribution')}<figcaption>Decoy distribution: the statistic "
        f"for {len(r['null'])} decoy trigger sets (the null); red: the observed value with the key's triggers."
        "</figcaption></figure>",
    ]


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no script, no request)."""
    e = html.escape
    family = report["family"]
    verdicts = ["positive" if r.get("watermarked", r.get("present")) else "negative" for r in report["results"]]
    rows = [("scheme", f"<code>{e(json.dumps(report['scheme']))}</code>")] if "scheme" in report else []
    rows.append(("false-positive rate", f"{report['fpr']:g} (verdict: p &le; FPR)"))
    if "null" in report:
        rows.append(("null", e(NULL_WORDS.get(report["null"], report["null"]))))
    if report.get("key"):
        rows += [("key id", f"<code>{e(report['key']['id'])}</code>"),
                 ("key commitment", f"<code>{e(report['key']['commitment'])}</code>")]
    elif "signature_sha256" in report:
        rows.append(("signature SHA-256", f"<code>{e(report['signature_sha256'])}</code> (the owner's published commitment)"))
    if "tokenizer" in report:
        rows.append(("tokenizer", e(report["tokenizer"])))
    rows += [("created", e(report["created"])),
             ("versions", f"<code>{e(', '.join(f'{k} {v}' for k, v in report['versions'].items()))}</code>"),
             ("reproduce", f"<code>{e(' '.join(report['command']))}</code>"),
             ("re-check", "<code>wm evidence check report.json" + (" -k KEY_FILE" if report.get("key") else "") + "</code>")]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
        f"<title>wmkit evidence: {e(', '.join(verdicts))}</title><style>{CSS}</style></head><body>",
        f"<h1>{TITLES[family]}</h1>",
        "<table>", *(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows), "</table>",
        *SECTIONS[family](report),
        "</body></html>",
    ]
    return "\n".join(parts)


def _fingerprint_sections(report: dict[str, Any]) -> list[str]:
    e = html.escape
    r, t = report["results"][0], report["test"]
    cls = "yes" if r["watermarked"] else "no"
    out = [
        f"<h2>suspect: {e(report['suspect'])} ({e(t['access'])} access)</h2><table>",
        f"<tr><th>verdict</th><td class='{cls}'>{'derived from the signed model' if r['watermarked'] else 'not derived'}</td></tr>",
        f"<tr><th>containment test</th><td>{r['contained']} of {r['queries']} centered outputs inside the signature's space "
        f"(residual &le; tau {r['tau']:.3g}); p {r['p_value']:.3g} against Binomial({r['queries']}, {r['pi0']:.3g})</td></tr>",
        "</table>",
    ]
    rho = np.log10(np.maximum(np.asarray(r["residuals"]), 1e-12))
    out.append(f"<figure>{_hist(list(rho), math.log10(max(r['tau'], 1e-12)), 'residual histogram', mark='log10 tau')}"
               "<figcaption>Residuals of the suspect's centered outputs outside the signature's space (log10); red: the "
               "threshold tau (calibrated at enrollment between derived and unrelated models)."
               "</figcaption></figure>")
    from scipy.stats import binom

    k = np.arange(0, r["queries"] + 1)
    out.append(f"<figure>{_bars(k, binom.pmf(k, r['queries'], r['pi0']), r['contained'], 'null distribution')}"
               f"<figcaption>Null distribution of test 1: contained outputs of an unrelated model, Binomial({r['queries']}, "
               f"{r['pi0']:.3g}); red: the observed count.</figcaption></figure>")
    return out


def _radioactivity_sections(report: dict[str, Any]) -> list[str]:
    from scipy import stats as sps

    e = html.escape
    r, t = report["results"][0], report["test"]
    cls = "yes" if r["watermarked"] else "no"
    counts = ", ".join(f"{k.replace('_', ' ')} {t[k]}" for k in ("candidates", "not_fresh", "filtered", "deduplicated") if k in t)
    out = [
        f"<h2>suspect: {e(report['suspect'])} ({e(t['setting'])} setting)</h2><table>",
        f"<tr><th>verdict</th><td class='{cls}'>{'trained on our marked text (radioactive)' if r['watermarked'] else 'not shown to be trained on our marked text'}</td></tr>",
        f"<tr><th>p-value</th><td>{r['p_value']:.3g} ({e(r['method'])})</td></tr>",
        f"<tr><th>pairs scored</th><td>{r['scored']} distinct (context, token) coins"
        + (f", {r['green']} of {r['trials']} green (null rate {r['gamma']:g})" if r.get("green") is not None else
           f", score {r['statistic']:.1f} against Gamma({r['scored']}, 1)") + f"; {e(counts)}</td></tr>",
        "</table>",
    ]
    if r.get("green") is not None:
        n, g = r["trials"], r["gamma"]
        k = np.arange(0, n + 1)
        pmf = sps.binom.pmf(k, n, g)
        keep = (pmf > pmf.max() * 1e-4) | (k == r["green"])
        out.append(f"<figure>{_bars(k[keep], pmf[keep], r['green'], 'null distribution')}<figcaption>Null distribution of the "
                   f"green count, Binomial({n}, {g:g}); red: the suspect's.</figcaption></figure>")
    elif r["scored"]:
        n = r["scored"]
        x = np.linspace(max(0.0, min(n - 5 * math.sqrt(n), r["statistic"])), max(n + 5 * math.sqrt(n), r["statistic"]), 120)
        out.append(f"<figure>{_bars(x, sps.gamma.pdf(x, n), r['statistic'], 'null distribution')}<figcaption>Null density of "
                   f"the score, Gamma({n}, 1); red: the suspect's.</figcaption></figure>")
    return out


def _probe_sections(report: dict[str, Any]) -> list[str]:
    e = html.escape
    *fams, summary = report["results"]
    measured = {r["family"]: r for r in report["test"]["rows"] if "family" in r}
    verdict = f"watermarked ({e(summary['strongest'])} family)" if summary["present"] else "no watermark shown"
    out = [f"<h2>API: {e(report['suspect'])}</h2><table>",
           f"<tr><th>verdict</th><td class='{'yes' if summary['present'] else 'no'}'>{verdict} at FPR {report['fpr']:g} "
           "(Holm over the families tested)</td></tr>"]
    for r in fams:
        m = measured.get(r["family"], {})
        out.append(f"<tr><th>{e(r['family'])}</th><td>p {r['p_value']:.3g}, Holm {r['p_holm']:.3g}; statistic "
                   f"{r['statistic']:.3g}; {m.get('queries', '?')} queries</td></tr>")
    for fam, m in measured.items():
        if m.get("partial"):
            out.append(f"<tr><th>{e(fam)}</th><td>not finished: {e(str(m.get('stopped')))}</td></tr>")
    out.append("</table>")
    if fams:
        w, h, cap = 600, 30 + 24 * len(fams), 20.0
        sx = lambda v: 150 + min(v, cap) / cap * (w - 170)  # noqa: E731
        bars = "".join(f'<text x="5" y="{30 + 24 * i}" font-size="11">{e(r["family"])}</text><rect x="150" y="{18 + 24 * i}" '
                       f'width="{sx(-math.log10(max(r["p_holm"], 1e-300))) - 150:.1f}" height="16" fill="#69c"/>'
                       for i, r in enumerate(fams))
        line = (f'<line x1="{sx(-math.log10(report["fpr"])):.1f}" x2="{sx(-math.log10(report["fpr"])):.1f}" y1="10" '
                f'y2="{h - 5}" stroke="#d33" stroke-width="2"/>')
        out.append(f"<figure>{_svg(w, h, bars + line, 'Holm-adjusted p-values')}<figcaption>-log10 of each family's "
                   f"Holm-adjusted p-value (capped at {cap:g}); red: -log10 of the FPR. A bar past the line: that family's "
                   "watermark is present.</figcaption></figure>")
    return out


def _text_fingerprint_sections(report: dict[str, Any]) -> list[str]:
    e = html.escape
    r, t = report["results"][0], report["test"]
    cls = "yes" if r["watermarked"] else "no"
    passive = t["mode"] == "passive"
    if passive:
        test = (f"mean log-likelihood ratio {r['mean']:+.2f} nats of {e(t.get('model') or 'the default model')} against the best of "
                f"{e(', '.join([*t['references'], 'uniform', 'unigram']))}; {r['contained']} of {r['queries']} completions "
                f"positive; one-sided t-test t {r['statistic']:.2f}, p {r['p_value']:.3g}")
    else:
        test = (f"{r['contained']} of {r['queries']} greedy answers start with the keyed response; p {r['p_value']:.3g} "
                f"against Binomial({r['queries']}, {r['null_rate']:.3g})")
    out = [f"<h2>suspect: {e(report['suspect'])} (text only, {e(t['mode'])})</h2><table>",
           f"<tr><th>verdict</th><td class='{cls}'>{'derived from our model' if r['watermarked'] else 'not derived'}</td></tr>",
           f"<tr><th>test</th><td>{test}</td></tr></table>"]
    if passive and r["per_query"]:
        out.append(f"<figure>{_hist(r['per_query'], 0.0, 'per-query scores', mark='0')}<figcaption>Per-completion score "
                   "s_i (nats): the model's log-likelihood minus the best reference's. Under the null (the suspect is at least "
                   "as close to a reference as to our model) their mean is at most 0 (red).</figcaption></figure>")
    return out


TITLES = {"text": "Watermark evidence (text)", "eaas": "Watermark evidence (embeddings as a service)",
          "fingerprint": "Fingerprint evidence (model derivation)",
          "fingerprint-text": "Fingerprint evidence (model derivation, text only)",
          "radioactivity": "Radioactivity evidence (a model trained on our marked text)",
          "probe": "Probe evidence (is the API watermarked?)"}
SECTIONS = {"text": _text_sections, "eaas": _eaas_sections, "fingerprint": _fingerprint_sections,
            "fingerprint-text": _text_fingerprint_sections,
            "radioactivity": _radioactivity_sections, "probe": _probe_sections}
