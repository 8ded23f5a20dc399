"""Per-key false-positive rates of the key-only text detectors on human text, before and after the
reference null (``null="reference"``, wmkit.watermark.text.reference).

A deployment holds one key, so the FPR that matters is the FPR *of that key*, not the average over
keys. For each of ``--keys`` random keys and each detector (kgw h1 lefthash, kgw h4 selfhash,
unigram -- all gamma 0.25 -- ie, gumbel (h 4), synthid and synthid with gvalues=prf), every evaluation document is scored and its p-value compared
with 1e-2 and 1e-3; rows give the pooled FPR and the worst key's FPR with its 95% Clopper-Pearson
interval, with the plain binomial null (``gamma``, every coin scored) and with the reference null
(green-list detectors only: the references' common coins are not scored and the test is against the
key's rate on the rest; ie's scored set is chosen by its tagger and navigator). ``--key-seed``
derives the keys from a seed, so a run can be repeated; ``--overlap 0.5`` drops near-copies
(documents more than half of whose 8-grams occurred earlier in the genre).

Evaluation text, disjoint from the reference corpora that ship in wmkit/data/reference: news (AG
News articles 5,000-9,999 of benchmarks/data/agnews_10k.tsv.gz), reviews (SST-2 phrases of
sst2_dev.tsv.gz and sst2_train.tsv.gz) and code (the running Python's standard library files that the shipped code
reference leaves out: every fifth top-level module, then the modules of its packages and tests),
plus for reviews the SST-2 train phrases after the first 30,000; each genre tokenized once as a
stream and cut into consecutive documents of ``--tokens`` tokens (at most ``--max-docs``). The
``generated`` genre is ``--generated`` unmarked completions of the default model (T = 1), prompted
with AG News articles the news reference does not hold (generated once, then cached).

    python benchmarks/per_key_fpr.py --json --out per_key.json --plot per_key.png   # 20 keys
    python benchmarks/per_key_fpr.py --quick                                        # 4 keys, news only
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _output import ResultFile, output_args, pick  # noqa: E402
from wmkit.files import write_file  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import load_tokenizer  # noqa: E402
from wmkit.stats import clopper_pearson_interval  # noqa: E402
from wmkit.watermark.text import SCHEMES  # noqa: E402
from wmkit.watermark.text.ie.corpus import split_files, stdlib_files  # noqa: E402
from wmkit.watermark.text.normalize import normalize_text  # noqa: E402
from wmkit.watermark.text.stream import ngram_keys  # noqa: E402

DATA = Path(__file__).parent / "data"
DETECTORS = {
    "kgw-h1": ("kgw", {"gamma": 0.25}),
    "kgw-selfhash-h4": ("kgw", {"gamma": 0.25, "seeding": "selfhash", "context_width": 4}),
    "unigram": ("unigram", {"gamma": 0.25}),
    "ie": ("ie", {"gamma": 0.25}),
    "gumbel": ("gumbel", {}),
    "synthid": ("synthid", {}),
    "synthid-prf": ("synthid", {"gvalues": "prf"}),
}
REFERENCE_NULL = ("kgw", "unigram")  # the schemes whose detector takes null="reference"
LEVELS = (1e-2, 1e-3)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def genre_texts(genre: str, max_docs: int) -> list[str]:
    """Evaluation text of ``genre``, disjoint from the shipped references (see the module docstring)."""
    if genre == "news":
        with gzip.open(DATA / "agnews_10k.tsv.gz", "rt", encoding="utf-8") as f:
            return [line.split("\t")[0] for line in f][5000:]
    if genre == "reviews":
        with gzip.open(DATA / "sst2_dev.tsv.gz", "rt", encoding="utf-8") as f:
            dev = [line.split("\t")[0] for line in f][1:]
        with gzip.open(DATA / "sst2_train.tsv.gz", "rt", encoding="utf-8") as f:
            return dev + [line.split("\t")[0] for line in f][30001:]
    if genre == "site-code":  # installed packages' Python (not the stdlib the code reference samples)
        import sysconfig

        texts, size = [], 0
        for path in sorted(Path(sysconfig.get_paths()["purelib"]).glob("*/**/*.py")):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
            size += len(texts[-1])
            if size > max_docs * 1000:
                break
        return texts
    top = split_files(stdlib_files())[1]
    root = top[0].parent
    deeper = sorted(p for p in root.glob("*/**/*.py") if "site-packages" not in p.parts)
    texts, size = [], 0
    for path in top + deeper:  # about 5 characters a token: stop near max_docs documents of 200 tokens
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
        size += len(texts[-1])
        if size > max_docs * 1000:
            break
    return texts


def generated_documents(n: int, tokens: int) -> list[torch.Tensor]:
    """``n`` unmarked completions of ``tokens`` tokens by the default model (T = 1, no top-p), prompted
    with the first 20 words of AG News articles 5,000 onwards (not in the news reference); generated
    once and kept in the wmkit cache (``benchmarks/generated-N-T.pt``), as token ids."""
    from wmkit.models import cache_dir, load_default_lm
    from wmkit.engine import generate_completions

    path = cache_dir() / "benchmarks" / f"generated-{n}-{tokens}.pt"
    if path.exists():
        return list(torch.load(path))
    with gzip.open(DATA / "agnews_10k.tsv.gz", "rt", encoding="utf-8") as f:
        prompts = [" ".join(line.split("\t")[0].split()[:20]) for line in f][5000 : 5000 + n]
    lm, tok = load_default_lm()
    t0, done = time.perf_counter(), [0]

    def progress(batch: int) -> None:
        done[0] += batch
        log(f"generated {done[0]}/{n} ({time.perf_counter() - t0:.0f} s)")

    rows = generate_completions(lm, tok, prompts, None, max_new_tokens=tokens, min_new_tokens=tokens, seed=11, batch_size=50,
                                on_batch=progress)
    ids = torch.tensor([r["completion_ids"][:tokens] for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda f: torch.save(ids, f), overwrite=True)  # a cache: atomic, replaces a stale one
    return list(ids)


def documents(tokenizer, texts: list[str], length: int) -> list[torch.Tensor]:
    enc = tokenizer([normalize_text(t) for t in texts], add_special_tokens=False)["input_ids"]
    stream = torch.tensor([t for e in enc for t in e], dtype=torch.long)
    n = len(stream) // length
    return list(stream[: n * length].view(n, length))


def distinct(docs: list[torch.Tensor], vocab: int, overlap: float) -> list[torch.Tensor]:
    """The documents of which at most ``overlap`` of the token 8-grams occur in earlier documents:
    near-copies (CPython's codec tables, generated test files) share their n-grams, so a fixed key
    colours them alike and one unlucky cluster moves a key's FPR (each document's own test is not
    at fault: its p-value is over the key). ``overlap >= 1`` keeps every document."""
    if overlap >= 1:
        return docs
    seen: set[int] = set()
    kept = []
    for d in docs:
        grams = set(ngram_keys(d.numpy(), 7, vocab).tolist())
        if len(grams & seen) <= overlap * max(1, len(grams)):
            kept.append(d)
        seen |= grams
    return kept


def rates(p: np.ndarray) -> dict[str, float]:
    return {str(a): float((p <= a).mean()) for a in LEVELS}


def summarize(per_key: list[np.ndarray]) -> dict:
    """Pooled and worst-key FPR at each level, with the worst key's Clopper-Pearson interval."""
    out = {}
    for a in LEVELS:
        hits = [int((p <= a).sum()) for p in per_key]
        n = len(per_key[0])
        worst = int(np.argmax(hits))
        lo, hi = clopper_pearson_interval(hits[worst], n)
        out[str(a)] = {"pooled": sum(hits) / (n * len(per_key)), "worst": hits[worst] / n, "worst_ci": [lo, hi],
                       "per_key": [h / n for h in hits]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=200, help="document length in tokens")
    ap.add_argument("--genres", default="news,reviews,code", help="news, reviews, code, site-code (installed packages' Python), generated")
    ap.add_argument("--generated", type=int, default=2000, help="completions for the generated genre")
    ap.add_argument("--max-docs", type=int, default=10_000, help="documents per genre at most")
    ap.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated: " + ", ".join(DETECTORS))
    ap.add_argument("--quick", action="store_true", help="4 keys, news only")
    ap.add_argument("--overlap", type=float, default=1.0,
                    help="drop a document when more than this share of its 8-grams occurred in earlier ones "
                         "(0.5: near-copies out; default 1: keep all)")
    ap.add_argument("--key-seed", type=int, default=None,
                    help="derive the keys from this seed (reproducible; default: fresh random keys)")
    ap.add_argument("--plot", type=Path, help="write a PNG of every key's FPR before and after (never overwritten)")
    output_args(ap)
    args = ap.parse_args()
    names = pick(args.detectors, DETECTORS, "per_key_fpr.py", "detector(s)")
    genres = pick("news" if args.quick else args.genres, ("news", "reviews", "code", "site-code", "generated"), "per_key_fpr.py",
                  "genre(s)")
    n_keys = 4 if args.quick else args.keys
    out, png = ResultFile(args.out, "per_key_fpr.py"), ResultFile(args.plot, "per_key_fpr.py")
    tok = load_tokenizer()
    docs = {g: distinct(generated_documents(args.generated, args.tokens) if g == "generated" else
                        documents(tok, genre_texts(g, args.max_docs), args.tokens)[: args.max_docs], len(tok), args.overlap)
            for g in genres}
    log("documents: " + ", ".join(f"{g} {len(d)}" for g, d in docs.items()))
    if args.key_seed is None:
        keys = [SecretKey.generate() for _ in range(n_keys)]
    else:  # reproducible keys: SHA-256 of the seed and the key's index
        keys = [SecretKey(hashlib.sha256(f"per_key_fpr/{args.key_seed}/{i}".encode()).digest()) for i in range(n_keys)]
    rows = []
    for name in names:
        scheme_name, params = DETECTORS[name]
        ref = scheme_name in REFERENCE_NULL
        schemes = [SCHEMES[scheme_name](key=key, **params) for key in keys]
        t0 = time.perf_counter()
        plain = [s.detector(tok) for s in schemes]
        refd = [s.detector(tok, null="reference") for s in schemes] if ref else []  # built once: selfhash's takes seconds
        log(f"{name}: {len(schemes)} detectors in {time.perf_counter() - t0:.1f} s")
        for genre, ds in docs.items():
            before, after = [], []
            t0 = time.perf_counter()
            for i in range(len(schemes)):
                res = plain[i].detect_many(ds, evidence=False) if ref else plain[i].detect_many(ds)
                before.append(np.array([r.p_value for r in res if not isinstance(r, Exception)]))
                if ref:
                    after.append(np.array([r.p_value for r in refd[i].detect_many(ds, evidence=False)
                                           if not isinstance(r, Exception)]))
            row = {"detector": name, "genre": genre, "documents": len(ds), "scored": len(before[0]), "keys": n_keys,
                   "key_seed": args.key_seed, "overlap": args.overlap, "tokens": args.tokens, "gamma": getattr(schemes[0], "gamma", None), "before": summarize(before),
                   "after": summarize(after) if after else None, "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            b, a = row["before"], row["after"]
            log(f"{name:>16} {genre:>8}: worst key FPR@1e-2 {b['0.01']['worst']:.4f} -> "
                f"{a['0.01']['worst'] if a else float('nan'):.4f}; @1e-3 {b['0.001']['worst']:.4f} -> "
                f"{a['0.001']['worst'] if a else float('nan'):.4f} ({row['seconds']} s)")
            out.write_json({"rows": rows})
    print(f"{'detector':>16} {'genre':>8} {'docs':>6} | {'pooled@1e-2':>11} {'worst@1e-2 (95% CI)':>26} | "
          f"{'pooled@1e-3':>11} {'worst@1e-3 (95% CI)':>26}")
    for r in rows:
        for label in ("before", "after"):
            s = r[label]
            if s is None:
                continue
            cells = [f"{s[str(a)]['pooled']:>11.4f} {s[str(a)]['worst']:>8.4f} [{s[str(a)]['worst_ci'][0]:.4f}, "
                     f"{s[str(a)]['worst_ci'][1]:.4f}]" for a in LEVELS]
            print(f"{r['detector'] + ' ' + label:>22} {r['genre']:>8} {r['scored']:>6} | {cells[0]} | {cells[1]}")
    if args.plot:
        plot(rows, png)
    if args.json:
        print(json.dumps(rows))


def plot(rows: list[dict], png: ResultFile) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, a in zip(axes, LEVELS):
        labels = []
        for i, r in enumerate(rows):
            labels.append(f"{r['detector']}\n{r['genre']}")
            ax.scatter([i - 0.12] * r["keys"], r["before"][str(a)]["per_key"], s=12, c="tab:red", alpha=0.7,
                       label="gamma null" if i == 0 else None)
            if r["after"]:
                ax.scatter([i + 0.12] * r["keys"], r["after"][str(a)]["per_key"], s=12, c="tab:green", alpha=0.7,
                           label="reference null" if i == 0 else None)
        ax.axhline(a, color="k", lw=1)
        ax.axhline(2 * a, color="k", lw=1, ls="--")
        ax.set_xticks(range(len(rows)), labels, rotation=60, fontsize=7)
        ax.set_title(f"per-key FPR at p <= {a:g} (line: nominal, dashed: 2x)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.write(lambda f: fig.savefig(f, format="png", dpi=110))


if __name__ == "__main__":
    main()
