"""Evasion characters against detection, before and after wmkit's normalisation.

Marked completions of the default model (AG News prompts, 200 new tokens, T = 1.0) per scheme are
attacked with each ``Evasion`` kind (homoglyphs, zero-width characters, bidi controls, variation
selectors, all four) at rate 0.5, then detected twice: with the previous normalisation (NFC and
six zero-width code points removed) and with the current one
(:func:`wmkit.watermark.text.normalize.normalize_text`). Rows: scheme, attack, TPR at p <= 1e-4
before and after.

    python benchmarks/evasion.py --quick --json --out evasion.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import unicodedata

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args  # noqa: E402
import wmkit.watermark.text.detector as detector_module  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_default_lm  # noqa: E402
from wmkit.watermark.text import make_scheme  # noqa: E402
from wmkit.watermark.text.attacks import EVASION_KINDS, Evasion  # noqa: E402
from wmkit.watermark.text.generate import generate_completions  # noqa: E402

FPR = 1e-4
_OLD_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))


def old_normalize(text: str) -> str:
    """The normalisation before this change: NFC and six zero-width code points."""
    return unicodedata.normalize("NFC", text).translate(_OLD_ZERO_WIDTH)


def tpr(det, texts: list[str]) -> float:
    res = det.detect_many(texts)
    return sum((not isinstance(r, Exception)) and r.p_value <= FPR for r in res) / len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 prompts (default 50)")
    ap.add_argument("--schemes", default="kgw,unigram,gumbel,synthid")
    output_args(ap)
    args = ap.parse_args()
    out_file = ResultFile(args.out, "evasion")
    n = 20 if args.quick else 50
    prompts = agnews_prompts(n)
    lm, tok = load_default_lm()
    key, rows = SecretKey(bytes(range(32))), []
    new_normalize = detector_module.normalize_text
    for name in args.schemes.split(","):
        scheme = make_scheme(name, key)
        marked = [r["completion"] for r in generate_completions(lm, tok, prompts, scheme, max_new_tokens=200,
                                                                min_new_tokens=200, seed=1, batch_size=20)]
        det = scheme.detector(tok, fpr=FPR)
        for kind in ("none", *EVASION_KINDS):
            attacked = marked if kind == "none" else Evasion(kind, 0.5)(marked, random.Random(0))
            detector_module.normalize_text = old_normalize
            before = tpr(det, attacked)
            detector_module.normalize_text = new_normalize
            after = tpr(det, attacked)
            rows.append({"scheme": name, "attack": kind, "tpr_before": before, "tpr_after": after})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"prompts": n, "fpr": FPR, "rate": 0.5, "rows": rows}
    out_file.write_json(result)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'scheme':<10}{'attack':<14}{'TPR before':>11}{'TPR after':>11}")
    for r in rows:
        print(f"{r['scheme']:<10}{r['attack']:<14}{r['tpr_before']:>11.2f}{r['tpr_after']:>11.2f}")


if __name__ == "__main__":
    main()
