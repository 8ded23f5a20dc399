"""Why SynthID (as transformers implements it, and wmkit bit-exactly) is not exactly distortion-free.

The tournament is unbiased over the g-values only if they are independent across tokens and layers.
transformers' g-value is ``table[h % 2**16]`` with ``h`` an int64 LCG (multiplier ``M``, increment 1)
of the context hash, the token and the layer key; the low 16 bits of an LCG depend only on the low
16 bits of its input, linearly: ``index_d(x) = (C + x) M^2 + key_d M + M + 1 (mod 2**16)``. So for
every context, layer ``l``'s g-value of token ``x`` equals layer ``k``'s g-value of token
``x + (key_l - key_k) M^-1 (mod 2**16)``: the layers are couplings of one table read, not
independent draws. This script measures

1. the coupling: the share of tokens for which that identity holds, over random contexts;
2. the bias it causes: over ``--samples`` random contexts, ``E[CE] - H`` of the processor's
   distribution on one fixed high-entropy distribution, against the same tournament with i.i.d.
   g-values (the independent reference, which must give 0 up to noise) and wmkit's ``gvalues=prf``
   processor (PRF v2 bits: the identity holds for half the tokens, as for independent draws).

    python benchmarks/synthid_coupling.py [--samples 6400] [--json] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _output import ResultFile, output_args  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.watermark.text import make_scheme  # noqa: E402
from wmkit.watermark.text.synthid import LCG_MULTIPLIER  # noqa: E402

V, BATCH = 49152, 64


def coupling(scheme, prf_scheme, g: torch.Generator, trials: int = 8) -> list[dict]:
    """For random contexts and layer pairs (0, l): the share of tokens where the identity holds
    (transformers' g-values, and the same shift applied to the prf g-values)."""
    keys, m_inv = scheme.layer_keys(), pow(LCG_MULTIPLIER, -1, 2**16)
    rows = []
    for t in range(trials):
        ctx = torch.randint(0, V, (1, scheme.ngram_len - 1), generator=g)
        l = 1 + t % (scheme.depth - 1)
        delta = ((keys[l] - keys[0]) * m_inv) % 2**16
        x = torch.arange(V)
        y = (x + delta) % 2**16
        ok = y < V
        row = {"layer": l, "shift": int(delta), "tokens": int(ok.sum())}
        for name, s in (("share_equal", scheme), ("share_equal_prf", prf_scheme)):
            gv = s.g_values(ctx.expand(V, -1), torch.arange(V))  # [V, depth]
            row[name] = float((gv[x[ok], l] == gv[y[ok], 0]).double().mean())
        rows.append(row)
    return rows


def bias(scheme, prf_scheme, tok, g: torch.Generator, samples: int) -> dict:
    """``E[CE] - H`` over random contexts: the processor's tournament, the prf processor's, i.i.d. g-values."""
    logits = torch.randn(V, generator=g) * 2.5
    p = torch.softmax(logits.double(), -1)
    h = float(-(p * p.log()).sum())
    q = scheme.null_rate()
    ce: dict[str, list[float]] = {"transformers_hash": [], "prf": [], "iid_g": []}
    for _ in range(samples // BATCH):
        ctx = torch.randint(0, V, (BATCH, scheme.ngram_len + 3), generator=g)
        for name, s in (("transformers_hash", scheme), ("prf", prf_scheme)):
            proc = s.processor(tok)
            proc._prev, proc._start = ctx[:, :-1], 0  # a completion in progress: every row its own context
            w = torch.softmax(proc(ctx, logits.expand(BATCH, V).clone()).double(), -1)
            ce[name] += (-(w * p.log()).sum(1)).tolist()
        probs = p.expand(BATCH, V).clone()
        for _ in range(scheme.depth):
            gv = (torch.rand(BATCH, V, generator=g) < q).double()
            probs = probs * (1 + gv - (gv * probs).sum(1, keepdim=True))
        ce["iid_g"] += (-(probs * p.log()).sum(1)).tolist()
    out = {"entropy_nats": h, "samples": len(ce["iid_g"])}
    for name, values in ce.items():
        a = np.array(values)
        out[name] = {"ce_minus_h_nats": float(a.mean() - h), "ci95_half_width": float(1.96 * a.std() / np.sqrt(len(a)))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6400, help="random contexts for the bias estimate")
    output_args(ap)
    args = ap.parse_args()
    out = ResultFile(args.out, "synthid_coupling")
    from wmkit.models import load_tokenizer

    key = SecretKey(bytes(range(32)))
    scheme, prf_scheme = make_scheme("synthid", key), make_scheme("synthid", key, gvalues="prf")
    g = torch.Generator().manual_seed(0)
    result = {"coupling": coupling(scheme, prf_scheme, g), "bias": bias(scheme, prf_scheme, load_tokenizer(), g, args.samples)}
    out.write_json(result)
    if args.json:
        print(json.dumps(result))
        return
    for r in result["coupling"]:
        print(f"layer {r['layer']:>2} of x == layer 0 of x + {r['shift']:>5} (mod 2^16): {r['share_equal']:.4f} of {r['tokens']} tokens"
              f" (prf g-values: {r['share_equal_prf']:.4f})")
    b = result["bias"]
    print(f"H = {b['entropy_nats']:.3f} nats, {b['samples']} contexts: E[CE] - H =")
    for name in ("transformers_hash", "prf", "iid_g"):
        print(f"  {name:<18} {b[name]['ce_minus_h_nats']:+.4f} +- {b[name]['ci95_half_width']:.4f} nats")


if __name__ == "__main__":
    main()
