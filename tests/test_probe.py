"""wm probe (arXiv 2405.20777): black-box presence tests, checked on toy APIs whose law is stated here
(a second implementation of each family, not wmkit's processors), then end to end against wm serve.

The toy model: the red-green prompts' next word is drawn from a prefix-dependent law over seven
words (never the digit: the null holds exactly); a story is ``max_tokens`` words of a first-order Markov
chain over 200 words. Marks: a KGW bias on a keyed hash of the last ``h`` characters; fixed sampling
(Gumbel-max on a keyed hash of the previous word); EXP-like fixed sampling with ``K`` random shifts;
and a cache-augmented fixed sampler that marks a context only when it has not marked it in the
last ``ttl`` seconds (across requests).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from wmkit.errors import InputError
from wmkit.forensics.probe import Endpoint, cache_test, estimate_keys, fixed_sampling_test, probe, red_green_test
from wmkit.stats import poisson_binomial_sf

WORDS = [" apples", " pears", " plums", " figs", " kiwis", " mangoes", "."]
V = 200


def _u(*parts: object) -> float:
    """A keyed uniform in [0, 1) from a hash of ``parts``."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") / 2**64


class Toy:
    """A toy API: ``mark`` is none, kgw, fixed, exp or cache."""

    def __init__(self, mark: str = "none", h: int = 1, seed: int = 0, key: int = 7, delta: float = 2.0, gamma: float = 0.25,
                 shifts: int = 32, ttl: float = 0.2) -> None:
        self.mark, self.h, self.key, self.delta, self.gamma, self.shifts, self.ttl = mark, h, key, delta, gamma, shifts, ttl
        self.rng = np.random.default_rng(seed)
        law = np.random.default_rng(1000 + seed)
        self.chain = law.normal(0, 1.0, (V + 1, V))  # logits of the next word after word i (V: the prompt's end)
        self.prefix_logits: dict[str, np.ndarray] = {}
        self.law = law
        self.cache: dict[int, float] = {}

    def _choice_logits(self, prompt: str) -> np.ndarray:
        stem = prompt.rstrip("0123456789").rstrip()
        if stem not in self.prefix_logits:
            self.prefix_logits[stem] = self.law.normal(0, 1.0, len(WORDS))
        logits = self.prefix_logits[stem].copy()
        if self.mark == "kgw":
            ctx = prompt[-self.h:]
            logits += self.delta * np.array([_u(self.key, ctx, w) < self.gamma for w in WORDS])
        return logits

    def _story(self, shift: int | None, length: int) -> str:
        prev, out = V, []
        for pos in range(length):
            logits = self.chain[prev]
            fixed = self.mark in ("fixed", "exp") or (self.mark == "cache" and self._fresh(prev))
            if fixed:
                salt = (self.key, prev) if shift is None else (self.key, shift, pos)
                g = -np.log(-np.log(np.array([_u(*salt, t) for t in range(V)]) + 1e-300))
                nxt = int(np.argmax(logits + g))
            else:
                p = np.exp(logits - logits.max())
                nxt = int(self.rng.choice(V, p=p / p.sum()))
            out.append(f" w{nxt}")
            prev = nxt
        return "".join(out)

    def _fresh(self, ctx: int) -> bool:
        now = time.monotonic()
        if self.cache.get(ctx, -1.0) > now:
            return False
        self.cache[ctx] = now + self.ttl
        return True

    def __call__(self, prompt: str, n: int, max_tokens: int, temperature: float) -> list[str]:
        if max_tokens == 1:
            logits = self._choice_logits(prompt)
            if self.mark in ("fixed", "exp"):  # fixed sampling of the one word: a function of the context
                g = -np.log(-np.log(np.array([_u(self.key, prompt[-self.h:], w) for w in WORDS])))
                return [WORDS[int(np.argmax(logits + g))]] * n
            p = np.exp(logits - logits.max())
            return [WORDS[i] for i in self.rng.choice(len(WORDS), size=n, p=p / p.sum())]
        return [self._story(int(self.rng.integers(self.shifts)) if self.mark == "exp" else None, max_tokens) for _ in range(n)]


def _ep(toy: Toy, **kw: object) -> Endpoint:
    return Endpoint(toy, **kw)


@pytest.mark.parametrize("h", [1, 4])
def test_red_green_finds_a_context_keyed_bias_and_not_an_unmarked_model(h):
    marked = red_green_test(_ep(Toy("kgw", h=h)), 1e-3, samples=64, permutations=1999)
    assert marked.decision and marked.p_value == pytest.approx(1 / 2000)
    assert marked.details["queries"] == 10 * 9 * 64
    clean = red_green_test(_ep(Toy("none")), 1e-3, samples=64, permutations=1999)
    assert not clean.decision and clean.p_value > 0.01


