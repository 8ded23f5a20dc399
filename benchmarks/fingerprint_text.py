"""Text-only (invasive) fingerprints: embed keyed pairs into the default model, then ask a zoo of suspects.

The owner fine-tunes ``--pairs`` keyed (prompt -> response) pairs into SmolLM2-135M-Instruct
(:mod:`wmkit.fingerprint.invasive`, as ``wm fingerprint embed`` does) and later asks each suspect the
same prompts through a text-only interface (greedy answers; no log-probs, no logit bias). A verdict
is "derived" at p <= 1e-6 (binomial test of the matches against the null rate ``p0``).

Reported:

- what embedding cost: steps, seconds, the held-out perplexity before and after (50 AG News
  articles of ``agnews_3000.tsv.gz``, which nothing here trains on) and how many of the default
  model's greedy answers to 50 AG News prompts (their first 20 words) are unchanged;
- per suspect: matches of the ``--pairs`` answers, p, verdict, queries, API calls, seconds.
  Derived: the fingerprinted model, it in bfloat16, it fine-tuned on AG News for ``--ft-steps``
  (full fine-tune, lr 1e-4, batch 4 x 64 tokens: ``fpzoo.py``'s recipe), and its 0.5 linear merge
  with a fine-tune of the original model (``ft-news-1e-4-200`` of ``fpzoo.py``) and with the
  original model itself. Unrelated: the original model (never fingerprinted), ``ft-news-1e-4-200``
  (the original fine-tuned, never fingerprinted), two random initializations. The unrelated rows'
  match rates are the evidence for the null floor (2%).

    python benchmarks/fingerprint_text.py --out benchmarks/results/fingerprint_text.json
    python benchmarks/fingerprint_text.py --quick        # 16 pairs, 50 fine-tune steps
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

import fpzoo  # noqa: E402
from _output import ResultFile, output_args, print_table  # noqa: E402
from wmkit.files import write_file  # noqa: E402
from wmkit.fingerprint import random_init_like  # noqa: E402
from wmkit.fingerprint.invasive import (  # noqa: E402
    NULL_FLOOR, LocalText, behaviour_change, embed_fingerprint, fingerprint_pairs, verify_text_fingerprint,
)
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_lm, save_atomically  # noqa: E402

KEY = SecretKey(bytes(range(100, 132)))  # the benchmark's owner key (fixed: the cache depends on it)
COLS = ["suspect", "kind", "matched", "pairs", "p_value", "derived", "queries", "api_calls", "seconds"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def agnews_heldout(n: int = 50) -> tuple[list[str], list[str]]:
    """``n`` AG News articles of ``agnews_3000.tsv.gz`` (held-out text) and their first 20 words (prompts)."""
    with gzip.open(fpzoo.DATA / "agnews_3000.tsv.gz", "rt", encoding="utf-8") as f:
        docs = [ln.split("\t")[0] for _, ln in zip(range(n), f)]
    return docs, [" ".join(d.split()[:20]) for d in docs]


def embedded(victim: Any, tok: Any, pairs: list, steps: int) -> tuple[Any, str, float]:
    """The fingerprinted model (cached under the zoo folder), its zoo name and the seconds embedding took."""
    name = f"fptext-k{len(pairs)}-s{steps}"
    folder = fpzoo.zoo_dir() / name
    if folder.is_dir():
        return fpzoo.load_member(name), name, float(json.loads((folder / "embed.json").read_text())["seconds"])
    t0 = time.time()
    model = embed_fingerprint(victim, tok, pairs, KEY, steps=steps,
                              on_step=lambda s, loss: log(f"embed step {s}, loss {loss:.3f}") if s % 10 == 0 else None)
    seconds = time.time() - t0

    class Meta:
        def save_pretrained(self, d: str) -> None:
            write_file(Path(d, "embed.json"), json.dumps({"seconds": seconds}))

    save_atomically(folder, model, Meta())
    return model, name, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="embedding steps")
    ap.add_argument("--ft-steps", type=int, default=1000, help="steps of the fine-tune attack on the fingerprinted model")
    ap.add_argument("--quick", action="store_true", help="16 pairs, 50 fine-tune steps")
    output_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.ft_steps = 16, 50
    out = ResultFile(args.out, "fingerprint_text")
    victim, tok = load_lm()
    t0 = time.time()
    pairs = fingerprint_pairs(victim, tok, KEY, args.pairs)
    pair_seconds = time.time() - t0
    log(f"{args.pairs} pairs in {pair_seconds:.1f} s")
    tuned, name, embed_seconds = embedded(victim, tok, pairs, args.steps)
    docs, prompts = agnews_heldout()
    change = behaviour_change(victim, tuned, tok, pairs, texts=docs, prompts=prompts)
    embed = {"pairs": args.pairs, "steps": args.steps, "seconds": round(embed_seconds, 1), "pair_seconds": round(pair_seconds, 1),
             **{k: change[k] for k in ("ppl_before", "ppl_after", "ppl_change_pct", "answers_same", "answers")},
             "null_floor": NULL_FLOOR}
    log(f"embedded: {embed}")

    run = f"{name}-news-1e-4"
    fpzoo.RUNS[run] = ("news", 1e-4, "victim")  # the fine-tune attack, trained from the fingerprinted model
    fpzoo.train_run(run, [args.ft_steps], tuned, tok)
    fpzoo.train_run("ft-news-1e-4", [200], victim, tok)
    base_ft = fpzoo.load_member("ft-news-1e-4-200")
    suspects = [
        ("fingerprinted", "derived", lambda: tuned),
        ("fingerprinted-bf16", "derived", lambda: fpzoo.fresh_copy(tuned).to(torch.bfloat16)),
        (f"fingerprinted+ft-news-{args.ft_steps}", "derived", lambda: fpzoo.load_member(f"{run}-{args.ft_steps}")),
        ("merge-0.5-ft-news-200", "derived", lambda: fpzoo.linear_merge(tuned, base_ft, 0.5)),
        ("merge-0.5-original", "derived", lambda: fpzoo.linear_merge(tuned, victim, 0.5)),
        ("original", "unrelated", lambda: victim),
        ("ft-news-1e-4-200", "unrelated", lambda: base_ft),
        ("random-1", "unrelated", lambda: random_init_like(victim, 1)),
        ("random-2", "unrelated", lambda: random_init_like(victim, 2)),
    ]
    rows = []
    for suspect, kind, make in suspects:
        access = LocalText(make(), tok)
        t = time.time()
        rep = verify_text_fingerprint(pairs, access)
        rows.append({"suspect": suspect, "kind": kind, "matched": rep.containment.details["green"], "pairs": len(pairs),
                     "p_value": float(f"{rep.p_value:.3g}"), "derived": rep.derived, "queries": rep.queries,
                     "api_calls": rep.api_calls, "seconds": round(time.time() - t, 1)})
        log(f"{suspect}: {rows[-1]}")
        out.write_json({"embed": embed, "rows": rows})
    print_table(rows, COLS)
    print("embed:", json.dumps(embed))
    if args.json:
        print(json.dumps({"embed": embed, "rows": rows}))


if __name__ == "__main__":
    main()
