"""EaaS embedding watermarks: EmbMarker and ESpeW against a copy attack, with and without CSE removal.

Protocol, per dataset (SST-2, AG News; benchmarks/data) and provider scheme (none, EmbMarker, ESpeW):

1. The provider (all-MiniLM-L6-v2, 384-d) embeds the training and test texts; the scheme marks them
   (20 keyed triggers from the df band [0.005, 0.01), m = 4; ESpeW r = 0.25). ``cos_to_clean`` is the
   mean cosine between clean and provided embeddings over the training texts (``cos_marked``: over
   the texts that carry a trigger). ``accuracy``: a logistic-regression classifier trained on the
   provided training embeddings, tested on the provided test embeddings (``accuracy_clean``: the same
   on clean embeddings).
2. The attacker trains a stealer (wmkit's BagOfWordsStealer: word + bigram bag, MLP, MSE on unit
   vectors) on (training texts, provided embeddings); attack ``cse`` first cleans the provided
   embeddings with CSE (k-means 20, top 50 directions, reference = TF-IDF/LSA of the texts: an
   attacker without a sentence-embedding model); ``cse-oracle`` gives CSE the strongest possible
   reference, the provider's own clean embeddings (an upper bound on what CSE can remove);
   attack ``rotation`` serves the stealer's outputs through a random rotation and is verified with
   the copy-target variant (the target = the suspect's own embedding of the target sentence) and
   the target-free one.
3. The provider runs the ownership test on the stealer: ``p_value`` is the decoy test's (the verdict,
   see wmkit.watermark.embedding.verify), ``ks_p`` the papers' KS test; ``delta_cos``, ``delta_l2``;
   ``p_target_free`` the target-free variant (999 decoys: its exact rank p-value is >= 0.001); for ESpeW ``z_positions``/``p_positions`` the test on
   ESpeW's positions. For scheme ``none`` the provider did not mark anything and tests with the
   ESpeW key's triggers.

    python benchmarks/eaas.py --quick          # minutes: 4,000 / 3,000 training texts
    python benchmarks/eaas.py                  # SST-2 20,000 train / 2,000 test; AG News 8,000 / 1,744
    python benchmarks/eaas.py --quick --json   # {"rows": [{"dataset", "scheme", "attack", "p_value", ...}]}

Clean provider embeddings are cached under the wmkit cache folder (benchmarks/eaas cache files).
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

import numpy as np  # noqa: E402

from _output import ResultFile  # noqa: E402
from wmkit.files import write_file  # noqa: E402
from wmkit.keys import SecretKey  # noqa: E402
from wmkit.models import cache_dir  # noqa: E402
from wmkit.watermark.embedding import (  # noqa: E402
    BagOfWordsStealer,
    EmbMarker,
    ESpeW,
    SentenceEncoder,
    WET,
    TransformedEncoder,
    add_noise,
    cse_clean,
    lsa_reference,
    paraphrased_answers,
    pca_project,
    spa_spot,
    Warden,
    verify_ownership,
    verify_warden,
    verify_wet,
)

DATA = Path(__file__).parent / "data"
BENCH_KEY = SecretKey.from_hex("7a3f" * 8)  # a fixed, public key: benchmarks must be reproducible
N_TARGET_ROWS = 256  # AG News rows 9,744.. hold the candidate target sentences; never trained on


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_tsv(name: str, header: bool) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` of a gzipped TSV in benchmarks/data."""
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        rows = [ln.split("\t") for ln in f.read().splitlines()[1 if header else 0 :] if ln]
    return [r[0] for r in rows], [r[1] for r in rows]


