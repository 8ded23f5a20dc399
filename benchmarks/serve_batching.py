"""`wm serve`'s batcher in process, without HTTP: closed-loop clients on the default model (KGW).

Each client submits its next completion (an AG News prompt, temperature 0.7, a seed per request)
as soon as the last one is answered. The forward passes are counted -- prefill passes, decode
steps and rows per decode step do not depend on how fast the host is -- beside wall time, request
throughput and latency. Workloads: ``uniform`` (16 tokens each) and ``mixed`` (4, 16 and 64 tokens
in turn: a lockstep batch's short jobs wait for its long ones). ``--baseline REV`` runs the same
load on the batcher of an earlier commit (from a temporary git worktree, in its own process), each
configuration right before or after ours (the order alternating), so that host drift hits both alike (loopback HTTP on this 2-core VM
varies by +-40% between runs: ``serve_load.py``). Rows: ``{code, workload, clients, requests,
wall_s, throughput_rps, p50_ms, p99_ms, passes, prefill_passes, decode_steps, rows_per_step}``.

    python benchmarks/serve_batching.py --baseline 874bebd --out benchmarks/results/serve_batching.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args, print_table  # noqa: E402

WORKLOADS = {"uniform": (16,), "mixed": (4, 16, 64)}


def measure(workload: str, clients: int, requests: int) -> dict:
    """One closed-loop run on a fresh batcher of the wmkit that this process imports."""
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
    prompts, lengths = agnews_prompts(200, words=20), WORKLOADS[workload]
    batcher = Batcher(gen, max_batch=16)

    def request(i: int) -> dict:
        r = parse_completion({"prompt": prompts[i % len(prompts)], "max_tokens": lengths[i % len(lengths)],
                              "temperature": 0.7, "seed": i}, gen.vocab_size, 512)
        (f,) = batcher.submit([gen.prepare(r["prompts"][0], r)])
        return f.result(timeout=900)

    request(10_000)  # warm-up
    passes: list[tuple[int, int]] = []
    forward = lm.forward
    lm.forward = lambda *a, **k: passes.append(tuple(k["input_ids"].shape)) or forward(*a, **k)
    counter, lock, latencies = iter(range(requests)), threading.Lock(), []

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            request(i)
            with lock:
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with gen.lock:  # the worker has left its batch (a future resolves before its batch ends)
        pass
    lat = sorted(latencies)
    if len(lat) != requests:
        raise SystemExit(f"serve_batching.py: {requests - len(lat)} requests failed")
    decode = [rows for rows, width in passes if width == 1]
    pct = lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1)  # noqa: E731
    return {"workload": workload, "clients": clients, "requests": requests, "wall_s": round(wall, 2),
            "throughput_rps": round(requests / wall, 3), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "passes": len(passes), "prefill_passes": len(passes) - len(decode), "decode_steps": len(decode),
            "rows_per_step": round(sum(decode) / max(1, len(decode)), 2)}


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--one":  # a child run: one configuration, its row to a file
        workload, clients, requests, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        from wmkit.files import write_file

        write_file(out, json.dumps(measure(workload, clients, requests)))  # a new file, written atomically
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="uniform,mixed", help="comma-separated: " + ", ".join(WORKLOADS))
    ap.add_argument("--levels", default="1,8,16", help="client counts")
    ap.add_argument("--baseline", metavar="REV", help="also run the batcher of this commit (a git worktree)")
    output_args(ap)
    args = ap.parse_args()
    workloads = args.workloads.split(",")
    if set(workloads) - set(WORKLOADS):
        raise SystemExit(f"serve_batching.py: unknown workload(s) {sorted(set(workloads) - set(WORKLOADS))}; "
                         f"choose from {', '.join(WORKLOADS)}")
    try:
        levels = [int(x) for x in args.levels.split(",")]
    except ValueError:
        raise SystemExit(f"serve_batching.py: --levels takes comma-separated integers, got {args.levels!r}") from None
    out = ResultFile(args.out, "serve_batching.py")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_load import run_child, worktree

    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        runs = [("HEAD", Path(__file__).resolve().parent.parent)]
        if args.baseline:
            runs.append((f"@{args.baseline}", stack.enter_context(worktree(args.baseline))))
        for k, (workload, clients) in enumerate((w, c) for w in workloads for c in levels):
            n = max(24, 3 * clients)
            for code, where in runs if k % 2 == 0 else runs[::-1]:  # back to back, who goes first alternating
                row = {"code": code, **run_child(__file__, where, [workload, str(clients), str(n)])}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                out.write_json({"rows": rows})
    cols = ["code", "workload", "clients", "requests", "wall_s", "throughput_rps", "p50_ms", "p99_ms", "passes",
            "prefill_passes", "rows_per_step"]
    print_table(rows, cols)
    if args.baseline:
        ours = {(r["workload"], r["clients"]): r for r in rows if r["code"] == "HEAD"}
        for r in rows:
            if r["code"] != "HEAD":
                o = ours[(r["workload"], r["clients"])]
                print(f"{r['workload']}, {r['clients']} clients: HEAD vs {r['code']}: throughput "
                      f"{o['throughput_rps'] / r['throughput_rps']:.2f}x, p50 {o['p50_ms'] / r['p50_ms']:.2f}x, "
                      f"passes {o['passes'] / r['passes']:.2f}x")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
