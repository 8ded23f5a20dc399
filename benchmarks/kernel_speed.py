"""PRF v2 green-list kernels on a GPU: generation bias and detection, Triton vs torch vs transformers.

Generation rows (KGW lefthash h = 1 and selfhash h = 4, gamma 0.25, delta 2, float32 logits;
vocab 49,152 / 128,256 / 256,000; batch 1, 8, 64, 256):

* ``triton``: the fused kernel writing a new tensor (what the transformers processor uses);
* ``triton_inplace``: the same in place (what the vLLM adapter uses; only green logits written);
* ``torch``: the eager torch reference (the CPU spec run on the GPU);
* ``transformers``: transformers' ``WatermarkLogitsProcessor`` (lefthash only; a loop over rows);
* ``copy``: a device-to-device copy of the same bytes (``B * V * 4`` read and written), measured in
  the same run. The target (issue 12): at batch 64 the kernel reaches >= 90% of the copy's speed.

Every Triton output is compared with the torch reference bit for bit (``bit_exact``), and for
batch 8 (2 in ``--smoke``) of the first vocabulary with ``torch.compile`` of the reference on the same device (``compiled_bit_exact``).

Detection rows: the Triton detection kernel over one packed row of N token ids (what
``detect_many(..., device="cuda")`` launches), against the eager torch reference on the GPU, in
tokens/s; and ``detect_many`` end to end from token ids (packing, the kernel, n-gram
deduplication, the counts and p-values; no evidence lists) on 4,096 documents of 512 tokens.

``--sweep`` adds rows for other launch shapes at batch 64 (vocabulary entries per program x
num_warps); the bits never depend on them.

    python benchmarks/kernel_speed.py [--quick] [--sweep] [--json] [--out FILE]
    python benchmarks/kernel_speed.py --smoke     # tiny sizes on the CPU, Triton interpreted

Without CUDA (and without ``--smoke``) it says so and exits 0: the kernels' parity is tested on
the CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from benchmarks._output import ResultFile, output_args, print_table  # noqa: E402

PEAK_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}
GAMMA, DELTA = 0.25, 2.0
KEY = (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)  # PRF v2: (k0, k1, d0, d1)
SEEDINGS = (("lefthash", 1), ("selfhash", 4))


class _Vocab:
    """A tokenizer stand-in for detection from token ids: only its size is used."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _bench(fn, device: str) -> float:
    """Median milliseconds of ``fn()``: CUDA events through ``triton.testing.do_bench`` on a GPU."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _wall_ms(fn, device: str, repeats: int = 3) -> float:
    """Median wall milliseconds of ``fn()`` after one untimed call (synchronized on CUDA)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _compiled_equal(scores, ids, seeding: str, h: int) -> bool | str:
    """``torch.compile`` of the torch reference on ``scores``' device, bit for bit against eager."""
    from wmkit import kernels, prf

    try:
        fn = torch.compile(kernels._bias, dynamic=False)
        window, k, groups = kernels._inputs(ids, KEY, h, scores.shape[-1])
        args = (scores, window, k, groups, None, prf.threshold(GAMMA), DELTA, seeding == "selfhash")
        return bool(torch.equal(fn(*args), kernels._bias(*args)))
    except Exception as e:  # no compiler here: say so in the row
        return f"unavailable: {type(e).__name__}"