def load_dataset(name: str, n_train: int, n_test: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(train_texts, train_labels, test_texts, test_labels)``."""
    if name == "sst2":
        tr, ytr = read_tsv("sst2_train.tsv.gz", True)
        te, yte = read_tsv("sst2_dev.tsv.gz", True)
        return tr[:n_train], ytr[:n_train], te[:n_test], yte[:n_test]
    x, y = read_tsv("agnews_10k.tsv.gz", False)
    x, y = x[:-N_TARGET_ROWS], y[:-N_TARGET_ROWS]
    return x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]


def cached_encode(enc: SentenceEncoder, texts: list[str], tag: str) -> np.ndarray:
    """The provider's clean embeddings, cached on disk by content hash."""
    h = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir() / "benchmarks" / f"eaas-{tag}-{len(texts)}-{h}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.time()
    emb = enc.encode(texts)
    log(f"  embedded {len(texts)} {tag} texts in {time.time() - t0:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda f: np.save(f, emb), overwrite=True)  # a cache
    return emb


def accuracy(xtr: np.ndarray, ytr: list[str], xte: np.ndarray, yte: list[str]) -> float:
    """Test accuracy of a logistic-regression probe."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=10.0).fit(xtr, ytr)
    return float(np.mean(clf.predict(xte) == np.asarray(yte)))


def run_dataset(name: str, n_train: int, n_test: int, enc: SentenceEncoder, args: argparse.Namespace) -> list[dict]:
    tr, ytr, te, yte = load_dataset(name, n_train, n_test)
    log(f"{name}: {len(tr)} train / {len(te)} test texts")
    clean_tr = cached_encode(enc, tr, f"{name}-train")
    clean_te = cached_encode(enc, te, f"{name}-test")
    acc_clean = accuracy(clean_tr, ytr, clean_te, yte)
    schemes = {"none": None, "embmarker": EmbMarker(BENCH_KEY), "espew": ESpeW(BENCH_KEY, ratio=args.ratio),
               "warden": Warden(BENCH_KEY), "wet": WET(BENCH_KEY)}
    reference = lsa_reference(tr) if "cse" in args.attacks else None
    rows = []
    for sname, scheme in schemes.items():
        if sname not in args.schemes:
            continue
        tester = scheme if scheme is not None and scheme.name != "wet" else schemes["espew"]
        target = tester.target_embedding(enc)
        if scheme is None:
            prov_tr, prov_te = clean_tr, clean_te
        else:
            prov_tr = scheme.mark(tr, clean_tr, target)
            prov_te = scheme.mark(te, clean_te, target)
        q = tester.weights(tr) if sname != "wet" else np.ones(len(tr))  # WET changes every embedding
        cos = np.einsum("ij,ij->i", prov_tr, clean_tr)
        base = {
            "dataset": name,
            "scheme": sname,
            "accuracy": accuracy(prov_tr, ytr, prov_te, yte),
            "accuracy_clean": acc_clean,
            "cos_to_clean": float(cos.mean()),
            "cos_marked": float(cos[q > 0].mean()) if (q > 0).any() else 1.0,
            "marked_fraction": float((q > 0).mean()),
        }
        def provided(texts: list[str], tag: str) -> np.ndarray:
            clean = cached_encode(enc, texts, tag)
            return clean if scheme is None else scheme.mark(texts, clean, target)

        for attack in args.attacks:
            t0 = time.time()
            train_texts, spotted = tr, {}
            if attack.startswith("cse"):
                ref = clean_tr if attack == "cse-oracle" else reference
                targets = cse_clean(prov_tr, ref, seed=args.seed)
            elif attack == "spa":
                keep, _ = spa_spot(tr, lambda x: provided(x, f"{name}-spa"), tr, n_suffixes=args.spa_suffixes, seed=args.seed)
                marked = q > 0
                spotted = {"spa_dropped": float((~keep).mean()), "spa_tpr": float((~keep)[marked].mean()) if marked.any() else 0.0,
                           "spa_fpr": float((~keep)[~marked].mean()) if (~marked).any() else 0.0,
                           "attack_queries": len(tr) * (1 + args.spa_suffixes)}
                train_texts, targets = [t for t, k in zip(tr, keep) if k], prov_tr[keep]
            elif attack == "pca":
                targets = pca_project(prov_tr, 0.8)
            elif attack == "noise":
                targets = add_noise(prov_tr, args.noise, seed=args.seed)
            elif attack == "paraphrase":
                targets = paraphrased_answers(tr, lambda x: provided(x, f"{name}-para"), paraphraser(tr))
            else:
                targets = prov_tr
            stealer = BagOfWordsStealer.fit(train_texts, targets, epochs=args.epochs, seed=args.seed)
            stealer_acc = accuracy(stealer.encode(tr), ytr, stealer.encode(te), yte)
            fidelity = float(np.einsum("ij,ij->i", stealer.encode(te), prov_te).mean())
            suspect = TransformedEncoder.rotation(stealer, seed=args.seed) if attack == "rotation" else stealer
            first = "copy-target" if attack == "rotation" else "target"
            wet_key = schemes["wet"]
            wet_reps = {kind: verify_wet(suspect, wet_key, enc, n_texts=args.wet_texts, statistic=kind)
                        for kind in ("forward", "inverse", "gram")}
            wet_reps["recover"] = verify_wet(suspect, wet_key, enc, statistic="recover")  # 512 texts
            if sname == "wet":
                wet_first = "recover" if attack == "rotation" else "forward"
                reps = {f"wet-{wet_first}": wet_reps[wet_first]}
                budget_rep = wet_reps[wet_first]
            elif sname == "warden":
                reps = {first: verify_warden(suspect, tester, None if first == "copy-target" else target, first,
                                             n_texts=args.texts, n_decoys=args.decoys)}
                budget_rep = verify_warden(suspect, tester, None if first == "copy-target" else target, first,
                                           budget=args.budget, fpr=args.budget_fpr)
            else:
                reps = {
                    first: verify_ownership(suspect, tester, target, first, n_texts=args.texts, n_decoys=args.decoys),
                }
                if not args.skip_target_free:
                    reps["target-free"] = verify_ownership(suspect, tester, None, "target-free", n_texts=args.texts, n_decoys=999)
                if sname == "espew" and attack != "rotation":
                    reps["positions"] = verify_ownership(
                        suspect, tester, target, "positions", clean=enc, n_texts=args.texts, n_decoys=args.decoys
                    )
                budget_mode = "positions" if "positions" in reps else first
                budget_rep = verify_ownership(suspect, tester, target, budget_mode, clean=enc, budget=args.budget,
                                              fpr=args.budget_fpr)
            rep = next(iter(reps.values()))
            free = reps.get("target-free")
            row = {
                **base,
                "attack": attack,
                "p_value": rep.p_value,
                "z": rep.detection.statistic,
                "ks_p": rep.ks_p,
                "test": rep.mode,
                "p_target_free": free.p_value if free else None,
                "z_target_free": free.detection.statistic if free else None,
                "p_positions": reps["positions"].p_value if "positions" in reps else None,
                "z_positions": reps["positions"].detection.statistic if "positions" in reps else None,
                "delta_cos": rep.delta_cos,
                "delta_l2": rep.delta_l2,
                "derived": rep.detection.decision,
                "queries": rep.queries,
                "p_budget": budget_rep.p_value,
                "queries_budget": budget_rep.queries,
                "test_budget": budget_rep.mode,
                "p_wet_forward": wet_reps["forward"].p_value,
                "p_wet_inverse": wet_reps["inverse"].p_value,
                "p_wet_gram": wet_reps["gram"].p_value,
                "p_wet_recover": wet_reps["recover"].p_value,
                "stealer_fidelity": fidelity,
                "stealer_accuracy": stealer_acc,
                **spotted,
                "seconds": round(time.time() - t0, 1),
            }
            log(f"  {sname:9s} {attack:8s} p={row['p_value']:.2e} z={row['z']:.1f} ks_p={row['ks_p'] or 1:.1e} "
                f"p_budget={row['p_budget']:.1e} ({row['queries_budget']} q, {row['test_budget']}) "
                f"p_wet={row['p_wet_forward']:.1e}/{row['p_wet_inverse']:.1e} "
                f"p_free={free.p_value if free else float('nan'):.1e} "
                f"dcos={row['delta_cos']:+.4f} acc={row['accuracy']:.4f} fid={fidelity:.3f} stealer_acc={stealer_acc:.3f} "
                f"{spotted or ''} ({row['seconds']} s)")
            rows.append(row)
    return rows


_PARAPHRASER: dict = {}


def paraphraser(train_texts: list[str]):  # noqa: ANN201
    """The default LM rewriting each query (wmkit's Paraphrase attack, one call per batch of texts);
    its answers are cached on disk by the texts' hash, so every scheme sees the same paraphrases."""
    from wmkit.models import load_default_lm
    from wmkit.watermark.text.attacks import Paraphrase

    def run(texts: list[str]) -> list[str]:
        import random

        h = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        path = cache_dir() / "benchmarks" / f"eaas-paraphrases-{len(texts)}-{h}.json"
        if path.is_file():
            return json.loads(path.read_text())
        if "lm" not in _PARAPHRASER:
            _PARAPHRASER["lm"] = load_default_lm()
        lm, tok = _PARAPHRASER["lm"]
        t0 = time.time()
        out = Paraphrase(lm, tok, max_new_tokens=64)(texts, random.Random(0))
        log(f"  paraphrased {len(texts)} queries in {time.time() - t0:.0f} s")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, json.dumps(out), overwrite=True)  # a cache
        return out

    return run


def table(rows: list[dict]) -> str:
    cols = ["dataset", "scheme", "attack", "test", "p_value", "queries", "p_budget", "queries_budget", "test_budget", "p_wet_forward",
            "p_wet_inverse", "p_wet_gram", "p_wet_recover", "ks_p", "z", "p_target_free", "z_positions", "delta_cos", "accuracy",
            "accuracy_clean", "cos_to_clean", "cos_marked", "stealer_fidelity", "stealer_accuracy"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None:
                cells.append("-")
            elif c in ("p_value", "ks_p", "p_target_free", "p_budget", "p_wet_forward", "p_wet_inverse", "p_wet_gram", "p_wet_recover"):
                cells.append(f"{v:.2e}")
            else:
                cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small training sets (minutes)")
    ap.add_argument("--json", action="store_true", help="print {'rows': [...]} instead of the table")
    ap.add_argument("--out", type=Path, help="also write the JSON to this file (never overwritten)")
    ap.add_argument("--datasets", nargs="+", default=["sst2", "agnews"], choices=["sst2", "agnews"])
    attacks = ["none", "cse", "cse-oracle", "rotation", "spa", "pca", "noise"]
    ap.add_argument("--attacks", nargs="+", default=attacks, choices=attacks + ["paraphrase"],
                    help="paraphrase (the default LM rewrites every stealer query) is not in the default set: CPU hours")
    ap.add_argument("--train-size", type=int, help="stealer training texts per dataset (default: by --quick)")
    ap.add_argument("--skip-target-free", action="store_true", help="skip the target-free test (999 decoy sets)")
    ap.add_argument("--spa-suffixes", type=int, default=3, help="SPA: suffixed copies sent per query")
    ap.add_argument("--noise", type=float, default=0.03, help="noise attack: sigma per coordinate")
    ap.add_argument("--schemes", nargs="+", default=["none", "embmarker", "espew", "warden", "wet"],
                    choices=["none", "embmarker", "espew", "warden", "wet"])
    ap.add_argument("--budget", type=int, default=256, help="queries of the budgeted (sequential) ownership test")
    ap.add_argument("--budget-fpr", type=float, default=1e-6, help="FPR at which the budgeted test stops")
    ap.add_argument("--wet-texts", type=int, default=32, help="queries of WET's test")
    ap.add_argument("--ratio", type=float, default=0.25, help="ESpeW's r (fraction of positions rewritten)")
    ap.add_argument("--epochs", type=int, default=15, help="stealer training epochs")
    ap.add_argument("--texts", type=int, default=128, help="verification texts per set")
    ap.add_argument("--decoys", type=int, default=32, help="decoy trigger sets in the ownership test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out_file = ResultFile(args.out, "eaas")
    sizes = {"sst2": (4000, 1000), "agnews": (3000, 1000)} if args.quick else {"sst2": (20000, 2000), "agnews": (8000, 1744)}
    if args.train_size:
        sizes = {k: (args.train_size, v[1]) for k, v in sizes.items()}
    enc = SentenceEncoder()
    rows = []
    for name in args.datasets:
        rows += run_dataset(name, *sizes[name], enc, args)
    result = {"quick": args.quick, "ratio": args.ratio, "train_size": args.train_size, "budget": args.budget,
              "budget_fpr": args.budget_fpr, "rows": rows}
    out_file.write_json(result)
    print(json.dumps(result) if args.json else table(rows))


if __name__ == "__main__":
    main()
