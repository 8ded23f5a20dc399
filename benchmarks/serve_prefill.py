"""How long a long prompt that joins a running batch stalls it: `wm serve`'s batcher in process, on
the default model (KGW), with its joiners prefilled in one pass or in chunks (``prefill_chunk``).

Each run: ``--running`` greedy completions of ``--tokens`` tokens run; once each has 10 tokens, one
request with a prompt of L tokens (AG News text, ``--lengths``) and 16 new tokens is submitted. Per
token of the running completions the time is recorded (as a streamed request sees it). Rows:
``{prefill_chunk, prompt_tokens, max_gap_ms, p50_gap_ms, joiner_ttft_s, joiner_s, running_s}``: the
longest and the median gap between two tokens of a running completion, the joiner's time to its
first token and to its end, and the running completions' wall time. ``prefill_chunk`` None is one
prefill pass (the batcher before chunked prefill). The settings run in turn, the order alternating
per prompt length, so host drift hits them alike.

    python benchmarks/serve_prefill.py --out benchmarks/results/serve_prefill.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args, print_table  # noqa: E402


def long_prompt(tok: object, n: int) -> list[int]:
    """``n`` token ids of AG News text."""
    ids: list[int] = []
    for text in agnews_prompts(2000, words=60):
        ids += tok(" " + text).input_ids  # type: ignore[operator]
        if len(ids) >= n:
            return ids[:n]
    raise SystemExit(f"serve_prefill.py: not enough AG News text for a {n}-token prompt")


def measure(gen: object, prompt: list[int], running: int, tokens: int, chunk: int | None) -> dict:
    """One run (see the module docstring) on a fresh batcher over ``gen``."""
    from wmkit.server.batching import Batcher
    from wmkit.server.schema import parse_completion

    gen.prefill_chunk = chunk  # type: ignore[attr-defined]
    batcher = Batcher(gen, max_batch=16)  # type: ignore[arg-type]
    short = agnews_prompts(running, words=20)
    stamps: list[list[float]] = [[] for _ in range(running)]
    jobs = []
    for i in range(running):
        r = parse_completion({"prompt": short[i], "max_tokens": tokens, "temperature": 0}, gen.vocab_size, 4096)  # type: ignore[attr-defined]
        job = gen.prepare(r["prompts"][0], r)  # type: ignore[attr-defined]
        job.listener = lambda j, s=stamps[i]: s.append(time.perf_counter())
        jobs.append(job)
    t0 = time.perf_counter()
    futures = batcher.submit(jobs)
    while min(len(j.out_ids) for j in jobs) < 10:
        time.sleep(0.005)
    r = parse_completion({"prompt": prompt, "max_tokens": 16, "temperature": 0}, gen.vocab_size, 4096)  # type: ignore[attr-defined]
    joiner = gen.prepare(r["prompts"][0], r)  # type: ignore[attr-defined]
    first: list[float] = []
    joiner.listener = lambda j: first.append(time.perf_counter())
    t_join = time.perf_counter()
    (f_join,) = batcher.submit([joiner])
    ends: list[float] = []
    f_join.add_done_callback(lambda f: ends.append(time.perf_counter()))
    for f in futures:
        f.result(timeout=1800)
    running_s = time.perf_counter() - t0
    f_join.result(timeout=1800)
    while not ends:  # the callback runs just after result() returns
        time.sleep(0.001)
    joiner_s = ends[0] - t_join
    batcher.close()  # its worker has ended
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:])]
    return {"prefill_chunk": chunk, "prompt_tokens": len(prompt), "running": running, "tokens": tokens,
            "max_gap_ms": round(1000 * max(gaps), 1), "p50_gap_ms": round(1000 * statistics.median(gaps), 1),
            "joiner_ttft_s": round(first[0] - t_join, 2), "joiner_s": round(joiner_s, 2), "running_s": round(running_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024,2048", help="prompt lengths of the joining request (tokens)")
    ap.add_argument("--chunks", default="none,256,512", help="prefill_chunk settings (none: one pass)")
    ap.add_argument("--running", type=int, default=4, help="completions running when it joins")
    ap.add_argument("--tokens", type=int, default=120, help="tokens of each running completion")
    output_args(ap)
    args = ap.parse_args()
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        chunks = [None if x == "none" else int(x) for x in args.chunks.split(",")]
    except ValueError:
        raise SystemExit("serve_prefill.py: --lengths and --chunks take comma-separated integers (--chunks also 'none')") from None
    if min(lengths) < 1 or any(c is not None and c < 1 for c in chunks) or args.running < 1 or args.tokens < 20:
        raise SystemExit("serve_prefill.py: need lengths >= 1, chunks >= 1, --running >= 1 and --tokens >= 20")
    out = ResultFile(args.out, "serve_prefill.py")

    import torch

    from wmkit.keys import SecretKey
    from wmkit.models import load_default_lm
    from wmkit.engine import Generator
    from wmkit.watermark.text import KGW

    torch.manual_seed(0)
    lm, tok = load_default_lm()
    gen = Generator(lm, tok, scheme=KGW(SecretKey.from_hex("5eed" * 16)))
    measure(gen, long_prompt(tok, 64), 2, 20, None)  # warm-up
    rows: list[dict] = []
    for k, n in enumerate(lengths):
        prompt = long_prompt(tok, n)
        for chunk in chunks if k % 2 == 0 else chunks[::-1]:
            rows.append(measure(gen, prompt, args.running, args.tokens, chunk))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            out.write_json({"rows": rows})
    cols = ["prefill_chunk", "prompt_tokens", "max_gap_ms", "p50_gap_ms", "joiner_ttft_s", "joiner_s", "running_s"]
    print_table(rows, cols)
    for n in dict.fromkeys(lengths):  # each chunked run against the one-pass runs (their median) of its length
        one = [r for r in rows if r["prompt_tokens"] == n and r["prefill_chunk"] is None]
        if not one:
            continue
        base = {k: statistics.median(r[k] for r in one) for k in ("max_gap_ms", "joiner_ttft_s", "running_s")}
        for r in rows:
            if r["prompt_tokens"] == n and r["prefill_chunk"] is not None:
                print(f"{n}-token joiner, chunk {r['prefill_chunk']} vs one pass: longest gap "
                      f"{r['max_gap_ms'] / base['max_gap_ms']:.2f}x, joiner's first token "
                      f"{r['joiner_ttft_s'] / base['joiner_ttft_s']:.2f}x, running completions {r['running_s'] / base['running_s']:.2f}x")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
