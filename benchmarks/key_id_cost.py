"""What a public key id costs an attacker who searches a small key space (issue 33).

Times wmkit.keys.kdf_key_id (scrypt, the id of vLLM integer keys and SynthID explicit keys) and the
unsalted SHA-256 id it replaced, per candidate key on one core, and prints the CPU-years a search
of 2^32 and 2^40 keys takes with each.

    python benchmarks/key_id_cost.py --json --out benchmarks/results/key_id_cost.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _output import ResultFile, output_args, print_table  # noqa: E402
from wmkit.keys import KDF_ID_PARAMS, kdf_key_id  # noqa: E402

YEAR = 365.25 * 86400


def per_key(fn, n: int) -> float:  # noqa: ANN001
    t = time.process_time()
    for k in range(n):
        fn(k)
    return (time.process_time() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=8, help="candidate keys timed through the KDF")
    output_args(ap)
    args = ap.parse_args()
    out = ResultFile(args.out, "key_id_cost")
    kdf = per_key(lambda k: kdf_key_id.__wrapped__("vllm", (10**6 + k).to_bytes(8, "big")), args.keys)
    old = per_key(lambda k: hashlib.sha256(b"wmkit/vllm-key-id/" + k.to_bytes(8, "big")).hexdigest()[:8], 100000)
    rows = [{"id": name, "seconds_per_key": s, "cpu_years_2^32": s * 2**32 / YEAR, "cpu_years_2^40": s * 2**40 / YEAR}
            for name, s in (("sha256 (before)", old), (f"scrypt {KDF_ID_PARAMS}", kdf))]
    out.write_json({"rows": rows})
    if args.json:
        print(json.dumps({"rows": rows}))
        return
    shown = [{k: (f"{v:.3g}" if isinstance(v, float) else v[:16]) for k, v in r.items()} for r in rows]
    print_table(shown, ["id", "seconds_per_key", "cpu_years_2^32", "cpu_years_2^40"], width=16)


if __name__ == "__main__":
    main()
