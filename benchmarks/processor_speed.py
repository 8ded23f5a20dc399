"""Time per generation step: wmkit's processor vs transformers' own, for KGW or SynthID.

Both see the same [batch, 49152] scores and [batch, 32] input ids on the CPU, with the same
parameters: KGW gamma 0.25, delta 2, lefthash, h = 1, or selfhash, h = 4 (``--scheme kgw-selfhash``;
transformers' WatermarkLogitsProcessor);
SynthID ngram_len 5, 30 layers, table 2^16 (transformers' SynthIDTextWatermarkLogitsProcessor; the
32 ids are a completion in progress, so wmkit's repeated-context check scans all of them). Also
times one SmolLM2-135M decode step at batch 32 (a forward pass of one token with a 64-token KV
cache), the cost the processor is measured against.

    python benchmarks/processor_speed.py                      # table (KGW)
    python benchmarks/processor_speed.py --scheme kgw-selfhash  # KGW selfhash, h = 4
    python benchmarks/processor_speed.py --scheme synthid     # SynthID
    python benchmarks/processor_speed.py --json               # JSON list of rows (--out FILE: to a new file)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from transformers import WatermarkLogitsProcessor  # noqa: E402
from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor  # noqa: E402

from _output import ResultFile, output_args  # noqa: E402
from _timing import median_ms  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.watermark.text import KGW, SynthID  # noqa: E402

VOCAB = 49152


def decode_step_ms(batch: int = 32, context: int = 64) -> float:
    """One decode step of the default LM at ``batch`` with a ``context``-token KV cache."""
    from wmkit.models import load_default_lm

    lm, _ = load_default_lm()
    ids = torch.randint(0, VOCAB, (batch, context))
    with torch.no_grad():
        past = lm(ids, use_cache=True).past_key_values
        nxt = torch.randint(0, VOCAB, (batch, 1))

        def step():
            lm(nxt, past_key_values=past, use_cache=True)
            past.crop(-1)  # drop the new token: the cache stays at `context` tokens

        return median_ms(step, repeats=10, warmup=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    output_args(ap)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--no-decode", action="store_true", help="skip the SmolLM2 decode-step measurement")
    ap.add_argument("--scheme", choices=["kgw", "kgw-selfhash", "synthid"], default="kgw")
    args = ap.parse_args()
    out = ResultFile(args.out, "processor_speed")

    if args.scheme.startswith("kgw"):
        seeding, h = ("selfhash", 4) if args.scheme == "kgw-selfhash" else ("lefthash", 1)
        ours = KGW(SecretKey.generate(), gamma=0.25, delta=2.0, context_width=h, seeding=seeding).processor()
        theirs = WatermarkLogitsProcessor(VOCAB, "cpu", greenlist_ratio=0.25, bias=2.0, seeding_scheme=seeding, context_width=h)
    else:
        keys = tuple(range(101, 131))
        ours = SynthID(keys, ngram_len=5).processor()
    rows = []
    for b in map(int, args.batches.split(",")):
        if args.scheme == "synthid":  # transformers' state is sized by its first call's batch
            theirs = SynthIDTextWatermarkLogitsProcessor(5, list(keys), 2**16, 0, 1024, torch.device("cpu"))
        g = torch.Generator().manual_seed(b)
        scores = torch.randn(b, VOCAB, generator=g)
        ids = torch.randint(0, VOCAB, (b, 32), generator=g)

        def step() -> None:
            if args.scheme == "synthid":  # continue a completion that started at column 0
                ours._prev, ours._start = ids[:, :-1], 0
            ours(ids, scores)

        w = median_ms(step, repeats=5 if args.scheme == "synthid" else 30, warmup=2)
        t = median_ms(lambda: theirs(ids, scores.clone()), repeats=3 if b >= 32 else 5, warmup=1)
        rows.append({"batch": b, "wmkit_ms": round(w, 4), "transformers_ms": round(t, 3), "ratio": round(t / w, 1)})
    decode = None if args.no_decode else decode_step_ms()
    out.write_json({"scheme": args.scheme, "threads": torch.get_num_threads(), "rows": rows, "decode_step_ms": decode})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'batch':>6} {'wmkit ms':>10} {'transformers ms':>16} {'ratio':>7}")
    for r in rows:
        print(f"{r['batch']:>6} {r['wmkit_ms']:>10.3f} {r['transformers_ms']:>16.2f} {r['ratio']:>6.1f}x")
    if decode is not None:
        at32 = next((r for r in rows if r["batch"] == 32), None)
        share = f"; wmkit processor = {100 * at32['wmkit_ms'] / decode:.2f}% of it" if at32 else ""
        print(f"SmolLM2-135M decode step at batch 32: {decode:.1f} ms{share}")


if __name__ == "__main__":
    main()
