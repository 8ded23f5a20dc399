"""What the reference null costs in power: z and TPR of marked text, plain test vs ``null="reference"``.

The reference null drops the references' common coins (context width >= 1) and tests against the
key's own rate, so a marked text has fewer scored tokens and a higher null rate. This script
generates ``--n`` marked completions per scheme (kgw lefthash h1 and selfhash h4, gamma 0.25, delta 2;
AG News prompts, T = 1) and scores their first 200 and 50 tokens both ways.

    python benchmarks/reference_null_power.py [--n 20] [--json] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_default_lm  # noqa: E402
from wmkit.watermark.text import SCHEMES  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402

SCHEMES_TESTED = {
    "kgw-h1": {"gamma": 0.25, "delta": 2.0},
    "kgw-selfhash-h4": {"gamma": 0.25, "delta": 2.0, "seeding": "selfhash", "context_width": 4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="marked completions per scheme")
    output_args(ap)
    args = ap.parse_args()
    out = ResultFile(args.out, "reference_null_power")
    lm, tok = load_default_lm()
    prompts = agnews_prompts(args.n)
    rows = []
    for name, params in SCHEMES_TESTED.items():
        scheme = SCHEMES["kgw"](key=SecretKey(bytes(range(32))), **params)
        done = generate_completions(lm, tok, prompts, scheme, max_new_tokens=200, min_new_tokens=200, seed=5, batch_size=20)
        for tokens in (200, 50):
            texts = [tok.decode(r["completion_ids"][:tokens]) for r in done]
            row = {"scheme": name, "tokens": tokens, "texts": len(texts)}
            for null in ("gamma", "reference"):
                res = [d for d in scheme.detector(tok, null=null).detect_many(texts) if not isinstance(d, Exception)]
                p = np.array([d.p_value for d in res])
                row[null] = {"mean_z": float(np.mean([d.statistic for d in res])), "mean_scored": float(np.mean([d.n_scored for d in res])),
                             "tpr_at_1e-3": float(np.mean(p <= 1e-3)), "median_log10_p": float(np.median(np.log10(p)))}
            row["z_ratio"] = row["reference"]["mean_z"] / row["gamma"]["mean_z"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    out.write_json({"rows": rows})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'scheme':<17}{'tokens':>7}{'z gamma':>9}{'z ref':>8}{'ratio':>7}{'scored':>15}{'TPR@1e-3':>14}")
    for r in rows:
        g, f = r["gamma"], r["reference"]
        print(f"{r['scheme']:<17}{r['tokens']:>7}{g['mean_z']:>9.2f}{f['mean_z']:>8.2f}{r['z_ratio']:>7.3f}"
              f"{g['mean_scored']:>7.1f} ->{f['mean_scored']:>6.1f}{g['tpr_at_1e-3']:>7.2f} ->{f['tpr_at_1e-3']:>5.2f}")


if __name__ == "__main__":
    main()
