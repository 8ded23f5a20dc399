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
    marked = red_green_test(_ep(Toy("kgw", h=h)), 1e-3, samples=64)
    assert marked.decision and marked.p_value < 1e-5
    assert marked.details["queries"] == 10 * 9 * 64 and marked.details["tests"] == 6 * 9
    clean = red_green_test(_ep(Toy("none")), 1e-3, samples=64)
    assert not clean.decision and clean.p_value == 1.0


def test_red_green_p_values_are_valid_at_zero_tolerance_where_the_digit_does_not_matter():
    """With tolerance 0 the null is "no digit effect", which the unmarked toy meets exactly: over 100
    unmarked toy models, P(p <= 0.1) stays at or below 0.1 (Bonferroni makes it conservative; the
    binomial 99.9% band allows 20 of 100)."""
    ps = [red_green_test(_ep(Toy("none", seed=s)), 0.1, samples=32, tolerance=0.0).p_value for s in range(100)]
    assert sum(p <= 0.1 for p in ps) <= 20, sorted(ps)[:25]
    # and it has power there: a weak bias (delta 0.7) is found at tolerance 0 but not at the default 1 nat
    weak = Toy("kgw", delta=0.7)
    assert red_green_test(_ep(weak), 1e-3, samples=256, tolerance=0.0).decision
    assert not red_green_test(_ep(Toy("kgw", delta=0.7)), 1e-3, samples=256).decision


def test_fixed_sampling_flags_gumbel_and_exp_and_estimates_the_shifts():
    gum = fixed_sampling_test(_ep(Toy("fixed")), 1e-3, samples=60)
    assert gum.decision and gum.details["unique"] == 1 and gum.statistic == 59 and gum.details["shared_openings"] == 1
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

    ps = [fixed_sampling_test(Endpoint(uniform), 0.05, samples=n, prefix_words=0, max_prob=eps).p_value for _ in range(400)]
    assert np.mean(np.array(ps) <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 400)


def test_cache_test_flags_a_cache_augmented_sampler_only():
    toy = Toy("cache", ttl=0.15)
    cached = cache_test(_ep(toy), 1e-3, rounds=8, burst=4, wait=0.2, permutations=1999)
    assert cached.decision, cached
    for mark in ("none", "fixed", "exp"):  # no memory between requests: the answers of a burst are exchangeable
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
    from wmkit.forensics.probe import score_cache

    with pytest.raises(InputError, match="permutations"):  # a report from the other side cannot ask for 1e9 draws
        score_cache([["a", "b"], ["a", "b"]], 0.01, permutations=10**9)


class _Api:
    """A loopback HTTP server answering /v1/completions from a :class:`Toy` (or breaking on purpose)."""

    def __init__(self, toy: Toy, break_after: int | None = None, shape_ok: bool = True) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        state = {"calls": 0}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state["calls"] += 1
                if break_after is not None and state["calls"] > break_after:
                    self.send_response(500)
                    self.end_headers()
                    return
                texts = toy(body["prompt"], body.get("n", 1), body["max_tokens"], body["temperature"])
                answer = {"choices": [{"text": t, "index": i} for i, t in enumerate(texts)]} if shape_ok else {"ok": 1}
                raw = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_wm_probe_over_http_json_lines_summary_and_errors():
    import json

    from typer.testing import CliRunner

    from wmkit.cli.main import app

    runner = CliRunner()
    api = _Api(Toy("fixed"))
    try:
        r = runner.invoke(app, ["probe", "--api", api.url, "--tests", "fixed-sampling,cache-augmented", "--wait", "0",
                                "--rounds", "4", "--burst", "3", "--json"])
        assert r.exit_code == 0, r.output
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert [x.get("family") for x in rows[:2]] == ["fixed-sampling", "cache-augmented"]
        assert rows[-1]["summary"] and rows[-1]["present"] and rows[-1]["family"] == "fixed-sampling"
        assert rows[-1]["queries"] == 100 + 12
    finally:
        api.close()
    broken = _Api(Toy("fixed"), break_after=3)
    try:  # the API dies after the fixed-sampling test's requests: its row is kept, exit 2
        r = runner.invoke(app, ["probe", "--api", broken.url, "--tests", "fixed-sampling,red-green", "--per-request", "50"])
        assert r.exit_code == 2
        rows = [json.loads(x) for x in r.stdout.splitlines()]
        assert "p_value" in rows[0] and rows[1]["partial"] and "HTTP 500" in rows[1]["stopped"]
        assert "partial run" in r.stderr
    finally:
        broken.close()
    wrong = _Api(Toy(), shape_ok=False)
    try:
        r = runner.invoke(app, ["probe", "--api", wrong.url, "--tests", "fixed-sampling"])
        assert r.exit_code == 2 and "not an OpenAI completion" in r.stderr
    finally:
        wrong.close()
    r = runner.invoke(app, ["probe", "--api", "http://127.0.0.1:1", "--tests", "fixed-sampling"])
    assert r.exit_code == 2 and "request failed" in r.stderr
    r = runner.invoke(app, ["probe", "--api", "ftp://x", "--tests", "fixed-sampling"])
    assert r.exit_code == 2 and "http(s)://" in r.stderr
    r = runner.invoke(app, ["probe", "--api", "http://127.0.0.1:1", "--tests", "bogus"])
    assert r.exit_code == 2 and "families are" in r.stderr


