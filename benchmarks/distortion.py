"""How much a scheme distorts the model's distribution, measured on the same contexts (paired).

The perplexity of generated text is a noisy quality measure (at 20 prompts its 95% interval spans
tens of percent: text_size.py). This benchmark removes the sampling noise: along unmarked
completions of the default model (AG News prompts, 200 tokens, T = 1.0), at every step it takes
the model's distribution ``P`` and the scheme's distribution ``P_w`` for that exact context (the
processor applied to the same logits; a scheme that picks the token itself puts all mass on its
pick) and averages the expected negative log-likelihood ``E_{x ~ P_w}[-log P(x)]`` against the
entropy ``H(P)``. ``expected_ppl_increase_pct = 100 (exp(mean CE - mean H) - 1)`` is the perplexity
increase that marked text has *in expectation* under the model, with a 95% bootstrap interval over
completions. A distortion-free scheme has ``E_key[P_w] = P``, so its increase is 0 up to the
keys' luck; a green-list bias moves mass to green tokens, so it pays. ``--keys R`` averages each
step's scheme distribution over R keys (the benchmark key and R - 1 derived from it): for a
distortion-free scheme the per-step gap keeps mean 0 and loses most of its variance, which is what
resolves a 1% target (one key: +-6% at 4,000 steps).

    python benchmarks/distortion.py --quick --json --out distortion.json
    python benchmarks/distortion.py --quick --schemes gumbel,synthid --keys 32 --out distortion_keys32.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_default_lm  # noqa: E402
from wmkit.watermark.text import make_scheme  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402



def per_text_gap(lm, tok, prompt: str, completion: list[int], schemes: list) -> tuple[float, float, int]:
    """Sums of ``E_{P_w}[-log P]`` and ``H(P)`` over the completion's steps, and the step count;
    ``P_w`` is the scheme's distribution averaged over the keys of ``schemes`` (one scheme per key)."""
    p_ids = tok(prompt, return_tensors="pt").input_ids[0]
    ids = torch.cat([p_ids, torch.tensor(completion, dtype=torch.long)])
    with torch.no_grad():
        logits = lm(input_ids=ids.unsqueeze(0)).logits[0].float()
    procs = [s.processor(tok) for s in schemes]  # each keeps its own state (histories) along the text
    ce = ent = 0.0
    start = len(p_ids)
    for t in range(start, len(ids)):
        row = logits[t - 1 : t]  # the distribution of token t
        logp = torch.log_softmax(row.double(), -1)
        w = sum(torch.softmax(proc(ids[:t].unsqueeze(0), row.clone()).double(), -1) for proc in procs) / len(procs)
        ce += float(-(w * logp).nansum())
        ent += float(-(logp.exp() * logp).nansum())
    return ce, ent, len(ids) - start


def keys(n: int) -> list[SecretKey]:
    """The benchmark's first key (bytes 0..31), then ``n - 1`` more derived from it by SHA-256."""
    first = bytes(range(32))
    return [SecretKey(first)] + [SecretKey(hashlib.sha256(first + i.to_bytes(4, "big")).digest()) for i in range(1, n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 prompts (default 50)")
    ap.add_argument("--schemes", default="synthid,synthid-distortionary,gumbel,kgw",
                    help="comma-separated; also synthid-prf, kgw-g0.25-d1.0, kgw-g0.25-d1.5, kgw-g0.5-d1.0, kgw-g0.5-d1.5")
    ap.add_argument("--keys", type=int, default=1,
                    help="average each step's scheme distribution over this many keys (a distortion-free scheme's "
                         "per-step gap then has mean 0 and 1/keys of its variance)")
    ap.add_argument("--prompts", type=int, default=None, help="number of prompts (default 50; quick 20)")
    output_args(ap)
    args = ap.parse_args()
    out_file = ResultFile(args.out, "distortion")
    n = args.prompts or (20 if args.quick else 50)
    if args.keys < 1:
        sys.exit("distortion: --keys must be at least 1")
    prompts = agnews_prompts(n)
    lm, tok = load_default_lm()
    plain = generate_completions(lm, tok, prompts, None, max_new_tokens=200, min_new_tokens=200, seed=7, batch_size=20)
    key_set = keys(args.keys)
    table = {"synthid": ("synthid", {}), "synthid-prf": ("synthid", {"gvalues": "prf"}),
             "synthid-distortionary": ("synthid", {"num_leaves": 3}),
             "gumbel": ("gumbel", {}), "kgw": ("kgw", {"gamma": 0.25, "delta": 2.0}),
             **{f"kgw-g{g}-d{d}": ("kgw", {"gamma": g, "delta": d}) for g, d in ((0.25, 1.0), (0.25, 1.5), (0.5, 1.0), (0.5, 1.5))}}
    rows = []
    rng = np.random.default_rng(0)
    for name in args.schemes.split(","):
        base, params = table[name]
        schemes = [make_scheme(base, k, **params) for k in key_set]
        per = np.array([per_text_gap(lm, tok, p, r["completion_ids"], schemes) for p, r in zip(prompts, plain)])
        ce, ent, steps = per[:, 0], per[:, 1], per[:, 2]
        est = 100 * (math.exp((ce.sum() - ent.sum()) / steps.sum()) - 1)
        boots = []
        for _ in range(2000):
            i = rng.integers(0, len(per), len(per))
            boots.append(100 * (math.exp((ce[i].sum() - ent[i].sum()) / steps[i].sum()) - 1))
        rows.append({"scheme": name, "texts": len(per), "steps": int(steps.sum()), "keys": args.keys,
                     "mean_entropy_nats": float(ent.sum() / steps.sum()), "mean_cross_entropy_nats": float(ce.sum() / steps.sum()),
                     "expected_ppl_increase_pct": round(est, 3),
                     "ci95": [round(float(np.percentile(boots, 2.5)), 3), round(float(np.percentile(boots, 97.5)), 3)]})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"prompts": n, "tokens": 200, "keys": args.keys, "rows": rows}
    out_file.write_json(result)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'scheme':<24}{'steps':>7}{'H (nats)':>10}{'CE (nats)':>11}{'ppl +%':>9}   95% CI")
    for r in rows:
        print(f"{r['scheme']:<24}{r['steps']:>7}{r['mean_entropy_nats']:>10.3f}{r['mean_cross_entropy_nats']:>11.3f}"
              f"{r['expected_ppl_increase_pct']:>9.2f}   [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]")


if __name__ == "__main__":
    main()
