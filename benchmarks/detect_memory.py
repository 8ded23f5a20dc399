"""Peak memory of `wm detect` on one large text file (kgw, kgw --windowed, ie): it streams the file.

Input: AG News articles (benchmarks/data/agnews_10k.tsv.gz) with their words shuffled (a fixed
seed), repeated to ``--mb`` MiB of UTF-8 text in one file in a temporary folder -- shuffled so
that almost every n-gram is new and the streaming detector's n-gram set grows as it would on
real text of that size. Each row runs ``wm detect FILE -k KEY --json`` in a fresh process and
reports its peak resident set (``ru_maxrss`` of that child alone), wall time and the verdict.
Target (issue 18): peak RSS <= 1 GiB for kgw and ie at 100 MB.

    python benchmarks/detect_memory.py --json                  # 100 MiB: kgw, kgw windowed, ie
    python benchmarks/detect_memory.py --mb 10 --schemes kgw --out m.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

sys.path.insert(0, os.path.dirname(__file__))

from _output import ResultFile, output_args, pick  # noqa: E402
from wmkit.files import write_file  # noqa: E402

DATA = Path(__file__).parent / "data" / "agnews_10k.tsv.gz"
RUN = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
       "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
       "print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()[-300:])")
CONFIGS = {"kgw": ["-s", "kgw"], "kgw-windowed": ["-s", "kgw", "--windowed"], "ie": ["-s", "ie"]}


def write_input(path: Path, mib: float, seed: int = 0) -> int:
    """``mib`` MiB of shuffled-word news text; returns its size in bytes."""
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        docs = [line.split("\t")[0].split() for line in f if line.strip()]
    rng, target = random.Random(seed), int(mib * 2**20)
    written = [0]

    def write(out: BinaryIO) -> None:  # streamed into the atomic writer's temporary file
        while written[0] < target:
            words = list(rng.choice(docs))
            rng.shuffle(words)
            line = (" ".join(words) + "\n").encode("utf-8")
            out.write(line)
            written[0] += len(line)

    write_file(path, write)
    return written[0]


def run(config: str, path: Path, key: Path) -> dict:
    """One `wm detect` in a fresh process: peak RSS (MiB), seconds, and its JSON row."""
    cmd = [sys.executable, "-m", "wmkit.cli.main", "detect", str(path), "-k", str(key), "--json", *CONFIGS[config]]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RUN, *cmd], capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - t0
    head, last = out.split("\n", 1)
    rc, rss_kib = map(int, head.split())
    try:
        row = json.loads(last)
    except json.JSONDecodeError:
        row = {"error": last.strip()}
    return {"scheme": config, "input_mb": round(path.stat().st_size / 2**20, 1), "peak_rss_mb": round(rss_kib / 1024, 1),
            "seconds": round(seconds, 1), "exit": rc, "tokens_scored": row.get("tokens_scored"),
            "p_value": row.get("p_value"), "error": row.get("error")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100.0, help="input size in MiB")
    ap.add_argument("--schemes", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    output_args(ap)
    args = ap.parse_args()
    configs = pick(args.schemes, CONFIGS, "detect_memory.py", "scheme(s)")
    out = ResultFile(args.out, "detect_memory.py")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        key, text = Path(tmp) / "k", Path(tmp) / "input.txt"
        subprocess.run([sys.executable, "-m", "wmkit.cli.main", "keygen", "-o", str(key)], check=True, capture_output=True)
        write_input(text, args.mb)
        for config in configs:
            rows.append(run(config, text, key))
            print(f"{rows[-1]['scheme']:>13}  {rows[-1]['input_mb']:>7.1f} MiB  peak {rows[-1]['peak_rss_mb']:>7.1f} MiB  "
                  f"{rows[-1]['seconds']:>6.1f} s  tokens {rows[-1]['tokens_scored']}  {rows[-1]['error'] or ''}",
                  file=sys.stderr, flush=True)
            out.write_json({"mb": args.mb, "rows": rows})
    print(f"{'scheme':>13} {'input MiB':>10} {'peak RSS MiB':>13} {'seconds':>8} {'tokens scored':>14}")
    for r in rows:
        print(f"{r['scheme']:>13} {r['input_mb']:>10.1f} {r['peak_rss_mb']:>13.1f} {r['seconds']:>8.1f} {r['tokens_scored']!s:>14}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