@pytest.mark.slow
def test_probe_against_wm_serve_on_the_default_lm(default_lm):
    """The real thing, in process: wm serve's app around SmolLM2 with kgw is found by the red-green
    test, a vLLM-style Gumbel server by the fixed-sampling test, and the unmarked server by neither
    (benchmarks/probe.py runs every scheme at the full budget)."""
    from fastapi.testclient import TestClient

    from wmkit.engine import Generator
    from wmkit.keys import SecretKey
    from wmkit.server.completions import create_app
    from wmkit.watermark.text import make_scheme

    lm, tok = default_lm

    def endpoint(scheme):
        client = TestClient(create_app(Generator(lm, tok, scheme)))
        calls = iter(range(10**6))

        def sample(prompt, n, max_tokens, temperature):  # seeded requests: the same answers on every run
            r = client.post("/v1/completions", json={"prompt": prompt, "n": n, "max_tokens": max_tokens,
                                                      "temperature": temperature, "seed": 1000 * next(calls)})
            assert r.status_code == 200, r.text
            return [c["text"] for c in r.json()["choices"]]

        return Endpoint(sample, per_request=64)

    kgw = make_scheme("kgw", SecretKey(bytes(range(32))))
    assert red_green_test(endpoint(kgw), 1e-3, samples=24).decision
    plain = endpoint(None)
    assert not red_green_test(plain, 1e-3, samples=24).decision
    vllm = make_scheme("vllm-gumbel", 0x5EED_1234_ABCD_0042)
    assert fixed_sampling_test(endpoint(vllm), 1e-3, samples=100).decision
    assert not fixed_sampling_test(plain, 1e-3, samples=100).decision


def test_wm_evidence_probe_is_rechecked_from_its_answers_without_the_api(tmp_path):
    """The report records every answer; wm evidence check recomputes each family's p-value from them
    (no key, no API), and an edited answer, figure or page is caught."""
    import json

    from typer.testing import CliRunner

    from wmkit.cli.main import app

    runner = CliRunner()
    api = _Api(Toy("fixed"))
    try:
        r = runner.invoke(app, ["evidence", "probe", "--api", api.url, "-o", str(tmp_path / "ev"), "--tests",
                                "fixed-sampling,cache-augmented", "--wait", "0", "--rounds", "4", "--burst", "3", "--json"])
    finally:
        api.close()
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["report"].endswith("report.json")
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["family"] == "probe" and report["key"] is None
    assert [x["family"] for x in report["results"]] == ["fixed-sampling", "cache-augmented", "summary"]
    assert report["results"][-1]["present"] and report["results"][-1]["strongest"] == "fixed-sampling"
    assert "Holm-adjusted" in (tmp_path / "ev" / "report.html").read_text()
    ok = runner.invoke(app, ["evidence", "check", str(tmp_path / "ev" / "report.json")])
    assert ok.exit_code == 0 and "every figure matches" in ok.stderr, ok.output
    # a figure edited in the report: the recomputation disagrees
    edited = dict(report, results=[dict(report["results"][0], p_value=0.5), *report["results"][1:]])
    (tmp_path / "ev" / "report.json").write_text(json.dumps(edited))
    bad = runner.invoke(app, ["evidence", "check", str(tmp_path / "ev" / "report.json")])
    assert bad.exit_code == 1 and "p_value" in bad.stderr
    (tmp_path / "ev" / "report.json").write_text(json.dumps(report))
    # an answer edited: the input's SHA-256 no longer matches
    answers = tmp_path / "ev" / "answers.json"
    answers.write_text(answers.read_text().replace("w", "v", 1))
    bad = runner.invoke(app, ["evidence", "check", str(tmp_path / "ev" / "report.json")])
    assert bad.exit_code == 2 and "SHA-256" in bad.stderr
    r = runner.invoke(app, ["evidence", "probe", "--api", "http://127.0.0.1:1"])
    assert r.exit_code == 2 and "-o NEW_FOLDER" in r.stderr
    r = runner.invoke(app, ["evidence", "probe", "--api", "http://127.0.0.1:1", "-o", str(tmp_path / "ev")])
    assert r.exit_code == 2 and "already exists" in r.stderr


def test_rescore_gives_the_measured_figures():
    from wmkit.forensics.probe import rescore

    answers: dict = {}
    rows = probe(_ep(Toy("kgw")), 1e-3, ["red-green", "fixed-sampling", "cache-augmented"],
                 {"red-green": {"samples": 16}, "cache-augmented": {"wait": 0.0, "rounds": 4, "burst": 3}}, answers)
    for row in rows[:-1]:
        again = rescore(row, answers[row["family"]], 1e-3)
        assert again.p_value == row["p_value"] and again.statistic == row["statistic"]
