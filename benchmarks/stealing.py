"""Watermark stealing on the real default LM: spoof and scrub success per query budget, and spoof detection.

The attacker (:class:`wmkit.forensics.stealing.StolenMark`, after arXiv 2402.19361) queries the
marked default LM (SmolLM2-135M-Instruct) with AG News openings and reads ``N`` marked tokens,
plus as many unmarked tokens of the same model (its base). Then, per budget:

- **spoof**: it writes ``--spoofs`` texts of 200 tokens on held-out openings with the learned
  boosts at +6.5 and no key; ``spoof_success_at_1e4`` is the share our detector calls
  watermarked at FPR 1e-4; ``ppl`` their perplexity under the unmarked default LM;
- **scrub**: it paraphrases ``--scrubs`` genuine marked texts (the default LM's paraphrase,
  :class:`~wmkit.watermark.text.attacks.Paraphrase`) while steering away from the learned greens
  (boosts at -6.5); ``scrub_success_at_1e4`` is the share of those detected before and not after;
  ``scrub_unsteered`` the same paraphrase without steering, for comparison;
- **spoof detection** (:mod:`wmkit.forensics.spoof`, after arXiv 2410.02693), at p_spoof <= 1e-2:
  ``spoof_flagged`` (of the spoofs our detector called watermarked; target >= 90%) and
  ``genuine_flagged`` (of ``--spoofs`` genuine marked texts from the same openings; target <=
  1%), for the standard test and for the reprompting test (reference: the other genuine texts).

Queries and base text are cached under the wmkit cache (``benchmarks/stealing``), so a rerun
with a larger budget only generates what is new.

    python benchmarks/stealing.py --quick --json --out benchmarks/results/stealing_quick.json
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args, pick, print_table  # noqa: E402
from fpzoo import log  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402
from wmkit.errors import InputError  # noqa: E402
from wmkit.files import write_file  # noqa: E402
from wmkit.forensics.spoof import spoof_test_for  # noqa: E402
from wmkit.forensics.stealing import SPOOF_STRENGTH, StolenMark  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import cache_dir, load_lm  # noqa: E402
from wmkit.watermark.text import make_scheme  # noqa: E402
from wmkit.watermark.text.attacks import Paraphrase  # noqa: E402

SCHEMES = {"kgw": ("kgw", {}, 1), "kgw-selfhash": ("kgw", {"context_width": 4, "seeding": "selfhash"}, 4),
           "unigram": ("unigram", {}, 0), "synthid": ("synthid", {}, 4), "gumbel": ("gumbel", {}, 4)}
KEY = SecretKey(bytes(range(32)))
QUERY_TOKENS = 128  # tokens per query completion
HELD_OUT = 2000  # the spoof / genuine / scrub openings start here (queries use 0 ..)
LENGTH = 200


def queries(name: str | None, tokens: int, lm: Any, tok: Any) -> list[list[int]]:
    """Completion token ids of the first openings, at least ``tokens`` in all, marked with ``name``'s
    scheme (``None``: the unmarked base); cached, and a larger cache's prefix is reused."""
    folder = cache_dir() / "benchmarks" / "stealing"
    tag = name or "none"
    n = math.ceil(tokens / QUERY_TOKENS * 1.1)
    have = sorted((int(p.stem.split("-")[-1]), p) for p in folder.glob(f"{tag}-q*-*.json")
                  if p.stem.startswith(f"{tag}-q{QUERY_TOKENS}-")) if folder.exists() else []
    for count, path in have:
        if count >= n:
            out = json.loads(path.read_text())
            if sum(map(len, out)) >= tokens:
                return out
    scheme = None if name is None else make_scheme(SCHEMES[name][0], KEY, **SCHEMES[name][1])
    t0 = time.time()
    rows = generate_completions(lm, tok, agnews_prompts(n, name="agnews_10k.tsv.gz"), scheme, max_new_tokens=QUERY_TOKENS,
                                temperature=1.0, seed=1, batch_size=16)
    out = [r["completion_ids"] for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    write_file(folder / f"{tag}-q{QUERY_TOKENS}-{n}.json", json.dumps(out))  # atomic, never over an existing file
    log(f"{tag}: {n} queries ({sum(map(len, out))} tokens) in {time.time() - t0:.0f} s")
    return out


def take(lists: list[list[int]], tokens: int) -> list[list[int]]:
    """The first lists holding ``tokens`` tokens in all."""
    out, total = [], 0
    for x in lists:
        if total >= tokens:
            break
        out.append(x)
        total += len(x)
    return out


def detected(det: Any, text: str) -> bool:
    """Our detector's verdict; a paraphrase too short to score is not detected."""
    try:
        return bool(det.detect(text).decision)
    except InputError:
        return False


def perplexity(lm: Any, tok: Any, prompts: list[str], completions: list[list[int]]) -> float:
    """Median per-text perplexity of the completions after their prompts, under the unmarked LM."""
    ppl = []
    for p, c in zip(prompts, completions):
        if not c:
            continue
        pid = tok(p, return_tensors="pt").input_ids[0]
        ids = torch.cat([pid, torch.tensor(c)])[None]
        with torch.inference_mode():
            logits = lm(ids).logits[0, len(pid) - 1: -1].float()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(c))
        ppl.append(math.exp(float(nll)))
    return float(np.median(ppl)) if ppl else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated, of {list(SCHEMES)}")
    ap.add_argument("--budgets", default="14,15,16,17,18,19,20", help="log2 of the marked tokens the attacker reads")
    ap.add_argument("--spoofs", type=int, default=20, help="spoofed (and genuine) texts per budget")
    ap.add_argument("--scrubs", type=int, default=10, help="genuine marked texts paraphrased per budget")
    ap.add_argument("--quick", action="store_true", help="budgets 2^14 .. 2^17")
    output_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.budgets = "14,15,16,17"
    budgets = sorted(2 ** int(b) for b in args.budgets.split(","))
    out = ResultFile(args.out, "stealing.py")
    lm, tok = load_lm()
    vocab = len(tok)
    prompts = agnews_prompts(HELD_OUT + args.spoofs, name="agnews_10k.tsv.gz")[HELD_OUT:]
    base = queries(None, budgets[-1], lm, tok)
    rows: list[dict[str, Any]] = []
    for name in pick(args.schemes, SCHEMES, "stealing.py", "scheme"):
        family, params, h = SCHEMES[name]
        scheme = make_scheme(family, KEY, **params)
        det = scheme.detector(tok, fpr=1e-4)
        marked = queries(name, budgets[-1], lm, tok)
        genuine = [r["completion_ids"] for r in generate_completions(
            lm, tok, prompts, scheme, max_new_tokens=LENGTH, min_new_tokens=LENGTH, temperature=1.0, seed=7, batch_size=16)]
        gen_ids = [torch.tensor(g) for g in genuine]
        spoof_test = spoof_test_for(scheme, tok)
        gen_texts = [tok.decode(g) for g in genuine]
        found = [det.detect(g).decision for g in genuine]
        scrub_idx = [i for i, d in enumerate(found) if d][: args.scrubs]
        plain = Paraphrase(lm, tok, max_new_tokens=LENGTH + 56)([gen_texts[i] for i in scrub_idx], random.Random(3))
        unsteered = float(np.mean([not detected(det, t) for t in plain])) if scrub_idx else None
        gflag = {"standard": [], "reprompting": []}
        for j, g in enumerate(gen_ids):
            gflag["standard"].append(spoof_test.test(g)["p_spoof"])
            gflag["reprompting"].append(spoof_test.test(g, gen_ids[:j] + gen_ids[j + 1:])["p_spoof"])
        for budget in budgets:
            t0 = time.time()
            stolen = StolenMark(h, vocab)
            stolen.observe(take(marked, budget), marked=True)
            stolen.observe(take(base, stolen.observed[True]), marked=False)
            spoofs = [r["completion_ids"] for r in generate_completions(
                lm, tok, prompts, stolen.steering(SPOOF_STRENGTH), max_new_tokens=LENGTH, min_new_tokens=LENGTH,
                temperature=1.0, seed=11, batch_size=16)]
            sdet = [det.detect(s) for s in spoofs]
            ok = [i for i, d in enumerate(sdet) if d.decision]
            scrubbed = Paraphrase(lm, tok, max_new_tokens=LENGTH + 56, steer=stolen.steering(-SPOOF_STRENGTH))(
                [gen_texts[i] for i in scrub_idx], random.Random(3))
            row: dict[str, Any] = {
                "scheme": name, "queried_tokens": stolen.observed[True], **stolen.stats(),
                "spoof_success_at_1e4": len(ok) / len(spoofs),
                "spoof_median_z": float(np.median([d.statistic for d in sdet])),
                "scrub_success_at_1e4": float(np.mean([not detected(det, t) for t in scrubbed])) if scrub_idx else None,
                "scrub_unsteered": unsteered, "scrubbed_texts": len(scrub_idx),
                "ppl": perplexity(lm, tok, prompts, spoofs), "ppl_genuine": perplexity(lm, tok, prompts, genuine)}
            for kind in ("standard", "reprompting"):
                ps = [spoof_test.test(torch.tensor(spoofs[i]), None if kind == "standard" else gen_ids)["p_spoof"] for i in ok]
                row[f"spoof_flagged_{kind}"] = float(np.mean([p is not None and p <= 1e-2 for p in ps])) if ps else None
                row[f"genuine_flagged_{kind}"] = float(np.mean([p is not None and p <= 1e-2 for p in gflag[kind]]))
            row["seconds"] = round(time.time() - t0, 1)
            rows.append(row)
            log(json.dumps(row))
            out.write_json({"rows": rows, "args": vars(args) | {"out": str(args.out)}})
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    else:
        print_table(rows, ["scheme", "queried_tokens", "spoof_success_at_1e4", "scrub_success_at_1e4", "scrub_unsteered",
                           "ppl", "spoof_flagged_reprompting", "genuine_flagged_reprompting"])


if __name__ == "__main__":
    main()