def test_red_green_permutation_null_is_uniform_on_unmarked_models():
    """The within-prefix permutation is exact when the digit does not matter: over 60 unmarked toy
    models, P(p <= 0.1) stays near 0.1 (binomial 99.9% band)."""
    ps = [red_green_test(_ep(Toy("none", seed=s)), 0.1, samples=16, permutations=199, seed=s).p_value for s in range(60)]
    hits = sum(p <= 0.1 for p in ps)
    assert 0 <= hits <= 15, ps  # Binomial(60, 0.1): P(X >= 16) < 1e-3


def test_fixed_sampling_flags_gumbel_and_exp_and_estimates_the_shifts():
    gum = fixed_sampling_test(_ep(Toy("fixed")), 1e-3, samples=60)
    assert gum.decision and gum.details["unique"] == 1 and gum.statistic == 59
    exp = fixed_sampling_test(_ep(Toy("exp", shifts=32)), 1e-3, samples=100)
    assert exp.decision
    assert 16 <= exp.details["keys_estimate"] <= 64
    clean = fixed_sampling_test(_ep(Toy("none")), 1e-3, samples=100)
    assert not clean.decision and clean.details["keys_estimate"] is None


def test_fixed_sampling_bound_holds_at_the_assumed_max_prob():
    """A model whose every answer has probability exactly max_prob (uniform over 1/max_prob answers)
    is the null's worst case: the bound's p-value is conservative there (P(p <= 0.05) <= 0.05)."""
    rng = np.random.default_rng(3)
    eps, n = 1e-2, 40

    def uniform(prompt, k, max_tokens, temperature):
        return [str(i) for i in rng.integers(0, int(1 / eps), size=k)]

    ps = [fixed_sampling_test(Endpoint(uniform), 0.05, samples=n, max_prob=eps).p_value for _ in range(400)]
    assert np.mean(np.array(ps) <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)


def test_cache_test_flags_a_cache_augmented_sampler_only():
    toy = Toy("cache", ttl=0.15)
    cached = cache_test(_ep(toy), 1e-3, rounds=8, burst=4, wait=0.2, permutations=1999)
    assert cached.decision, cached
    # the same sampler looks unmarked to the fixed-sampling test (only the first answer is fixed)
    assert not fixed_sampling_test(_ep(Toy("cache", ttl=0.15)), 1e-3, samples=40).decision
    for mark in ("none", "fixed"):  # no memory between requests: the answers of a burst are exchangeable
        d = cache_test(_ep(Toy(mark)), 1e-3, rounds=8, burst=4, wait=0.0, permutations=1999)
        assert not d.decision and d.p_value > 0.01, (mark, d)


def test_probe_summary_holm_and_budget():
    rows = probe(_ep(Toy("fixed")), 1e-3, ["fixed-sampling", "cache-augmented"],
                 {"cache-augmented": {"wait": 0.0, "rounds": 5, "burst": 3, "permutations": 999}})
    assert [r.get("family") for r in rows[:-1]] == ["fixed-sampling", "cache-augmented"]
    s = rows[-1]
    assert s["present"] and s["family"] == "fixed-sampling" and s["queries"] == 100 + 15
    assert rows[0]["p_holm"] == pytest.approx(min(1.0, 2 * rows[0]["p_value"]))
    short = probe(_ep(Toy("none"), max_queries=50), 1e-3, ["fixed-sampling"])
    assert short[0]["partial"] and short[-1]["partial"] and not short[-1]["present"] and short[-1]["queries"] == 48
    with pytest.raises(InputError, match="families are"):
        probe(_ep(Toy()), 1e-3, ["nope"])


def test_an_api_that_fails_midway_keeps_the_rows_before():
    calls = {"n": 0}
    toy = Toy("fixed")

    def flaky(prompt, n, max_tokens, temperature):
        calls["n"] += 1
        if calls["n"] > 7:
            raise InputError("http://127.0.0.1:9/v1/completions: HTTP 500")
        return toy(prompt, n, max_tokens, temperature)

    rows = probe(Endpoint(flaky), 1e-3, ["fixed-sampling", "red-green"])
    assert "p_value" in rows[0] and rows[1]["partial"] and "HTTP 500" in rows[1]["stopped"] and rows[-1]["partial"]


def test_helpers():
    assert estimate_keys(10, 10) is None
    k = 50
    u = k * (1 - (1 - 1 / k) ** 100)
    assert estimate_keys(round(u), 100) == pytest.approx(k, rel=0.1)
    from scipy.stats import binom

    assert poisson_binomial_sf(3, [0.2] * 10) == pytest.approx(binom.sf(2, 10, 0.2))
