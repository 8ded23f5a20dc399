"""Load on wmkit's two servers over loopback: latency, throughput and errors at 1, 8 and 32 clients.

Servers (each started as its own process on a free loopback port, default models, a fresh key):
``wm serve -s kgw`` (completions, concurrent requests batched, ``--max-batch 16``), the same with
``--max-batch 1`` (one completion at a time: the serialised baseline), ``wm serve-embeddings
-s espew`` (concurrent requests encoded together, up to 256 texts) and the same with ``--max-batch 1``
(one request at a time). Each client sends its next request as soon as the previous one is answered; requests
are valid: a completion of 16 tokens (temperature 0.7, a seed) of an AG News prompt, or the
embedding of one AG News article. ``--max-tokens 4,16,64`` cycles the completions' lengths (a
mixed load, where a batch's short jobs used to wait for its long ones). ``--baseline REV`` adds
the completions server of an earlier commit, run from a temporary git worktree, to the same run
(``wm serve @REV``): the peer of a server change. Rows: ``{server, concurrency, requests, p50_ms, p99_ms,
throughput_rps, errors_4xx, errors_5xx}``. Target (issue 18): zero 5xx, and ``wm serve``'s
throughput at 8 clients >= 3x its throughput at 1 client.

    python benchmarks/serve_load.py --json                      # 1, 8, 32 clients; up to 200 requests each
    python benchmarks/serve_load.py --quick --out load.json     # fewer requests
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args, pick  # noqa: E402

SERVERS = {
    "wm serve": (["serve", "-s", "kgw", "--max-batch", "16"], "/v1/completions"),
    "wm serve --max-batch 1": (["serve", "-s", "kgw", "--max-batch", "1"], "/v1/completions"),
    "wm serve-embeddings": (["serve-embeddings", "-s", "espew"], "/v1/embeddings"),
    "wm serve-embeddings --max-batch 1": (["serve-embeddings", "-s", "espew", "--max-batch", "1"], "/v1/embeddings"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], key: Path, port: int, source: Path | None = None) -> subprocess.Popen:
    """Start a server (from the wmkit at ``source`` if given) and wait until ``/health`` answers
    (model loading included)."""
    env = {**os.environ, "PYTHONPATH": str(source)} if source is not None else None
    # `python -m` puts the working directory first on sys.path: run an earlier commit from its own tree
    proc = subprocess.Popen([sys.executable, "-m", "wmkit.cli.main", *args, "-k", str(key), "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=source)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None:
                raise SystemExit(f"serve_load.py: {' '.join(args)} exited: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"serve_load.py: {' '.join(args)} did not answer /health in 300 s")


def body(path: str, i: int, texts: list[str], max_tokens: tuple[int, ...]) -> bytes:
    if path == "/v1/completions":
        n = max_tokens[i % len(max_tokens)]
        return json.dumps({"prompt": texts[i % len(texts)], "max_tokens": n, "temperature": 0.7, "seed": i}).encode()
    return json.dumps({"input": texts[i % len(texts)]}).encode()


@contextlib.contextmanager
def worktree(rev: str):
    """A temporary git worktree of this repository at ``rev`` (removed afterwards)."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "wmkit"
        r = subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(where), rev], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"serve_load.py: --baseline {rev}: {r.stderr.strip().splitlines()[-1]}")
        try:
            yield where.resolve()
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(where)], capture_output=True)


