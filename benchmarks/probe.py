"""wm probe against wm serve on the real default LM: is each server's watermark found, and which family?

For each scheme (and ``none``, the control), the completions app of ``wm serve`` is built in
process around SmolLM2-135M-Instruct with that scheme (:func:`wmkit.server.completions.create_app`,
reached through a test client: the same requests and answers as over HTTP, without a port), and
:func:`wmkit.forensics.probe.probe` runs the three tests of arXiv 2405.20777 against it. A row per
(scheme, family): the p-value, Holm's, the statistic, the queries spent; and a summary row per
scheme (present, family, queries, seconds). The control must not be flagged at the FPR.

    python benchmarks/probe.py --quick --json --out benchmarks/results/probe_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).parent))

from _output import ResultFile, output_args, pick, print_table  # noqa: E402
from fpzoo import log  # noqa: E402

from wmkit.engine import Generator  # noqa: E402
from wmkit.forensics.probe import FAMILIES, Endpoint, probe  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_lm  # noqa: E402
from wmkit.server.completions import create_app  # noqa: E402
from wmkit.watermark.text import make_scheme  # noqa: E402

SCHEMES: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None, "kgw": ("kgw", {}), "kgw-selfhash": ("kgw", {"context_width": 4, "seeding": "selfhash"}),
    "unigram": ("unigram", {}), "synthid": ("synthid", {}), "gumbel": ("gumbel", {}), "exp-edit": ("exp-edit", {}),
    "vllm-gumbel": ("vllm-gumbel", {})}
KEY = SecretKey(bytes(range(32)))
VLLM_KEY = 0x5EED_1234_ABCD_0042  # vLLM's marks take a 64-bit integer key


def sampler(client: Any) -> Any:
    """``sample(prompt, n, max_tokens, temperature)`` over the app's /v1/completions."""

    def sample(prompt: str, n: int, max_tokens: int, temperature: float) -> list[str]:
        r = client.post("/v1/completions", json={"prompt": prompt, "n": n, "max_tokens": max_tokens, "temperature": temperature})
        r.raise_for_status()
        return [c["text"] for c in r.json()["choices"]]

    return sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated, of {list(SCHEMES)}")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--samples", type=int, default=64, help="red-green: samples per (prefix, digit) cell")
    ap.add_argument("--story-samples", type=int, default=100, help="fixed-sampling: samples of the story prompt")
    ap.add_argument("--fpr", type=float, default=1e-3)
    ap.add_argument("--quick", action="store_true", help="red-green 32 samples per cell, 60 story samples")
    output_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.samples, args.story_samples = 32, 60
    from fastapi.testclient import TestClient

    out = ResultFile(args.out, "probe.py")
    lm, tok = load_lm()
    rows: list[dict[str, Any]] = []
    for name in pick(args.schemes, SCHEMES, "probe.py", "scheme"):
        spec = SCHEMES[name]
        scheme = make_scheme(spec[0], VLLM_KEY if spec[0].startswith("vllm") else KEY, **spec[1]) if spec else None
        client = TestClient(create_app(Generator(lm, tok, scheme)))
        endpoint = Endpoint(sampler(client), per_request=64)
        t0 = time.time()
        options = {"red-green": {"samples": args.samples}, "fixed-sampling": {"samples": args.story_samples},
                   "cache-augmented": {"wait": 0.0}}
        result = probe(endpoint, args.fpr, args.families.split(","), options)
        for r in result:
            rows.append({"scheme": name, **r})
            log(json.dumps(rows[-1]))
        rows[-1]["seconds"] = round(time.time() - t0, 1)
        out.write_json({"rows": rows, "args": vars(args) | {"out": str(args.out)}})
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    else:
        print_table(rows, ["scheme", "family", "p_value", "p_holm", "statistic", "queries", "present"])


if __name__ == "__main__":
    main()