def generation_rows(vocabs, batches, device: str, peak: float | None) -> list[dict]:
    """One row per (seeding, vocab, batch)."""
    from transformers import WatermarkLogitsProcessor

    from wmkit import kernels
    from wmkit.kernels.triton_green import green_bias_triton

    rows = []
    for seeding, h in SEEDINGS:
        for vocab in vocabs:
            hf = (WatermarkLogitsProcessor(vocab, device, greenlist_ratio=GAMMA, bias=DELTA, seeding_scheme="lefthash",
                                           context_width=h) if seeding == "lefthash" else None)
            for b in batches:
                g = torch.Generator(device=device).manual_seed(b)
                scores = torch.randn(b, vocab, device=device, generator=g)
                ids = torch.randint(0, vocab, (b, 64), device=device, generator=g)
                buf, copy_dst = scores.clone(), torch.empty_like(scores)
                want = kernels.green_bias_reference(scores, ids, KEY, h, seeding, GAMMA, DELTA)
                got = green_bias_triton(scores, ids, KEY, h, seeding, GAMMA, DELTA)
                inplace = scores.clone()
                green_bias_triton(inplace, ids, KEY, h, seeding, GAMMA, DELTA, out=inplace)
                t_tri = _bench(lambda: green_bias_triton(scores, ids, KEY, h, seeding, GAMMA, DELTA), device)
                t_inp = _bench(lambda: green_bias_triton(buf, ids, KEY, h, seeding, GAMMA, DELTA, out=buf), device)
                t_ref = _bench(lambda: kernels.green_bias_reference(scores, ids, KEY, h, seeding, GAMMA, DELTA), device)
                t_hf = _bench(lambda: hf(ids, scores), device) if hf is not None else None
                t_copy = _bench(lambda: copy_dst.copy_(scores), device)
                bw = 2 * b * vocab * 4 / (t_tri * 1e-3)
                bw_inp = (1 + GAMMA) * b * vocab * 4 / (t_inp * 1e-3)
                rows.append({
                    "part": "generation", "seeding": seeding, "h": h, "vocab": vocab, "batch": b,
                    "bit_exact": bool(torch.equal(got, want) and torch.equal(inplace, want)),
                    "compiled_bit_exact": _compiled_equal(scores, ids, seeding, h) if b == batches[1] and vocab == vocabs[0] else None,
                    "triton_ms": round(t_tri, 4), "triton_inplace_ms": round(t_inp, 4), "torch_ms": round(t_ref, 4),
                    "transformers_ms": round(t_hf, 3) if t_hf is not None else None, "copy_ms": round(t_copy, 4),
                    "triton_gb_s": round(bw / 1e9, 1), "triton_inplace_gb_s": round(bw_inp / 1e9, 1),
                    "pct_peak": round(100 * bw / peak, 1) if peak else None,
                    "pct_copy": round(100 * t_copy / t_tri, 1),
                    "speedup_vs_transformers": round(t_hf / t_tri, 1) if t_hf is not None else None,
                    "speedup_vs_torch": round(t_ref / t_tri, 1),
                })
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def sweep_rows(vocabs, device: str, batch: int = 64, shapes=((128, 256, 512), (4, 8))) -> list[dict]:
    """Batch ``batch`` (64), lefthash h = 1 and selfhash h = 4: launch shapes against the copy."""
    from wmkit import kernels
    from wmkit.kernels.triton_green import green_bias_triton

    rows = []
    for seeding, h in SEEDINGS:
        for vocab in vocabs:
            scores = torch.randn(batch, vocab, device=device)
            ids = torch.randint(0, vocab, (batch, 64), device=device)
            dst = torch.empty_like(scores)
            want = kernels.green_bias_reference(scores, ids, KEY, h, seeding, GAMMA, DELTA)
            t_copy = _bench(lambda: dst.copy_(scores), device)
            for groups in shapes[0]:
                for warps in shapes[1]:
                    run = lambda: green_bias_triton(scores, ids, KEY, h, seeding, GAMMA, DELTA,  # noqa: E731
                                                    groups=groups, num_warps=warps)
                    t = _bench(run, device)
                    rows.append({"part": "sweep", "seeding": seeding, "h": h, "vocab": vocab, "batch": batch,
                                 "entries_per_program": 4 * groups, "num_warps": warps,
                                 "bit_exact": bool(torch.equal(run(), want)),
                                 "triton_ms": round(t, 4), "copy_ms": round(t_copy, 4), "pct_copy": round(100 * t_copy / t, 1)})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def detection_rows(sizes, docs: tuple[int, int], device: str) -> list[dict]:
    """The detection kernel on one packed row of N ids, and ``detect_many`` end to end."""
    from wmkit import kernels
    from wmkit.keys import SecretKey
    from wmkit.kernels.triton_green import green_positions_triton
    from wmkit.watermark.text import KGW

    rows = []
    for seeding, h in SEEDINGS:
        for n in sizes:
            ids = torch.randint(0, 49152, (1, n), device=device)
            lengths = torch.tensor([n], device=device)
            got = green_positions_triton(ids, lengths, KEY, h, seeding, GAMMA)
            want = kernels.green_positions_reference(ids, lengths, KEY, h, seeding, GAMMA)
            t_tri = _bench(lambda: green_positions_triton(ids, lengths, KEY, h, seeding, GAMMA), device)
            t_ref = _bench(lambda: kernels.green_positions_reference(ids, lengths, KEY, h, seeding, GAMMA), device)
            rows.append({"part": "detection_kernel", "seeding": seeding, "h": h, "tokens": n,
                         "bit_exact": bool(torch.equal(got, want)),
                         "triton_ms": round(t_tri, 4), "torch_ms": round(t_ref, 4),
                         "triton_tokens_per_s": round(n / (t_tri * 1e-3)), "torch_tokens_per_s": round(n / (t_ref * 1e-3)),
                         "speedup_vs_torch": round(t_ref / t_tri, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        n_docs, length = docs
        det = KGW(SecretKey.from_hex("00" * 32), context_width=h, seeding=seeding).detector(_Vocab(49152), min_tokens=1)
        g = torch.Generator().manual_seed(0)
        seqs = list(torch.randint(0, 49152, (n_docs, length), generator=g))
        t = _wall_ms(lambda: det.detect_many(seqs, device=device, evidence=False), device)
        rows.append({"part": "detect_many", "seeding": seeding, "h": h, "docs": n_docs, "tokens": n_docs * length,
                     "ms": round(t, 1), "tokens_per_s": round(n_docs * length / (t * 1e-3))})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _table(rows: list[dict]) -> None:
    for part in dict.fromkeys(r["part"] for r in rows):
        sel = [r for r in rows if r["part"] == part]
        cols = list(dict.fromkeys(k for r in sel for k in r if k != "part"))
        print(f"\n{part}")
        print_table(sel, cols, width=12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="vocab 49,152 only; detection at 2**20 tokens")
    ap.add_argument("--sweep", action="store_true", help="also time other launch shapes at batch 64")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU with Triton interpreted (checks the script)")
    output_args(ap)
    args = ap.parse_args()
    out = ResultFile(args.out, "kernel_speed")
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        device, vocabs, batches, sizes, docs = "cpu", [4100], (1, 2), [5000], (16, 64)
    elif not torch.cuda.is_available():
        print("kernel_speed: no CUDA device here; GPU figures are measured where one is "
              "(the kernels' parity is tested on the CPU under TRITON_INTERPRET=1; --smoke checks this script).")
        return
    else:
        device, batches, docs = "cuda", (1, 8, 64, 256), (4096, 512)
        vocabs = [49152] if args.quick else [49152, 128256, 256000]
        sizes = [1 << 20] if args.quick else [1 << 20, 1 << 24]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreted)"
    peak = next((v for k, v in PEAK_BYTES_PER_S.items() if k in name), None)
    rows = generation_rows(vocabs, batches, device, peak)
    if args.sweep:
        rows += sweep_rows(vocabs, device, 2, ((256,), (4,))) if args.smoke else sweep_rows(vocabs, device)
    rows += detection_rows(sizes, docs, device)
    result = {"device": name, "torch": torch.__version__, "peak_bytes_per_s": peak, "rows": rows}
    out.write_json(result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"device: {name}")
        _table(rows)


if __name__ == "__main__":
    main()
