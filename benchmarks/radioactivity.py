"""Radioactivity zoo: is a model fine-tuned on some of our marked completions detected, and are its controls not?

The default LM (SmolLM2-135M-Instruct) writes completions of AG News openings with the scheme's key
(and the same number without a mark). Each member is a full fine-tune of the default LM on token
windows drawn with probability ``fraction`` from the marked completions and otherwise from AG News
articles (human text); the controls take the unmarked completions (``ctl-unmarked``) or human text
only (``ctl-human``) in their place. Then:

- **open**: the marked completions (and 200 human articles) are read through the member
  (:func:`wmkit.forensics.radioactivity.open_pairs`);
- **closed**: the member writes ``--closed-tokens`` tokens from AG News openings (temperature
  0.8), scored after the windows the marked completions hold (``closed_pairs`` with the filter).

A control is also scored under 20 other keys (which never marked anything it saw): its p-values
must look uniform (KS) and none should fall below 1e-2. Members and corpora are cached under the
wmkit cache, so a rerun only scores.

    python benchmarks/radioactivity.py --quick --out benchmarks/results/radioactivity_quick.json
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
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _output import ResultFile, output_args, pick, print_table  # noqa: E402
from fpzoo import BATCH, LENGTH, fresh_copy, log  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402
from wmkit.files import write_file  # noqa: E402
from wmkit.forensics.radioactivity import (closed_pairs, greedy_predictions, open_pairs, pair_scorer,  # noqa: E402
                                           radioactivity_test, window_filter)
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import cache_dir, load_lm, save_atomically  # noqa: E402
from wmkit.stats import ks_2samp  # noqa: E402
from wmkit.watermark.text import make_scheme  # noqa: E402

DATA = Path(__file__).parent / "data"
SCHEMES = {"kgw": ("kgw", {}), "kgw-selfhash": ("kgw", {"context_width": 4, "seeding": "selfhash"}),
           "unigram": ("unigram", {}), "gumbel": ("gumbel", {}), "synthid": ("synthid", {})}
KEY = SecretKey(bytes(range(32)))


def articles(first: int, n: int) -> list[str]:
    """AG News articles ``first .. first + n - 1`` (benchmarks/data/agnews_10k.tsv.gz)."""
    with gzip.open(DATA / "agnews_10k.tsv.gz", "rt", encoding="utf-8") as f:
        rows = [line.split("\t")[0] for line in f]
    return rows[first: first + n]


def openings(n: int, first: int = 2000) -> list[str]:
    """The first 12 words of ``n`` AG News articles: prompts the LM continues."""
    return [" ".join(a.split()[:12]) for a in articles(first, n)]


def completions(name: str, marked: bool, n: int, tokens: int, lm: Any, tok: Any) -> list[str]:
    """``n`` completions of ``tokens`` tokens, marked with ``name``'s scheme under KEY or not (cached)."""
    path = cache_dir() / "benchmarks" / "radioactivity" / f"{name if marked else 'none'}-{n}x{tokens}.json"
    if path.exists():
        return json.loads(path.read_text())
    scheme = make_scheme(SCHEMES[name][0], KEY, **SCHEMES[name][1]) if marked else None
    t0 = time.time()
    rows = generate_completions(lm, tok, openings(n), scheme, max_new_tokens=tokens, temperature=1.0, seed=1, chat=False)
    out = [r["completion"] for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(out))  # atomic, never over an existing file
    log(f"{path.name}: {n} completions in {time.time() - t0:.0f} s")
    return out


def train(member: str, streams: list[tuple[torch.Tensor, float]], steps: int, lm: Any, lr: float) -> Any:
    """A full fine-tune of the default LM on windows drawn from ``streams`` (ids, probability) (cached)."""
    folder = cache_dir() / "benchmarks" / "radioactivity" / f"{member}-{steps}"
    if (folder / "config.json").exists():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    model = fresh_copy(lm)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(sum(map(ord, member)))
    weights = torch.tensor([w for _, w in streams])
    model.train()
    t0 = time.time()
    for step in range(steps):
        rows = []
        for s in torch.multinomial(weights, BATCH, replacement=True, generator=g).tolist():
            ids = streams[s][0]
            start = int(torch.randint(0, len(ids) - LENGTH, (1,), generator=g))
            rows.append(ids[start: start + LENGTH])
        x = torch.stack(rows)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log(f"{member}: step {step + 1}, loss {loss.item():.3f}, {(time.time() - t0) / (step + 1):.2f} s/step")
    model.eval()
    save_atomically(folder, model)
    return model


def ids_of(tok: Any, texts: list[str]) -> list[torch.Tensor]:
    return [torch.tensor(tok(t, add_special_tokens=False)["input_ids"], dtype=torch.long) for t in texts]


