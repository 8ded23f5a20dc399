"""Evasion classes against detection, before and after wmkit's normalisation.

Marked completions of the default model (AG News prompts, 200 new tokens, T = 1.0) of KGW
(selfhash, context width 4) and Gumbel-max are attacked with every class of
:class:`wmkit.watermark.text.evasion.Evasion` -- built from the ``homoglyphs`` package and the
Unicode database, not from the normaliser's table -- at 100% of the eligible characters (case
flips also at 10% and 30%), then detected twice: with the normalisation of landed main before
issue 33 (``wmkit/watermark/text/normalize.py`` at 991c02b, read from git: NFC, format characters,
mixed-script confusables), and with the current one. Rows: scheme, class, rate, TPR at p <= 1e-4 before and
after. The JSON also records how many documents of the shipped reference corpora (news,
reviews, code) and of a few Russian, Greek and mixed texts the normaliser leaves unchanged.

    python benchmarks/evasion.py --quick --json --out benchmarks/results/evasion_classes_quick.json
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
from wmkit.watermark.text.evasion import EVASION_CLASSES, Evasion  # noqa: E402
from wmkit.engine import generate_completions  # noqa: E402
from wmkit.watermark.text.normalize import normalize_text  # noqa: E402
from wmkit.watermark.text.reference import reference_texts  # noqa: E402

FPR = 1e-4
SCHEMES = {"kgw-selfhash-h4": ("kgw", {"context_width": 4, "seeding": "selfhash"}), "gumbel": ("gumbel", {})}
NON_LATIN = [
    "Москва — столица России, а Афины — столица Греции. Сорок лет спустя мы вернулись домой.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και ο Ρ είναι γράμμα του αλφαβήτου.",
    "Mixed: English text quoting Москва and Αθήνα by name, with ΕΛΛΑΔΑ and СССР in capitals.",
    "Сор и мусор; сосна и рос; ох, как хорошо! Это русский текст без латиницы.",
    "東京は日本の首都です。ソウルは韓国の首都です。",
]


BEFORE = "991c02b"  # landed main before issue 33


def old_normalize_fn():  # noqa: ANN201
    """``normalize_text`` of wmkit/watermark/text/normalize.py as it was at :data:`BEFORE` (read from git)."""
    import subprocess
    import types

    src = subprocess.run(["git", "show", f"{BEFORE}:wmkit/watermark/text/normalize.py"], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout
    mod = types.ModuleType("normalize_before")
    exec(compile(src, f"normalize.py@{BEFORE}", "exec"), mod.__dict__)  # noqa: S102  (our own file, from git)
    return mod.normalize_text


def tpr(det, texts: list[str]) -> float:
    res = det.detect_many(texts)
    return sum((not isinstance(r, Exception)) and r.p_value <= FPR for r in res) / len(texts)


def genuine() -> dict[str, list[int]]:
    """Per corpus: [documents left unchanged (beyond NFC), documents]."""
    out = {}
    for genre in ("news", "reviews", "code"):
        docs = reference_texts(genre)
        out[genre] = [sum(normalize_text(d) == unicodedata.normalize("NFC", d) for d in docs), len(docs)]
    out["non_latin"] = [sum(normalize_text(t) == unicodedata.normalize("NFC", t) for t in NON_LATIN), len(NON_LATIN)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 prompts (default 50)")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    output_args(ap)
    args = ap.parse_args()
    out_file = ResultFile(args.out, "evasion")
    n = 20 if args.quick else 50
    prompts = agnews_prompts(n)
    lm, tok = load_default_lm()
    key, rows = SecretKey(bytes(range(32))), []
    old_normalize = old_normalize_fn()
    attacks = [("none", 1.0)] + [(c, 1.0) for c in EVASION_CLASSES] + [("case", 0.1), ("case", 0.3)]
    result = {"prompts": n, "fpr": FPR, "tokens": 200, "rows": rows, "genuine_unchanged": genuine()}
    print(json.dumps(result["genuine_unchanged"]), file=sys.stderr, flush=True)
    for label in args.schemes.split(","):
        name, params = SCHEMES[label]
        scheme = make_scheme(name, key, **params)
        marked = [r["completion"] for r in generate_completions(lm, tok, prompts, scheme, max_new_tokens=200,
                                                                min_new_tokens=200, seed=1, batch_size=20)]
        det = scheme.detector(tok, fpr=FPR)
        for kind, rate in attacks:
            attacked = marked if kind == "none" else Evasion(kind, rate)(marked, random.Random(0))
            detector_module.normalize_text = old_normalize
            before = tpr(det, attacked)
            detector_module.normalize_text = normalize_text
            after = tpr(det, attacked)
            rows.append({"scheme": label, "attack": kind, "rate": rate, "tpr_before": before, "tpr_after": after})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        out_file.write_json(result)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'scheme':<16}{'attack':<12}{'rate':>6}{'TPR before':>11}{'TPR after':>11}")
    for r in rows:
        print(f"{r['scheme']:<16}{r['attack']:<12}{r['rate']:>6.1f}{r['tpr_before']:>11.2f}{r['tpr_after']:>11.2f}")


if __name__ == "__main__":
    main()
