"""Watermark size, quality and robustness of the text schemes on the default LM (MarkMyWords-style).

Protocol. Prompts are the first 20 words of AG News articles (benchmarks/data); every scheme and
the unmarked model complete each prompt with 200 new tokens (``min_new_tokens`` = 200) by
multinomial sampling at temperature 1.0. Per scheme:

* ``median_tokens_to_detect``: MarkMyWords' "size": for each completion, the fewest leading tokens
  (checked every 4 tokens) at which the detector's p-value is <= 0.02; the median over completions
  (``null`` if more than half are never detected within 200 tokens);
* ``tpr_at_fpr_1_200``: the share of marked completions with p <= 1/200 (the nominal FPR), beside
  ``fpr_observed``: the share of unmarked completions with p <= 1/200 under the same detector;
* ``ppl``: perplexity of the completions given their prompts, by the default model, as
  ``exp(mean NLL)`` over all their tokens; ``ppl_increase_pct`` against the unmarked completions of
  the same prompts, with ``ppl_increase_ci95``: a 95% bootstrap interval over completions (both
  sets resampled; sampling noise, not the mark, dominates it at 20 prompts);
* ``tpr_deletion_30``, ``tpr_synonym_30``, ``tpr_copy_paste_25``, ``tpr_paraphrase``: the share of
  attacked marked completions (30% of words deleted; 30% of words replaced by the default LM's
  top choice; 25% of the text kept inside human AG News text; a paraphrase by the default LM)
  with p <= 1/200.

Schemes: kgw lefthash h=1 and selfhash h=4 (gamma 0.25, delta 2), unigram (gamma 0.25, delta 2),
vllm-sbw (vLLM's defaults: selfhash h=4, gamma 0.5, delta 2), vllm-gumbel and gumbel (h=4), exp-edit
(key length 256, gap 0.4, 199 null sequences; its detection takes seconds per text, so run it
with fewer prompts: ``--schemes exp-edit --n 10``), synthid (a wmkit key, 30 layers, ngram_len 5,
non-distortionary) with the weighted-mean and the mean detector, synthid-distortionary
(``num_leaves`` 3), and synthid-prf / synthid-prf-mean (``gvalues=prf``: PRF v2 g-values).

    python benchmarks/text_size.py --quick --json --out results.json   # 20 prompts
    python benchmarks/text_size.py --plot size.png                      # 100 prompts
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import time
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
from wmkit.watermark.text import make_scheme  # noqa: E402
from wmkit.watermark.text import attacks as A  # noqa: E402
from wmkit.watermark.text.entropy_aware import lm_step_map  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402

DATA = Path(__file__).parent / "data" / "agnews_3000.tsv.gz"
NEW, STEP, SIZE_P, FPR = 200, 4, 0.02, 1 / 200


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def schemes(key: SecretKey, vllm_key: int, exp_edit_resamples: int = 199) -> dict[str, Any]:
    return {
        "kgw-lefthash-h1": make_scheme("kgw", key, gamma=0.25, delta=2.0, context_width=1, seeding="lefthash"),
        "kgw-selfhash-h4": make_scheme("kgw", key, gamma=0.25, delta=2.0, context_width=4, seeding="selfhash"),
        # gentler biases: the KGW family's size / perplexity trade-off (--schemes kgw-lefthash-h1-d1.5,...)
        **{f"kgw-lefthash-h1-g{g}-d{d}": make_scheme("kgw", key, gamma=g, delta=d, context_width=1, seeding="lefthash")
           for g, d in ((0.25, 1.0), (0.25, 1.5), (0.5, 1.0), (0.5, 1.5))},
        "unigram": make_scheme("unigram", key, gamma=0.25, delta=2.0),
        "vllm-sbw": make_scheme("vllm-sbw", vllm_key),
        "vllm-gumbel": make_scheme("vllm-gumbel", vllm_key),
        "gumbel": make_scheme("gumbel", key),
        # 199 null sequences: the permutation p-value can reach 1/200, the TPR column's FPR
        "exp-edit": make_scheme("exp-edit", key, n_resamples=exp_edit_resamples),
        "synthid": make_scheme("synthid", key),
        "synthid-mean": make_scheme("synthid", key, score="mean"),
        "synthid-distortionary": make_scheme("synthid", key, num_leaves=3),
        "synthid-prf": make_scheme("synthid", key, gvalues="prf"),
        "synthid-prf-mean": make_scheme("synthid", key, gvalues="prf", score="mean"),
    }


class Cached:
    """A detector whose results are memoized per item (exp-edit's detection takes seconds)."""

    def __init__(self, det: Any):
        self.det, self.memo = det, {}

    def detect(self, item: Any) -> Any:
        k = item if isinstance(item, str) else tuple(int(t) for t in item)
        if k not in self.memo:
            try:
                self.memo[k] = self.det.detect(item)
            except InputError as e:
                self.memo[k] = e
        if isinstance(self.memo[k], InputError):
            raise self.memo[k]
        return self.memo[k]

    def detect_many(self, items: list[Any]) -> list[Any]:
        out = []
        for x in items:
            try:
                out.append(self.detect(x))
            except InputError as e:
                out.append(e)
        return out


def p_values(det: Any, items: list[Any]) -> np.ndarray:
    """p-value of each item (1 where nothing can be scored)."""
    return np.array([1.0 if isinstance(r, InputError) else r.p_value for r in det.detect_many(items)])


def size(det: Any, ids: list[list[int]]) -> tuple[float | None, list[float]]:
    """Fewest leading tokens with p <= SIZE_P per completion (inf if never), and their median.

    A detector that reports ``details["prefix_p_values"]`` (exp-edit: one alignment gives every
    prefix) is run once per completion; the others once per prefix length (every ``STEP`` tokens).
    """
    per = []
    for x in ids:
        n = math.inf
        try:
            pre = det.detect(x).details.get("prefix_p_values")
        except InputError:
            pre = None
        if pre is not None:
            hits = [k + 1 for k, p in enumerate(pre) if p <= SIZE_P]
            per.append(hits[0] if hits else math.inf)
            continue
        for k in range(STEP, len(x) + 1, STEP):
            try:
                if det.detect(x[:k]).p_value <= SIZE_P:
                    n = k
                    break
            except InputError:
                continue
        per.append(n)
    med = float(np.median(per))
    return (None if math.isinf(med) else med), per


def token_nll(lm: Any, tok: Any, prompts: list[str], ids: list[list[int]]) -> list[np.ndarray]:
    """Per completion, the default model's NLL of each of its tokens given the prompt and the tokens before."""
    seqs, starts = [], []
    for p, x in zip(prompts, ids):
        a = tok(p, add_special_tokens=True)["input_ids"]
        seqs.append(torch.tensor(a + list(x)))
        starts.append(len(a))

    def nll(logits: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        return -torch.log_softmax(logits[:-1], -1).gather(1, seq[1:].unsqueeze(1)).squeeze(1)

    per = lm_step_map(lm, seqs, nll, with_ids=True)
    return [v[s - 1:].double().numpy() for v, s in zip(per, starts)]


def ppl(nlls: list[np.ndarray]) -> float:
    """``exp`` of the mean NLL over all tokens."""
    return math.exp(float(np.concatenate(nlls).mean()))


def ppl_increase_ci(marked: list[np.ndarray], plain: list[np.ndarray], seed: int, reps: int = 2000) -> list[float]:
    """95% bootstrap interval (percent) of the perplexity increase, resampling completions of both sets."""
    rng = np.random.default_rng(seed)
    sums = lambda xs: (np.array([x.sum() for x in xs]), np.array([len(x) for x in xs]))  # noqa: E731
    (ms, mn), (ps, pn) = sums(marked), sums(plain)
    out = []
    for _ in range(reps):
        i, j = rng.integers(0, len(ms), len(ms)), rng.integers(0, len(ps), len(ps))
        out.append(100 * (math.exp(ms[i].sum() / mn[i].sum() - ps[j].sum() / pn[j].sum()) - 1))
    return [round(float(np.percentile(out, 2.5)), 2), round(float(np.percentile(out, 97.5)), 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 prompts instead of 100")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON rows here (never overwritten)")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG of size vs perplexity increase (never overwritten)")
    ap.add_argument("--schemes", default=None, help="comma-separated subset of the scheme names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attacks", default="deletion_30,synonym_30,copy_paste_25,paraphrase",
                    help="comma-separated subset of the attack columns")
    ap.add_argument("--exp-edit-resamples", type=int, default=199, help="exp-edit's null sequences (p >= 1/(1+R))")
    args = ap.parse_args()
    out_file, plot_file = ResultFile(args.out, "text_size"), ResultFile(args.plot, "text_size")
    n = args.n or (20 if args.quick else 100)
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        texts = [" ".join(line.split("\t")[0].split()) for line in f if line.strip()]
    prompts = [" ".join(t.split()[:20]) for t in texts[:n]]
    human = texts[1000:1400]
    lm, tok = load_default_lm()
    table = schemes(SecretKey.generate(), random.Random(args.seed).getrandbits(64), args.exp_edit_resamples)
    if args.schemes:
        if unknown := [k for k in args.schemes.split(",") if k not in table]:
            sys.exit(f"text_size: unknown schemes {unknown}; choose from {list(table)}")
        table = {k: table[k] for k in args.schemes.split(",")}
    else:  # the gentler-bias KGW variants run only when named
        table = {k: v for k, v in table.items() if "-g0." not in k}
    rng = random.Random(args.seed)
    attacks = {"tpr_deletion_30": A.WordDeletion(0.3), "tpr_synonym_30": A.SynonymSubstitution(lm, tok, 0.3),
               "tpr_copy_paste_25": A.CopyPaste(human, 0.25), "tpr_paraphrase": A.Paraphrase(lm, tok, max_new_tokens=260)}
    attacks = {k: v for k, v in attacks.items() if k.removeprefix("tpr_") in args.attacks.split(",")}

    def gen(scheme: Any, seed: int) -> list[list[int]]:
        out = generate_completions(lm, tok, prompts, scheme, max_new_tokens=NEW, min_new_tokens=NEW, temperature=1.0,
                                   seed=seed, batch_size=20)
        return [r["completion_ids"] for r in out]

    log(f"{n} unmarked completions")
    t0 = time.perf_counter()
    plain = gen(None, args.seed + 1)
    log(f"  {time.perf_counter() - t0:.0f} s")
    plain_nll = token_nll(lm, tok, prompts, plain)
    plain_ppl = ppl(plain_nll)
    rows = []
    for name, scheme in table.items():
        log(f"{name}: generating")
        t0 = time.perf_counter()
        ids = gen(scheme, args.seed + 2)
        gen_s = time.perf_counter() - t0
        det = Cached(scheme.detector(tok, fpr=FPR, min_tokens=1))
        marked_text = [tok.decode(x, skip_special_tokens=True) for x in ids]
        med, per = size(det, ids)
        nll = token_nll(lm, tok, prompts, ids)
        marked_ppl = ppl(nll)
        row = {"scheme": name, "median_tokens_to_detect": med,
               "tpr_at_fpr_1_200": float(np.mean(p_values(det, ids) <= FPR)),
               "fpr_observed": float(np.mean(p_values(det, plain) <= FPR)),
               "ppl": round(marked_ppl, 3), "ppl_unmarked": round(plain_ppl, 3),
               "ppl_increase_pct": round(100 * (marked_ppl / plain_ppl - 1), 2),
               "ppl_increase_ci95": ppl_increase_ci(nll, plain_nll, args.seed)}
        for col, attack in attacks.items():
            log(f"{name}: {col}")
            row[col] = float(np.mean(p_values(det, attack(marked_text, rng)) <= FPR))
        row["generation_s"] = round(gen_s, 1)
        row["config"] = scheme.config()
        rows.append(row)
        log(json.dumps({k: v for k, v in row.items() if k != "config"}))
        out_file.write_json({"n_prompts": n, "new_tokens": NEW, "rows": rows})  # a cut run keeps what it measured
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            y = r["median_tokens_to_detect"] if r["median_tokens_to_detect"] is not None else NEW + 20
            ax.scatter(r["ppl_increase_pct"], y)
            ax.annotate(r["scheme"], (r["ppl_increase_pct"], y), fontsize=8)
        ax.set_xlabel("perplexity increase vs unmarked (%)")
        ax.set_ylabel(f"median tokens to p <= {SIZE_P}")
        ax.set_title(f"{n} AG News prompts, {NEW} tokens, T = 1.0")
        fig.tight_layout()
        plot_file.write(lambda f: fig.savefig(f, format="png", dpi=120))
    if args.json:
        print(json.dumps(rows))
        return
    cols = ["median_tokens_to_detect", "tpr_at_fpr_1_200", "fpr_observed", "ppl", "ppl_increase_pct", *attacks]
    cols = [c for c in cols if all(c in r for r in rows)]
    print(f"{'scheme':<18}" + "".join(f"{c[:16]:>17}" for c in cols))
    for r in rows:
        print(f"{r['scheme']:<18}" + "".join(f"{str(r[c]):>17}" for c in cols))


if __name__ == "__main__":
    main()