def score(scheme: Any, model: Any, tok: Any, ours: list[torch.Tensor], human: list[torch.Tensor],
          closed_tokens: int, max_tokens: int) -> dict[str, Any]:
    """The open and closed tests of ``model`` for ``scheme``."""
    scorer = pair_scorer(scheme)
    preds = greedy_predictions(model, ours + human, batch_size=8)
    op = radioactivity_test(open_pairs(scorer, ours + human, preds, marked=[True] * len(ours) + [False] * len(human)),
                            1e-3, "open")
    n = max(1, closed_tokens // max_tokens)
    gens = generate_completions(model, tok, openings(n, first=4000), None, max_new_tokens=max_tokens, temperature=0.8,
                                seed=2, chat=False)
    cl = radioactivity_test(closed_pairs(scorer, ids_of(tok, [r["completion"] for r in gens]),
                                         window_filter(ours, scorer.width)), 1e-3, "closed+filter")
    return {"open_p": op.p_value, "open_scored": op.n_scored, "closed_p": cl.p_value, "closed_scored": cl.n_scored,
            "closed_generated": sum(len(x) for x in ids_of(tok, [r["completion"] for r in gens]))}


def clean_null(lm: Any, tok: Any, names: list[str]) -> list[dict[str, Any]]:
    """The default LM, which never saw text marked by these keys, reads 200 human articles (open
    setting, the tape alone) under 20 keys per scheme: the p-values should look uniform."""
    human = ids_of(tok, articles(9000, 200))
    t0 = time.time()
    preds = greedy_predictions(lm, human, 8)
    log(f"greedy predictions over {len(human)} articles in {time.time() - t0:.0f} s")
    rows = []
    for name in names:
        ps, scored = [], []
        for k in range(20):
            s = make_scheme(SCHEMES[name][0], SecretKey(bytes([9, k]) * 16), **SCHEMES[name][1])
            det = radioactivity_test(open_pairs(pair_scorer(s), human, preds, marked=[False] * len(human)), 1e-3, "open")
            ps.append(det.p_value)
            scored.append(det.n_scored)
        rows.append({"scheme": name, "keys": 20, "scored_median": float(np.median(scored)),
                     "ks_p": float(ks_2samp(ps, np.linspace(0.025, 0.975, 20))[1]), "min_p": float(min(ps)),
                     "below_1e-2": int(sum(p < 1e-2 for p in ps))})
        log(json.dumps(rows[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default="kgw", help=f"comma-separated, of {list(SCHEMES)}")
    ap.add_argument("--fractions", default="0.01,0.05,0.2", help="fractions of marked training windows")
    ap.add_argument("--completions", type=int, default=400)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per marked completion")
    ap.add_argument("--steps", type=int, default=600, help="fine-tuning steps (batch 4 x 64 tokens)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--closed-tokens", type=int, default=100_000)
    ap.add_argument("--null-only", action="store_true", help="only the clean default LM reading 200 human articles, "
                    "scored under 20 keys per scheme (the real-model null; no generation, no fine-tune)")
    ap.add_argument("--quick", action="store_true", help="kgw; 20%% and 100%% marked; 160 completions; 120 steps; 8k closed tokens")
    output_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.schemes, args.fractions, args.completions, args.steps, args.closed_tokens = "kgw", "0.2,1.0", 160, 120, 8_000
    out = ResultFile(args.out, "radioactivity.py")
    lm, tok = load_lm()
    if args.null_only:
        rows = clean_null(lm, tok, pick(args.schemes, SCHEMES, "radioactivity.py", "scheme"))
        out.write_json({"rows": rows, "args": vars(args) | {"out": str(args.out)}})
        print(json.dumps({"rows": rows}, indent=1) if args.json else "")
        if not args.json:
            print_table(rows, ["scheme", "keys", "scored_median", "ks_p", "min_p", "below_1e-2"])
        return
    human_train = ids_of(tok, ["\n\n".join(articles(5000, 3000))])[0]
    human_read = ids_of(tok, articles(9000, 200))
    rows: list[dict[str, Any]] = []
    for name in pick(args.schemes, SCHEMES, "radioactivity.py", "scheme"):
        scheme = make_scheme(SCHEMES[name][0], KEY, **SCHEMES[name][1])
        marked = completions(name, True, args.completions, args.tokens, lm, tok)
        unmarked = completions(name, False, args.completions, args.tokens, lm, tok)
        ours = ids_of(tok, marked)
        marked_stream = ids_of(tok, ["\n\n".join(marked)])[0]
        unmarked_stream = ids_of(tok, ["\n\n".join(unmarked)])[0]
        members = [(f"{name}-{f:g}", [(marked_stream, f), (human_train, 1 - f)], f) for f in map(float, args.fractions.split(","))]
        top = max(float(f) for f in args.fractions.split(","))
        members += [(f"ctl-unmarked-{top:g}", [(unmarked_stream, top), (human_train, 1 - top)], None),
                    ("ctl-human", [(human_train, 1.0)], None)]
        for member, streams, frac in members:
            t0 = time.time()
            model = train(f"{member}-{args.completions}x{args.tokens}", [(s, w) for s, w in streams if w > 0], args.steps, lm, args.lr)
            row = {"scheme": name, "member": member, "marked_fraction": frac, "steps": args.steps,
                   **score(scheme, model, tok, ours, human_read, args.closed_tokens, args.tokens)}
            if frac is None:  # a control: 20 other keys, which never marked what it saw
                others = [make_scheme(SCHEMES[name][0], SecretKey(bytes([7, k]) * 16), **SCHEMES[name][1]) for k in range(20)]
                preds = greedy_predictions(model, human_read, 8)
                ps = [radioactivity_test(open_pairs(pair_scorer(o), human_read, preds, marked=[False] * len(human_read)),
                                         1e-3, "open").p_value for o in others]
                row.update({"control_keys": 20, "control_min_p": float(min(ps)),
                            "control_ks_p": float(ks_2samp(ps, np.linspace(0.025, 0.975, 20))[1])})
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            log(json.dumps(row))
            out.write_json({"rows": rows, "args": vars(args) | {"out": str(args.out)}})
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    else:
        print_table(rows, ["scheme", "member", "marked_fraction", "open_p", "open_scored", "closed_p", "closed_scored",
                           "control_min_p", "control_ks_p"])


if __name__ == "__main__":
    main()
