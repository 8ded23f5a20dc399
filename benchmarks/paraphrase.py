"""Paraphrase robustness of token-level, sentence-level (semantic) and layered marks on the default LM.

Protocol. Prompts are the first 20 words of AG News articles (``benchmarks/data/agnews_3000.tsv.gz``);
every scheme (one fresh key each) and the unmarked model continue each prompt as raw text with
``--tokens`` (200) new tokens at temperature 0.7 (the sentence-level schemes sample candidate
sentences; a lower temperature keeps a 135M model's sentences readable). Each marked completion
is attacked:

* ``none``;
* ``para_sentence``: the default LM paraphrases each sentence on its own (temperature 0.7);
* ``para_whole_a`` / ``para_whole_b``: it paraphrases the whole text with two prompts, at
  temperature 0.7 and 1.0 (:data:`wmkit.watermark.text.attacks.PARAPHRASE_PROMPTS`);
* ``rule``: 50% of the words replaced by the LM's top other word, sentences reordered, some split
  at a comma or merged (:class:`~wmkit.watermark.text.attacks.RuleParaphrase`);
* ``copy_paste_25``: 25% of the text kept inside human news text (detected with the windowed scan
  where the scheme has one); ``deletion_30``: 30% of words deleted.

Rows ``{scheme, attack, n, tpr_at_fpr_1e2, tpr_at_fpr_1e3, fpr_human_1e2, fpr_human_1e2_worst_key,
median_sentences_to_detect, fidelity_cos, ppl_increase_pct, forward_passes_per_token,
candidate_tokens_per_token}``: the share of attacked texts with p <= 1e-2 and <= 1e-3 (every test is
exact, so these are nominal FPRs); on ``--human`` human news documents of the same length
(consecutive AG News items 5,000.. of ``agnews_10k``, not in the shipped centroid corpus, which is
items 0..4,999) the share with p <= 1e-2 pooled over ``--keys`` keys and for the worst key (the
same numbers on every row of a scheme); the median of the fewest leading sentences at which an
unattacked text reaches p <= 0.02; the mean encoder cosine between the original and the attacked
text; perplexity (default LM, given the prompt) against the unmarked completions; forward passes
of the model per kept token (a round of candidates is one batch: one pass per step) and candidate
tokens sampled per kept token.

    python benchmarks/paraphrase.py --quick --json --out results.json --plot paraphrase.png   # 20 prompts
    python benchmarks/paraphrase.py                                                          # 200 prompts
"""

from __future__ import annotations

import argparse
import gzip
import json
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

from _data import DATA, agnews_prompts  # noqa: E402
from _output import ResultFile, output_args, pick, print_table  # noqa: E402
from text_size import ppl, token_nll  # noqa: E402
from wmkit.encoders import shared_encoder  # noqa: E402
from wmkit.errors import InputError  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_default_lm  # noqa: E402
from wmkit.watermark.text import attacks as A  # noqa: E402
from wmkit.watermark.text import make_scheme  # noqa: E402
from wmkit.watermark.text.semantic import generate_sentences, split_sentences  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402

SCHEMES: dict[str, tuple[str, dict[str, Any]]] = {
    "kgw-selfhash-h4": ("kgw", {"context_width": 4, "seeding": "selfhash"}),
    "gumbel": ("gumbel", {}),
    "exp-edit": ("exp-edit", {}),
    "semstamp": ("semstamp", {}),
    "k-semstamp": ("k-semstamp", {}),
    "pmark": ("pmark", {}),
    "pmark-reference": ("pmark", {"median": "reference", "channels": 8}),
    "k-semstamp+gumbel": ("k-semstamp", {"inner": "gumbel"}),
    "pmark+gumbel": ("pmark", {"median": "reference", "channels": 8, "inner": "gumbel"}),
}
ATTACKS = ("none", "para_sentence", "para_whole_a", "para_whole_b", "rule", "copy_paste_25", "deletion_30")
TEMPERATURE = 0.7


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def human_documents(n: int, tok: Any, tokens: int) -> list[str]:
    """``n`` documents of about ``tokens`` tokens: consecutive AG News items from row 5,000 of agnews_10k."""
    with gzip.open(DATA / "agnews_10k.tsv.gz", "rt", encoding="utf-8") as f:
        items = [line.split("\t")[0].strip() for line in f][5000:]
    docs, cur, i = [], [], 0
    while len(docs) < n and i < len(items):
        cur.append(items[i])
        i += 1
        if len(tok(" ".join(cur), add_special_tokens=False).input_ids) >= tokens:
            docs.append(" ".join(cur))
            cur = []
    return docs


