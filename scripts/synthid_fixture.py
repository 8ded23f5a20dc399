"""Write ``tests/data/synthid_transformers_smollm2.json``: text that transformers' own SynthID generates.

The real-model SynthID test checks that wmkit's detector finds text marked by transformers' own
``SynthIDTextWatermarkingConfig`` (and does not flag the same model's unmarked samples). Generating it
takes transformers' processor several minutes on one CPU thread (it hashes every vocabulary entry at
30 depths per step), so the text is generated once by this script and committed; the test of the
processor's per-step equality with wmkit's stays live.

    python scripts/synthid_fixture.py            # refuses to overwrite; --force to regenerate
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import SynthIDTextWatermarkingConfig  # noqa: E402

from wmkit.files import write_file  # noqa: E402
from wmkit.models import load_default_lm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "synthid_transformers_smollm2.json"
KEYS = [654, 400, 836, 123, 340, 443, 597, 160, 57, 29, 590, 639, 13, 715, 468, 990, 966, 226, 324, 585,
        118, 504, 421, 521, 129, 669, 732, 225, 90, 960]  # 30 layers, as the SynthID paper
SETTINGS = {"ngram_len": 5, "top_k": 50, "temperature": 1.0, "new_tokens": 200, "seed": 1, "prompts": 12}


def generate(lm, tok, prompts: list[str], watermark: bool) -> list[str]:
    """200 sampled tokens per prompt (top-k 50, T = 1), under transformers' SynthID config or none."""
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(SETTINGS["seed"])
    cfg = SynthIDTextWatermarkingConfig(keys=KEYS, ngram_len=SETTINGS["ngram_len"]) if watermark else None
    with torch.no_grad():
        out = lm.generate(**enc, do_sample=True, temperature=SETTINGS["temperature"], top_k=SETTINGS["top_k"],
                          max_new_tokens=SETTINGS["new_tokens"], min_new_tokens=SETTINGS["new_tokens"],
                          watermarking_config=cfg, pad_token_id=tok.pad_token_id)
    return [tok.decode(row, skip_special_tokens=True) for row in out[:, enc.input_ids.shape[1]:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="overwrite the committed fixture")
    args = ap.parse_args()
    if OUT.exists() and not args.force:
        print(f"{OUT} exists (--force to regenerate)", file=sys.stderr)
        return 2
    lines = (ROOT / "tests" / "data" / "prompts.txt").read_text(encoding="utf-8").splitlines()
    prompts = [ln for ln in lines if ln.strip()][: SETTINGS["prompts"]]
    lm, tok = load_default_lm()
    data = {"generator": f"transformers {transformers.__version__}, torch {torch.__version__}, SmolLM2-135M-Instruct",
            "keys": KEYS, **SETTINGS, "marked": generate(lm, tok, prompts, True), "plain": generate(lm, tok, prompts, False)}
    write_file(OUT, json.dumps(data, ensure_ascii=False, indent=1) + "\n", overwrite=args.force)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
