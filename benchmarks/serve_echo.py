"""Loglikelihood requests as evaluation harnesses send them to `wm serve` (lm-evaluation-harness's
``local-completions``: token-id prompts, ``echo``, ``max_tokens`` 1, ``logprobs`` 1, temperature 0),
through the batcher in process on the default model (KGW): wall time and forward passes.

Each request carries ``--batch`` prompts (the harness's ``batch_size``): an AG News context of 40-120
words plus a continuation of a few words, as token ids; requests go one after another (the
harness's default ``num_concurrent`` of 1). ``--baseline REV`` runs the same requests on an earlier
commit's server code (a temporary git worktree, in its own process), each setting right before or
after ours, the order alternating. Rows: ``{code, prompts_per_request, requests, prompt_tokens,
wall_s, prompts_per_s, passes}``.

    python benchmarks/serve_echo.py --baseline e6740ea --out benchmarks/results/serve_echo.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args, print_table  # noqa: E402


def measure(batch: int, requests: int) -> dict:
    """``requests`` loglikelihood requests of ``batch`` prompts each, one after another, on a fresh
    batcher of the wmkit that this process imports."""
    import torch

    from wmkit.keys import SecretKey
    from wmkit.models import load_default_lm
    from wmkit.server.batching import Batcher
    from wmkit.engine import Generator
    from wmkit.server.schema import parse_completion
    from wmkit.watermark.text import KGW

    torch.manual_seed(0)
    lm, tok = load_default_lm()
    gen = Generator(lm, tok, scheme=KGW(SecretKey.from_hex("5eed" * 16)))
    batcher = Batcher(gen, max_batch=64)
    texts = agnews_prompts(batch * requests + 1, words=120)
    prompts = []
    for i, text in enumerate(texts):
        words = text.split()[: 40 + (37 * i) % 81]  # 40-120 words of context, then 3-6 words of continuation
        cut = len(words) - 3 - i % 4
        prompts.append(tok(" ".join(words[:cut])).input_ids + tok(" " + " ".join(words[cut:])).input_ids)

    def request(ps: list[list[int]]) -> None:
        r = parse_completion({"prompt": ps, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234},
                             gen.vocab_size, 512)
        for f in batcher.submit(gen.prepare_all(r)):
            f.result(timeout=900)

    request(prompts[-1:])  # warm-up
    passes: list[tuple[int, int]] = []
    forward = lm.forward
    lm.forward = lambda *a, **k: passes.append(tuple(k["input_ids"].shape)) or forward(*a, **k)
    t0 = time.perf_counter()
    for i in range(requests):
        request(prompts[i * batch : (i + 1) * batch])
    wall = time.perf_counter() - t0
    batcher.close()
    n = batch * requests
    return {"prompts_per_request": batch, "requests": requests, "prompt_tokens": sum(len(p) for p in prompts[:n]),
            "wall_s": round(wall, 2), "prompts_per_s": round(n / wall, 2), "passes": len(passes)}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--one":  # a child run: one setting, its row to a file
        from wmkit.files import write_file

        write_file(sys.argv[4], json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,4,16", help="prompts per request (comma-separated)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per setting")
    ap.add_argument("--baseline", metavar="REV", help="also run the server code of this commit (a git worktree)")
    output_args(ap)
    args = ap.parse_args()
    try:
        batches = [int(x) for x in args.batches.split(",")]
    except ValueError:
        raise SystemExit(f"serve_echo.py: --batches takes comma-separated integers, got {args.batches!r}") from None
    if min(batches) < 1 or max(batches) > 16 or args.prompts < max(batches):
        raise SystemExit("serve_echo.py: need 1 <= batch <= 16 (the server's prompts per request) and --prompts >= each batch")
    out = ResultFile(args.out, "serve_echo.py")
    from serve_load import run_child, worktree

    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        runs = [("HEAD", Path(__file__).resolve().parent.parent)]
        if args.baseline:
            runs.append((f"@{args.baseline}", stack.enter_context(worktree(args.baseline))))
        for k, batch in enumerate(batches):
            for code, where in runs if k % 2 == 0 else runs[::-1]:
                row = {"code": code, **run_child(__file__, where, [str(batch), str(args.prompts // batch)])}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                out.write_json({"rows": rows})
    print_table(rows, ["code", "prompts_per_request", "requests", "prompt_tokens", "wall_s", "prompts_per_s", "passes"])
    if args.baseline:
        ours = {r["prompts_per_request"]: r for r in rows if r["code"] == "HEAD"}
        for r in rows:
            if r["code"] != "HEAD":
                o = ours[r["prompts_per_request"]]
                print(f"{r['prompts_per_request']} prompts per request: HEAD vs {r['code']}: prompts/s "
                      f"{o['prompts_per_s'] / r['prompts_per_s']:.2f}x, passes {o['passes'] / r['passes']:.2f}x")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
