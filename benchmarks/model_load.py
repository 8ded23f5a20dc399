"""Default-model load time: first load (GGUF de-quantization + cache write) vs cached load.

Each load runs in a fresh Python process (so nothing is shared in memory) against an empty
temporary cache folder.

    python benchmarks/model_load.py [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

LOAD = (
    "import time, os; os.environ['HF_HUB_OFFLINE']='1'; t=time.perf_counter();"
    "from wmkit.models import load_default_lm; load_default_lm(cache={cache!r});"
    "print(time.perf_counter()-t)"
)


def timed_load(cache: str) -> float:
    out = subprocess.run([sys.executable, "-c", LOAD.format(cache=cache)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        first, second = timed_load(cache), timed_load(cache)
    row = {"first_load_s": round(first, 2), "cached_load_s": round(second, 2), "speedup": round(first / second, 1)}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{'first load (GGUF) s':>20} {'cached load s':>14} {'speedup':>8}")
        print(f"{first:>20.2f} {second:>14.2f} {first / second:>7.1f}x")


if __name__ == "__main__":
    main()