def attack(name: str, texts: list[str], lm: Any, tok: Any, human: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    if name == "none":
        return texts
    if name == "para_sentence":
        return A.Paraphrase(lm, tok, temperature=0.7, by_sentence=True)(texts, rng)
    if name == "para_whole_a":
        return A.Paraphrase(lm, tok, max_new_tokens=280, temperature=0.7, instruction=A.PARAPHRASE_PROMPTS[0])(texts, rng)
    if name == "para_whole_b":
        return A.Paraphrase(lm, tok, max_new_tokens=280, temperature=1.0, instruction=A.PARAPHRASE_PROMPTS[1])(texts, rng)
    if name == "rule":
        return A.RuleParaphrase(lm, tok, 0.5)(texts, rng)
    if name == "copy_paste_25":
        return A.CopyPaste(human, 0.25)(texts, rng)
    if name == "deletion_30":
        return A.WordDeletion(0.3)(texts, rng)
    raise ValueError(name)


def p_value(det: Any, text: str) -> float:
    """The detector's p-value, 1.0 for a text it cannot score (too short: no evidence)."""
    try:
        return float(det.detect(text).p_value)
    except InputError:
        return 1.0


class _Windowed:
    """A detector's windowed scan as ``detect``."""

    def __init__(self, det: Any):
        self.det = det

    def detect(self, text: str) -> Any:
        return self.det.detect_windowed(text)


def sentences_to_detect(det: Any, text: str, level: float = 0.02) -> int | None:
    """The fewest leading sentences at which the p-value is <= ``level`` (None: never)."""
    sents = split_sentences(text)
    for k in range(3, len(sents) + 1):
        if p_value(det, " ".join(sents[:k])) <= level:
            return k
    return None


def generate(lm: Any, tok: Any, prompts: list[str], scheme: Any, tokens: int, seed: int) -> tuple[list[list[int]], dict[str, int]]:
    """Completion ids and cost counts (forward passes, candidate tokens, kept tokens)."""
    if getattr(scheme, "sentence_level", False):
        stats: dict[str, int] = {}
        ids = [tok(p).input_ids for p in prompts]
        out = generate_sentences(lm, tok, ids, scheme, tokens, TEMPERATURE, seeds=[seed + i for i in range(len(prompts))], stats=stats)
        return out, stats
    rows = generate_completions(lm, tok, prompts, scheme, max_new_tokens=tokens, temperature=TEMPERATURE, seed=seed,
                                batch_size=16, min_new_tokens=tokens)
    n = sum(len(r["completion_ids"]) for r in rows)
    return [r["completion_ids"] for r in rows], {"forward_passes": n, "candidate_tokens": n, "accepted_tokens": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 prompts (default: 200)")
    ap.add_argument("--n", type=int, help="prompts (overrides --quick)")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--human", type=int, default=1000, help="human documents for the FPR")
    ap.add_argument("--keys", type=int, default=20, help="keys the human FPR is measured over")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, help="write a PNG of TPR at FPR 1e-2 per attack")
    output_args(ap)
    args = ap.parse_args()
    names = pick(args.schemes, SCHEMES, "paraphrase.py", "scheme")
    attacks = pick(args.attacks, ATTACKS, "paraphrase.py", "attack")
    n = args.n or (20 if args.quick else 200)
    out, png = ResultFile(args.out, "paraphrase.py"), ResultFile(args.plot, "paraphrase.py")
    torch.manual_seed(args.seed)
    lm, tok = load_default_lm()
    enc = shared_encoder()
    prompts = agnews_prompts(n)
    human = human_documents(args.human, tok, args.tokens)
    log(f"{len(prompts)} prompts, {len(human)} human documents")
    plain, _ = generate(lm, tok, prompts, None, args.tokens, args.seed)
    plain_nll = token_nll(lm, tok, prompts, plain)
    rows: list[dict[str, Any]] = []
    for s_i, name in enumerate(names):
        t0 = time.time()
        base, params = SCHEMES[name]
        scheme = make_scheme(base, SecretKey.generate(), **params)
        ids, cost = generate(lm, tok, prompts, scheme, args.tokens, args.seed + 1000 * (s_i + 1))
        texts = [tok.decode(x, skip_special_tokens=True) for x in ids]
        det = scheme.detector(tok)
        log(f"{name}: generated in {time.time() - t0:.0f} s {cost}")
        human_hits = []
        for k in range(args.keys):
            d = make_scheme(base, SecretKey.generate(), **params).detector(tok)
            human_hits.append(np.mean([p_value(d, h) <= 1e-2 for h in human]))
        to_detect = [sentences_to_detect(det, t) for t in texts]
        found = sorted(k for k in to_detect if k is not None)
        median_k = float(np.median(found)) if len(found) > len(texts) / 2 else None
        increase = 100 * (ppl(token_nll(lm, tok, prompts, ids)) / ppl(plain_nll) - 1)
        orig = enc.encode(texts)
        for a_i, a in enumerate(attacks):
            attacked = attack(a, texts, lm, tok, human, args.seed + a_i)
            if a == "copy_paste_25" and det.capabilities.windowed:  # a passage inside human text: the windowed scan
                ps = np.array([p_value(_Windowed(det), t) for t in attacked])
            else:
                ps = np.array([p_value(det, t) for t in attacked])
            fidelity = float(np.mean(np.sum(orig * enc.encode([t or "." for t in attacked]), 1)))
            rows.append({"scheme": name, "attack": a, "n": len(texts), "tpr_at_fpr_1e2": float(np.mean(ps <= 1e-2)),
                         "tpr_at_fpr_1e3": float(np.mean(ps <= 1e-3)), "fpr_human_1e2": float(np.mean(human_hits)),
                         "fpr_human_1e2_worst_key": float(np.max(human_hits)), "median_sentences_to_detect": median_k,
                         "fidelity_cos": round(fidelity, 4), "ppl_increase_pct": round(increase, 2),
                         "forward_passes_per_token": round(cost["forward_passes"] / max(1, cost["accepted_tokens"]), 3),
                         "candidate_tokens_per_token": round(cost["candidate_tokens"] / max(1, cost["accepted_tokens"]), 3)})
            log(f"{name} / {a}: TPR@1e-2 {rows[-1]['tpr_at_fpr_1e2']:.2f}, fidelity {fidelity:.3f}")
        out.write_json({"n_prompts": n, "tokens": args.tokens, "human_documents": len(human), "keys": args.keys,
                        "temperature": TEMPERATURE, "rows": rows})
    cols = ["scheme", "attack", "tpr_at_fpr_1e2", "tpr_at_fpr_1e3", "fpr_human_1e2", "fpr_human_1e2_worst_key",
            "median_sentences_to_detect", "fidelity_cos", "ppl_increase_pct", "forward_passes_per_token"]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows, cols)
    if args.plot is not None:
        plot(rows, names, attacks, png)


def plot(rows: list[dict[str, Any]], names: list[str], attacks: list[str], out: ResultFile) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [next((r["tpr_at_fpr_1e2"] for r in rows if r["scheme"] == name and r["attack"] == a), 0.0) for a in attacks]
        ax.bar(np.arange(len(attacks)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(attacks)) + 0.4 - width / 2, attacks, rotation=20)
    ax.set_ylabel("TPR at FPR 1e-2")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    out.write(lambda f: fig.savefig(f, format="png", dpi=120))


if __name__ == "__main__":
    main()
