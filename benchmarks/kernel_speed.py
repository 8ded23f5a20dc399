"""Green-list bias per generation step: Triton kernel vs torch reference vs transformers.

For batch 1, 8, 64, 256 and vocab 49,152 / 128,256 / 256,000 (float32 logits, KGW lefthash
h = 1, gamma 0.25, delta 2), times on one GPU:

* ``triton``: the fused kernel writing a new tensor (what the transformers processor uses);
* ``triton_inplace``: the same in place (what the vLLM adapter uses; only green logits written);
* ``torch``: the eager torch reference (the CPU spec run on the GPU);
* ``transformers``: transformers' ``WatermarkLogitsProcessor`` (a Python loop over rows).

Achieved bandwidth counts bytes read + written: out-of-place ``2 * B * V * 4``, in place
``(1 + gamma) * B * V * 4``; it is reported against the GPU's peak (H100 SXM 3.35 TB/s, H200
4.8 TB/s) and against a device-to-device copy of the same bytes measured in the same run.

    python benchmarks/kernel_speed.py [--json] [--quick]

Without CUDA it says so and exits 0 (the kernel is checked on the CPU by the parity tests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

PEAK_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}
GAMMA, DELTA, H = 0.25, 2.0, 1
KEY = (0x243F6A88, 0x85A308D3)


def _bench(fn, reps: int = 50) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10, rep=reps, return_mode="median"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print a JSON list of rows instead of the table")
    ap.add_argument("--quick", action="store_true", help="vocab 49,152 only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("kernel_speed: no CUDA device here; GPU figures are still to be measured "
              "(the kernels' parity is tested on the CPU under TRITON_INTERPRET=1).")
        return
    from transformers import WatermarkLogitsProcessor

    from wmkit import kernels
    from wmkit.kernels.triton_green import green_bias_triton

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BYTES_PER_S.items() if k in name), None)
    rows = []
    for vocab in ([49152] if args.quick else [49152, 128256, 256000]):
        hf = WatermarkLogitsProcessor(vocab, "cuda", greenlist_ratio=GAMMA, bias=DELTA, seeding_scheme="lefthash", context_width=H)
        for b in (1, 8, 64, 256):
            scores = torch.randn(b, vocab, device="cuda")
            ids = torch.randint(0, vocab, (b, 64), device="cuda")
            buf = scores.clone()
            copy_dst = torch.empty_like(scores)
            t_tri = _bench(lambda: green_bias_triton(scores, ids, KEY, H, "lefthash", GAMMA, DELTA))
            t_inp = _bench(lambda: green_bias_triton(buf, ids, KEY, H, "lefthash", GAMMA, DELTA, out=buf))
            t_ref = _bench(lambda: kernels.green_bias_reference(scores, ids, KEY, H, "lefthash", GAMMA, DELTA), reps=20)
            t_hf = _bench(lambda: hf(ids, scores), reps=20 if b <= 64 else 10)
            t_copy = _bench(lambda: copy_dst.copy_(scores))
            nbytes = 2 * b * vocab * 4
            bw = nbytes / (t_tri * 1e-3)
            bw_inp = (1 + GAMMA) * b * vocab * 4 / (t_inp * 1e-3)
            rows.append({
                "vocab": vocab, "batch": b,
                "triton_ms": round(t_tri, 4), "triton_inplace_ms": round(t_inp, 4),
                "torch_ms": round(t_ref, 4), "transformers_ms": round(t_hf, 3), "copy_ms": round(t_copy, 4),
                "triton_gb_s": round(bw / 1e9, 1), "triton_inplace_gb_s": round(bw_inp / 1e9, 1),
                "pct_peak": round(100 * bw / peak, 1) if peak else None,
                "pct_peak_inplace": round(100 * bw_inp / peak, 1) if peak else None,
                "pct_copy": round(100 * t_copy / t_tri, 1),
                "speedup_vs_transformers": round(t_hf / t_tri, 1), "speedup_vs_torch": round(t_ref / t_tri, 1),
            })
    if args.json:
        print(json.dumps({"device": name, "peak_bytes_per_s": peak, "rows": rows}))
        return
    print(f"device: {name}; peak {peak / 1e12 if peak else float('nan'):.2f} TB/s")
    head = ("vocab", "batch", "triton ms", "inplace ms", "torch ms", "hf ms", "GB/s", "%peak", "inpl %peak", "%copy", "x hf", "x torch")
    print(" ".join(f"{h:>10}" for h in head))
    for r in rows:
        vals = (r["vocab"], r["batch"], r["triton_ms"], r["triton_inplace_ms"], r["torch_ms"], r["transformers_ms"],
                r["triton_gb_s"], r["pct_peak"], r["pct_peak_inplace"], r["pct_copy"], r["speedup_vs_transformers"], r["speedup_vs_torch"])
        print(" ".join(f"{v:>10}" for v in vals))


if __name__ == "__main__":
    main()