def run_child(script: str, source: Path, args: list[str]) -> dict:
    """``script --one *args OUT`` in a new process that imports the wmkit at ``source`` (a baseline's
    worktree, or this checkout); the JSON row it wrote to ``OUT``."""
    name = Path(script).name
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(script).resolve()), "--one", *args, str(out)]
        r = subprocess.run(cmd, cwd=source, env={**os.environ, "PYTHONPATH": str(source)}, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{name}: the run at {source} failed: {r.stderr.strip()[-400:]}")
        return json.loads(out.read_text())


def load(url: str, path: str, clients: int, requests: int, texts: list[str], max_tokens: tuple[int, ...] = (16,)) -> dict:
    """``requests`` requests from ``clients`` closed-loop clients; latency percentiles and status counts."""
    latencies: list[float] = []
    status: list[int] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            req = urllib.request.Request(url + path, data=body(path, i, texts, max_tokens),
                                         headers={"content-type": "application/json"})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    r.read()
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            except (urllib.error.URLError, ConnectionError, OSError):
                code = 599  # no HTTP answer at all: counted as a server error
            with lock:
                latencies.append(time.perf_counter() - t0)
                status.append(code)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    pct = lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1)  # noqa: E731
    return {"concurrency": clients, "requests": len(status), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "throughput_rps": round(len(status) / wall, 3), "errors_4xx": sum(400 <= c < 500 for c in status),
            "errors_5xx": sum(c >= 500 for c in status)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests per level (CI-sized)")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: " + ", ".join(SERVERS))
    ap.add_argument("--levels", default="1,8,32", help="client counts")
    ap.add_argument("--max-tokens", default="16", help="completion lengths, cycled over the requests (e.g. 4,16,64)")
    ap.add_argument("--baseline", metavar="REV", help="also run `wm serve` as it was at this commit (a git worktree)")
    output_args(ap)
    args = ap.parse_args()
    names = pick(args.servers, SERVERS, "serve_load.py", "server(s)")
    try:
        levels = [int(x) for x in args.levels.split(",")]
        max_tokens = tuple(int(x) for x in args.max_tokens.split(","))
    except ValueError:
        raise SystemExit(f"serve_load.py: --levels and --max-tokens take comma-separated integers, got "
                         f"{args.levels!r} and {args.max_tokens!r}") from None
    if min(levels) < 1 or min(max_tokens) < 1:
        raise SystemExit("serve_load.py: --levels and --max-tokens must be positive")
    out = ResultFile(args.out, "serve_load.py")
    prompts, articles = agnews_prompts(200, words=20), agnews_prompts(200, words=60)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        key = Path(tmp) / "k"
        subprocess.run([sys.executable, "-m", "wmkit.cli.main", "keygen", "-o", str(key)], check=True, capture_output=True)
        runs = [(name, *SERVERS[name], None) for name in names]
        if args.baseline:
            runs.append((f"wm serve @{args.baseline}", *SERVERS["wm serve"], stack.enter_context(worktree(args.baseline))))
        for name, argv, path, source in runs:
            port = free_port()
            proc = start(argv, key, port, source)
            try:
                texts = prompts if path == "/v1/completions" else articles
                load(f"http://127.0.0.1:{port}", path, 2, 4, texts)  # warm-up: first-call compilation and caches
                for clients in levels:
                    n = min(200, max(clients * (2 if args.quick else 4), 8 if args.quick else 24))
                    row = {"server": name, "max_tokens": max_tokens,
                           **load(f"http://127.0.0.1:{port}", path, clients, n, texts, max_tokens)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    out.write_json({"rows": rows})
            finally:
                proc.terminate()
                proc.wait(30)
    width = max(24, *(len(r["server"]) for r in rows))
    print(f"{'server':>{width}} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'4xx':>4} {'5xx':>4}")
    for r in rows:
        print(f"{r['server']:>{width}} {r['concurrency']:>7} {r['requests']:>8} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} "
              f"{r['throughput_rps']:>7.2f} {r['errors_4xx']:>4} {r['errors_5xx']:>4}")
    base = {r["server"]: r["throughput_rps"] for r in rows if r["concurrency"] == 1}
    for r in rows:
        if r["concurrency"] > 1 and r["server"] in base:
            print(f"{r['server']}: {r['concurrency']} clients / 1 client throughput = {r['throughput_rps'] / base[r['server']]:.2f}x")
    if args.baseline:
        then = {r["concurrency"]: r for r in rows if r["server"].startswith("wm serve @")}
        for r in rows:
            if r["server"] == "wm serve" and r["concurrency"] in then:
                b = then[r["concurrency"]]
                print(f"wm serve vs @{args.baseline}, {r['concurrency']} clients: throughput "
                      f"{r['throughput_rps'] / b['throughput_rps']:.2f}x, p50 {r['p50_ms'] / b['p50_ms']:.2f}x, "
                      f"p99 {r['p99_ms'] / b['p99_ms']:.2f}x")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
