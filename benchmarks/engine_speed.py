"""The generation engine (what ``wm generate``, ``wm serve`` and the benchmarks run) against
transformers' ``generate`` with the same wmkit processor: tokens per second on the default model,
and whether the tokens are the same.

Each prompt is seeded ``seed + i``; transformers runs each prompt alone after
``torch.manual_seed(seed + i)`` (the run whose tokens the engine reproduces) and, for speed, the
whole batch at once (its tokens then differ: one global generator is shared by the batch's rows).
The engine runs the batch in lockstep with a generator per row.

    python benchmarks/engine_speed.py [--prompts 8] [--tokens 64] [--schemes none,kgw,gumbel] [--json] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from _output import ResultFile, output_args, print_table  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_default_lm  # noqa: E402
from wmkit.watermark.text import SCHEMES  # noqa: E402

PROMPTS = Path(__file__).resolve().parents[1] / "tests" / "data" / "prompts.txt"


def hf_generate(lm, tok, prompts, scheme, tokens, seed, batch):
    """transformers' generate with the scheme's processor: per prompt (``batch`` False) or all at once."""
    procs = [scheme.processor(tok)] if scheme is not None else []
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
              logits_processor=procs, pad_token_id=tok.eos_token_id)
    if batch:
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True)
        torch.manual_seed(seed)
        return lm.generate(**enc, **kw)[:, enc.input_ids.shape[1]:].tolist()
    out = []
    for i, p in enumerate(prompts):
        enc = tok(p, return_tensors="pt")
        torch.manual_seed(seed + i)
        out.append(lm.generate(**enc, **kw)[0, enc.input_ids.shape[1]:].tolist())
    return out


def timed(fn):
    t = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    output_args(ap)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--schemes", default="none,kgw,gumbel")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    out = ResultFile(args.out, "engine_speed")
    lm, tok = load_default_lm()
    prompts = [ln for ln in PROMPTS.read_text().splitlines() if ln.strip()][: args.prompts]
    rows = []
    for name in args.schemes.split(","):
        scheme = None if name == "none" else SCHEMES[name](key=42 if name.startswith("vllm") else SecretKey(bytes(32)))
        engine, t_engine = timed(lambda: generate_completions(lm, tok, prompts, scheme, max_new_tokens=args.tokens,
                                                              min_new_tokens=args.tokens, seed=args.seed,
                                                              batch_size=len(prompts)))
        alone, t_alone = timed(lambda: hf_generate(lm, tok, prompts, scheme, args.tokens, args.seed, batch=False))
        _, t_batch = timed(lambda: hf_generate(lm, tok, prompts, scheme, args.tokens, args.seed, batch=True))
        same = sum(e["completion_ids"] == [t for t in a if t != tok.eos_token_id] for e, a in zip(engine, alone))
        n = len(prompts) * args.tokens
        rows.append({"scheme": name, "prompts": len(prompts), "tokens": args.tokens,
                     "engine_tok_s": round(n / t_engine, 1), "hf_batch_tok_s": round(n / t_batch, 1),
                     "hf_alone_tok_s": round(n / t_alone, 1), "engine_vs_hf_batch": round(t_batch / t_engine, 2),
                     "same_tokens_as_hf_alone": f"{same}/{len(prompts)}"})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out.write_json({"threads": torch.get_num_threads(), "rows": rows})
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows, list(rows[0]), width=12)


if __name__ == "__main__":
    main()
