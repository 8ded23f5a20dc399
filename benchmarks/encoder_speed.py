"""Embedding throughput of the provider encoder (all-MiniLM-L6-v2 on the CPU) against sentence-transformers.

Encoders, all at 128-token truncation on the same AG News texts (the first ``words`` words of
``n`` articles): ``wmkit`` (length-sorted passes of at most 64 texts and ``CPU_BATCH_TOKENS``
padded tokens), ``wmkit 64-text passes`` (the token budget off: what the encoder did before),
and ``sentence-transformers`` 6.0.1 (``SentenceTransformer.encode``, its default batch of 32,
also length-sorted; from its wheel, see ``benchmarks/_peers.py``). Each is timed best of
``--repeats`` after a warm-up. Rows: ``{words, encoder, ms_per_text, texts_per_s, vs_st,
max_abs_diff}`` (``vs_st``: sentence-transformers' time over this encoder's; ``max_abs_diff``:
against sentence-transformers' embeddings).

    python benchmarks/encoder_speed.py --out benchmarks/results/encoder_speed.json
    python benchmarks/encoder_speed.py --n 128 --words 8,60 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from _data import agnews_prompts  # noqa: E402
from _output import ResultFile, output_args  # noqa: E402
from _peers import sentence_transformers  # noqa: E402


def best_time(fn, texts: list[str], repeats: int) -> tuple[float, np.ndarray]:
    """The fastest of ``repeats`` runs of ``fn(texts)`` (after one warm-up call), and its output."""
    fn(texts[:8])
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(texts)
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="texts per length")
    ap.add_argument("--words", default="8,60,200", help="comma-separated text lengths in words")
    ap.add_argument("--repeats", type=int, default=3)
    output_args(ap)
    args = ap.parse_args()
    out = ResultFile(args.out, "encoder_speed.py")
    from wmkit.models import default_embedder_path
    from wmkit.watermark.embedding import SentenceEncoder

    ours = SentenceEncoder()
    before = SentenceEncoder(max_batch_tokens=10**9)
    st = sentence_transformers().SentenceTransformer(str(default_embedder_path()), device="cpu")
    st.max_seq_length = ours.max_length
    encoders = {
        "wmkit": ours.encode,
        "wmkit 64-text passes": before.encode,
        "sentence-transformers": lambda t: st.encode(t, convert_to_numpy=True, show_progress_bar=False),
    }
    rows = []
    for words in [int(w) for w in args.words.split(",")]:
        texts = agnews_prompts(args.n, words=words)
        timed = {name: best_time(fn, texts, args.repeats) for name, fn in encoders.items()}
        st_s, st_emb = timed["sentence-transformers"]
        for name, (s, emb) in timed.items():
            rows.append({"words": words, "encoder": name, "ms_per_text": round(1000 * s / len(texts), 2),
                         "texts_per_s": round(len(texts) / s, 1), "vs_st": round(st_s / s, 2),
                         "max_abs_diff": float(np.abs(emb - st_emb).max())})
        out.write_json({"n": args.n, "repeats": args.repeats, "rows": rows})
    print(f"{'words':>5} {'encoder':>22} {'ms/text':>8} {'texts/s':>8} {'vs ST':>6} {'max |diff|':>10}")
    for r in rows:
        print(f"{r['words']:>5} {r['encoder']:>22} {r['ms_per_text']:>8.2f} {r['texts_per_s']:>8.1f} "
              f"{r['vs_st']:>6.2f} {r['max_abs_diff']:>10.1e}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
