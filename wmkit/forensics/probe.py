"""Is that API watermarked, and with what kind of scheme? Black-box presence tests after Gloaguen et
al. (ICLR 2025, arXiv 2405.20777), from completions alone, each with a p-value (exact, bounded under a
stated assumption, or approximate: each test below says which) and the queries it spent.

Three families, three tests; each spends its own queries and gives its own p-value, and the
summary is Holm's over the tests run, so "present" is declared at the chosen FPR whichever
family is asked about.

**Red-green** (KGW, SynthID and every scheme whose bias depends on the last ``h`` tokens): the
prompt (a list of fruits, then ``"I ate 7777"``) ends in a run of one digit, four wide, so for
``h <= 4`` the watermark's context is the digit alone, whatever the words before it. Over a grid
of ``R`` prefixes x ``C`` digits, each cell sampled ``n`` times for one token, a keyed bias moves
the log-odds between two outcomes by about ``+-delta`` after the same digit under every prefix.
The statistic: for each pair of the ``top`` most frequent outcomes (digits left out: a digit
continues the run, a natural effect) and each digit, the digit's effect on the pair's log-odds,
averaged over the prefixes, against the prefix-by-digit interaction (pooled, ``(R - 1)(C - 1)``
degrees of freedom). A model also has natural digit effects -- on the unmarked default LM the
largest estimate on this grid is 1.0 nat (0.5 to 1.0 over the outcome pairs, sampling noise
included; the kgw server's reach 2.8) -- so the null is composite: *no
prefix-consistent effect larger than* ``tolerance`` (default 1 nat); the p-value is Student's
tail of ``(|effect| - tolerance) / se``, doubled, Bonferroni over every (pair, digit): approximate
(a normal model of the cell log-odds). The paper
tests the digit effect against zero by a permutation; on SmolLM2 that flags the unmarked model,
so the tolerance is our choice. Unigram (no context) and a bias far below the tolerance are not
seen by this test.

**Fixed-sampling** (Gumbel-max, EXP, vLLM's Gumbel marks): the pseudorandomness is a function of
the key and the context, so once a completion's first tokens agree, the rest agrees too. Our
Gumbel marks and vLLM's sample the first ``h`` completion tokens normally, so whole answers
rarely repeat; the test therefore groups ``n`` answers of one open prompt (``"This is the story
of"``, temperature 1, 16 tokens) by their first ``prefix_words`` words and counts ``D``, the
answers whose continuation repeats an earlier one of the same opening. Given the openings, the
continuations are independent; if no continuation of an unmarked model is likelier than
``max_prob`` (the assumption, default ``1e-3``), the ``j``-th answer of a group repeats one of the
fewer than ``j`` before it with probability at most ``j max_prob``, so ``D`` is dominated by a sum
of independent Bernoullis: an exact bound on the p-value (:func:`wmkit.stats.poisson_binomial_sf`).
The number of distinct answers also estimates how many keys a scheme cycles through (EXP's random
shifts), from the paper's rarefaction law ``U = K (1 - (1 - 1/K)^n)``. (The paper compares the
rarefaction curve of whole answers with the identity by a Mann-Whitney test; the grouping and the
bound are ours.)

**Cache-augmented** (a fixed-sampling scheme that stops marking a context it has already marked
for a while, so that repeated queries look unmarked): ``rounds`` bursts of ``burst`` queries of
one prompt, ``wait`` seconds apart so a cache can expire. The first answer of each burst is
marked (the same text each round); the rest are plain samples. The statistic counts pairs of
rounds whose first answers agree; its null re-draws which answer of each burst is "first"
(exact for any server without memory between requests, for which the answers of a burst are
exchangeable). A server without such a cache, marked or not, is not flagged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..stats import Detection, check_fpr, holm, permutation_detection, poisson_binomial_sf

__all__ = ["Endpoint", "ProbeStopped", "red_green_test", "fixed_sampling_test", "cache_test", "probe", "rescore", "FAMILIES",
           "estimate_keys", "score_red_green", "score_fixed_sampling", "score_cache"]

FAMILIES = ("red-green", "fixed-sampling", "cache-augmented")
PREFIXES = ("I ate", "I chose", "I picked", "I selected", "I took", "I went for", "I settled on", "I got", "I gathered",
            "I harvested")
DIGITS = "123456789"
LEAD = "Fruits: apples, pears, plums, figs, kiwis, mangoes.\n"
STORY = "This is the story of"
MAX_PERMUTATIONS = 1_000_000  # a report re-checked from someone else's file cannot ask for more

Sampler = Callable[[str, int, int, float], list[str]]  # (prompt, n, max_tokens, temperature) -> n texts


class ProbeStopped(InputError):
    """The query budget or the time limit ran out (or the API failed) before a test was complete."""


@dataclass
class Endpoint:
    """A sampler (``sample(prompt, n, max_tokens, temperature) -> n texts``: an API client or a local
    generator) with a budget: at most ``max_queries`` completions in all and ``time_limit`` seconds.
    ``queries`` counts completions asked for; ``per_request`` caps ``n`` of one call."""

    sample: Sampler
    max_queries: int = 50_000
    time_limit: float = 3600.0
    per_request: int = 16
    queries: int = 0
    started: float = field(default_factory=time.monotonic)

    def ask(self, prompt: str, n: int, max_tokens: int, temperature: float = 1.0) -> list[str]:
        """``n`` completions of ``prompt``, in calls of at most ``per_request``."""
        out: list[str] = []
        while len(out) < n:
            k = min(self.per_request, n - len(out))
            if self.queries + k > self.max_queries:
                raise ProbeStopped(f"the query budget ({self.max_queries}) is spent")
            if time.monotonic() - self.started > self.time_limit:
                raise ProbeStopped(f"the time limit ({self.time_limit:g} s) is reached")
            try:
                texts = self.sample(prompt, k, max_tokens, temperature)
            except ProbeStopped:
                raise
            except InputError as e:  # the API failed: what was measured so far is kept
                raise ProbeStopped(str(e)) from None
            self.queries += k
            out.extend(texts)
        return out


def red_green_test(endpoint: Endpoint, fpr: float, samples: int = 64, prefixes: Sequence[str] = PREFIXES,
                   digits: str = DIGITS, width: int = 4, top: int = 4, tolerance: float = 1.0, lead: str = LEAD) -> Detection:
    """The red-green test: a context-keyed bias shows as a digit effect, shared by every prefix, on the
    log-odds between two outcomes, larger than ``tolerance`` (nats). The answers are kept in
    ``evidence["cells"]`` (``[prefix][digit] -> answers``); :func:`score_red_green` scores them."""
    if len(prefixes) < 2 or len(digits) < 2 or samples < 1 or width < 1:
        raise InputError("the red-green test needs >= 2 prefixes, >= 2 digits, samples >= 1, width >= 1")
    check_fpr(fpr)
    q0 = endpoint.queries
    cells = [[endpoint.ask(f"{lead}{p} {d * width}", samples, 1) for d in digits] for p in prefixes]
    return _with_queries(score_red_green(cells, fpr, tolerance, top), endpoint.queries - q0)


def score_red_green(cells: Sequence[Sequence[Sequence[str]]], fpr: float, tolerance: float = 1.0, top: int = 4) -> Detection:
    """Score the red-green grid ``cells[prefix][digit]`` (one-token answers)."""
    from scipy.stats import t as student

    if top < 2 or tolerance < 0:
        raise InputError("the red-green test needs top >= 2 and tolerance >= 0")
    totals: dict[str, int] = {}
    for row in cells:
        for cell in row:
            for t in cell:
                if t and not any(ch.isdigit() for ch in t):  # a digit continues the run: a natural digit effect
                    totals[t] = totals.get(t, 0) + 1
    outcomes = sorted(totals, key=lambda t: (-totals[t], t))[:top]
    if len(outcomes) < 2:
        raise InputError("the red-green prompts gave fewer than two outcomes without digits: no contrast to test")
    counts = np.array([[[list(cell).count(o) for o in outcomes] for cell in row] for row in cells], dtype=float)  # [R, C, K]
    r, c = counts.shape[0], counts.shape[1]
    df = (r - 1) * (c - 1)
    best, best_t, tests = 1.0, -math.inf, 0
    for a, b in combinations(range(len(outcomes)), 2):
        y = np.log((counts[..., a] + 0.5) / (counts[..., b] + 0.5))  # log-odds of a over b per cell [R, C]
        effect = y.mean(axis=0) - y.mean()  # each digit's effect, averaged over the prefixes
        resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        se = math.sqrt(max(float((resid ** 2).sum()) / df, 1e-12) * (c - 1) / (c * r))
        t = (np.abs(effect) - tolerance) / se
        best = min(best, float(2 * student.sf(t.max(), df)))
        best_t = max(best_t, float(t.max()))
        tests += c
    p = min(1.0, best * tests)  # Bonferroni over every (pair, digit)
    return Detection(method="red-green", n_scored=int(counts.sum()), statistic=best_t, p_value=p, fpr=fpr,
                     decision=bool(p <= fpr), details={"outcomes": outcomes, "cells": [r, c],
                                                      "samples_per_cell": len(cells[0][0]), "tolerance": tolerance,
                                                      "top": top, "tests": tests},
                     evidence={"cells": [[list(cell) for cell in row] for row in cells]})


def _with_queries(d: Detection, queries: int, **more: Any) -> Detection:
    """``d`` with the queries it spent (first) and ``more`` in its details."""
    return replace(d, details={"queries": queries, **d.details, **more})


def estimate_keys(unique: int, n: int) -> float | None:
    """``K`` with ``K (1 - (1 - 1/K)^n) = unique`` (the paper's rarefaction law); ``None`` when all
    ``n`` texts differ (no repeat, no estimate)."""
    if unique >= n:
        return None
    if unique <= 1:
        return 1.0
    lo, hi = 1.0 + 1e-9, 1e12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if mid * -math.expm1(n * math.log1p(-1 / mid)) < unique:
            lo = mid
        else:
            hi = mid
    return round(lo, 1)


def _split(text: str, prefix_words: int) -> tuple[str, str]:
    """``(the first prefix_words words, the rest)`` of ``text`` (the rest keeps its spacing)."""
    if prefix_words == 0:
        return "", text
    parts = text.split(maxsplit=prefix_words)
    if len(parts) <= prefix_words:
        return text, ""
    cut = len(text) - len(parts[-1])
    return text[:cut], text[cut:]


def fixed_sampling_test(endpoint: Endpoint, fpr: float, samples: int = 100, max_tokens: int = 16, prefix_words: int = 4,
                        max_prob: float = 1e-3, prompt: str = STORY) -> Detection:
    """The fixed-sampling test: continuations that repeat, given the same first words, more often than
    any model with no continuation likelier than ``max_prob`` repeats them (answers in
    ``evidence["texts"]``; :func:`score_fixed_sampling`)."""
    if samples < 2 or max_tokens < 1:
        raise InputError("the fixed-sampling test needs samples >= 2 and max_tokens >= 1")
    check_fpr(fpr)
    q0 = endpoint.queries
    texts = endpoint.ask(prompt, samples, max_tokens)
    return _with_queries(score_fixed_sampling(texts, fpr, prefix_words, max_prob), endpoint.queries - q0)


def score_fixed_sampling(texts: Sequence[str], fpr: float, prefix_words: int = 4, max_prob: float = 1e-3) -> Detection:
    """Score answers of one prompt, in the order they came."""
    if prefix_words < 0 or not 0 < max_prob < 1 or len(texts) < 2:
        raise InputError("the fixed-sampling test needs >= 2 answers, prefix_words >= 0 and 0 < max_prob < 1")
    seen: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    repeats = 0
    for t in texts:
        head, rest = _split(t, prefix_words)
        if not rest:
            continue  # too short to have a continuation: it cannot repeat one
        group = seen.setdefault(head, set())
        repeats += rest in group
        group.add(rest)
        sizes[head] = sizes.get(head, 0) + 1
    # given the openings, the continuations are independent; the j-th of a group repeats one of the fewer
    # than j before it with probability <= j * max_prob: D is dominated by independent Bernoullis
    bounds = [min(1.0, j * max_prob) for c in sizes.values() for j in range(c)]
    p = poisson_binomial_sf(repeats, bounds)
    unique = len(set(texts))
    return Detection(method="fixed-sampling", n_scored=len(texts), statistic=float(repeats), p_value=p, fpr=fpr,
                     decision=bool(p <= fpr), details={"unique": unique,
                                                      "shared_openings": sum(c >= 2 for c in sizes.values()),
                                                      "prefix_words": prefix_words, "max_prob": max_prob,
                                                      "keys_estimate": estimate_keys(unique, len(texts))},
                     evidence={"texts": list(texts)})


def cache_test(endpoint: Endpoint, fpr: float, rounds: int = 10, burst: int = 5, wait: float = 2.0, max_tokens: int = 8,
               prompt: str = STORY, permutations: int = 9_999, seed: int = 0) -> Detection:
    """The cache test: the first answer after a pause agrees across rounds more than a random answer does
    (answers in ``evidence["bursts"]``; :func:`score_cache`)."""
    if rounds < 2 or burst < 2 or wait < 0 or max_tokens < 1:
        raise InputError("the cache test needs rounds >= 2, burst >= 2, wait >= 0, max_tokens >= 1")
    check_fpr(fpr)
    q0 = endpoint.queries
    bursts = []
    for i in range(rounds):
        if i:
            time.sleep(wait)
        bursts.append([endpoint.ask(prompt, 1, max_tokens)[0] for _ in range(burst)])
    return _with_queries(score_cache(bursts, fpr, permutations, seed), endpoint.queries - q0, wait_s=wait)


def score_cache(bursts: Sequence[Sequence[str]], fpr: float, permutations: int = 9_999, seed: int = 0) -> Detection:
    """Score ``bursts[round]`` (answers in the order asked; the first after the pause first)."""
    rounds, burst = len(bursts), len(bursts[0]) if bursts else 0
    if rounds < 2 or burst < 2 or any(len(b) != burst for b in bursts) or not 1 <= permutations <= MAX_PERMUTATIONS:
        raise InputError(f"the cache test needs >= 2 bursts of the same size >= 2, and 1 <= permutations <= {MAX_PERMUTATIONS}")
    ids: dict[str, int] = {}
    codes = np.array([[ids.setdefault(t, len(ids)) for t in b] for b in bursts])  # [rounds, burst]

    def agree(firsts: np.ndarray) -> np.ndarray:
        """Pairs of rounds whose chosen answers agree, per row of ``firsts [m, rounds]``."""
        return sum((firsts[:, i] == firsts[:, j]).astype(int) for i, j in combinations(range(rounds), 2))

    observed = float(agree(codes[None, :, 0])[0])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, burst, size=(permutations, rounds))
    null = agree(np.take_along_axis(np.broadcast_to(codes, (permutations, rounds, burst)), pick[..., None], axis=2)[..., 0])
    d = permutation_detection("cache-augmented", observed, null.astype(float), fpr, n_scored=rounds * burst,
                              rounds=rounds, burst=burst, distinct_answers=len(ids), permutations=permutations, seed=seed)
    return replace(d, evidence={"bursts": [list(b) for b in bursts]})


TESTS: dict[str, Callable[..., Detection]] = {"red-green": red_green_test, "fixed-sampling": fixed_sampling_test,
                                              "cache-augmented": cache_test}
# each family's scorer, the name of its answers and the parameters (of its row) it is scored with
SCORERS: dict[str, tuple[Callable[..., Detection], str, tuple[str, ...]]] = {
    "red-green": (score_red_green, "cells", ("tolerance", "top")),
    "fixed-sampling": (score_fixed_sampling, "texts", ("prefix_words", "max_prob")),
    "cache-augmented": (score_cache, "bursts", ("permutations", "seed"))}


def rescore(row: dict[str, Any], answers: Any, fpr: float) -> Detection:
    """A family's test scored again from its recorded ``answers``, with the parameters its ``row`` names
    (what ``wm evidence check`` does for a probe report)."""
    if row.get("family") not in SCORERS:
        raise InputError(f"no probe family {row.get('family')!r}; families are {', '.join(FAMILIES)}")
    score, _, params = SCORERS[row["family"]]
    return score(answers, fpr, **{k: row[k] for k in params})


def probe(endpoint: Endpoint, fpr: float, families: Sequence[str] = FAMILIES,
          options: dict[str, dict[str, Any]] | None = None, answers: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run the tests of ``families``; one row per family (``p_value``, ``p_holm``, ``queries``, ...) then
    the summary (``present``, ``family``, ``queries``). A test stopped by the budget is a row with
    ``"partial": true`` and no p-value; the summary says so. ``answers``, if given, receives each
    finished family's answers (what :func:`rescore` needs)."""
    check_fpr(fpr)
    unknown = [f for f in families if f not in TESTS]
    if unknown or not families:
        raise InputError(f"families are {', '.join(FAMILIES)}; got {', '.join(unknown) or 'none'}")
    rows: list[dict[str, Any]] = []
    dets: dict[str, Detection] = {}
    for fam in families:
        q0 = endpoint.queries
        try:
            dets[fam] = TESTS[fam](endpoint, fpr, **(options or {}).get(fam, {}))
        except ProbeStopped as e:
            rows.append({"family": fam, "partial": True, "stopped": str(e), "queries": endpoint.queries - q0})
            continue
        d = dets[fam]
        if answers is not None and d.evidence is not None:
            answers[fam] = d.evidence[SCORERS[fam][1]]
        rows.append({"family": fam, "p_value": d.p_value, "statistic": d.statistic, "p_floor": d.p_floor,
                     **{k: v for k, v in d.details.items() if k not in ("z", "p_value_normal")}})
    adjusted = dict(zip(dets, holm([d.p_value for d in dets.values()]))) if dets else {}
    for row in rows:
        if row["family"] in adjusted:
            row["p_holm"] = adjusted[row["family"]]
            row["present"] = adjusted[row["family"]] <= fpr
    found = sorted((p, f) for f, p in adjusted.items() if p <= fpr)
    summary: dict[str, Any] = {"summary": True, "present": bool(found), "family": found[0][1] if found else None,
                               "fpr": fpr, "queries": endpoint.queries, "seconds": round(time.monotonic() - endpoint.started, 1)}
    if any(r.get("partial") for r in rows):
        summary["partial"] = True
    return rows + [summary]
