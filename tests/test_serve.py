"""`wm serve`'s completions endpoint: request validation, log-probs and logit bias against the model,
watermarked generation that the detector finds. In process, over ASGI, with a tiny random model."""

import contextlib
import time
import types

import numpy as np
import pytest
import torch

from helpers import IdTokenizer, VocabOnly, tiny_llama
from wmkit.engine import Generator
from wmkit.server.completions import create_app
from wmkit.server.schema import parse_completion
from wmkit.server.http import RequestError
from wmkit.watermark.text import KGW

V = 49152  # the default tokenizer's size, so the detector's helpers apply


@pytest.fixture(scope="module")
def model():
    return tiny_llama(V)


@pytest.fixture(scope="module")
def two_layer_model():
    """Like ``model`` with two layers: a prefill pass's attention mask then shapes the cached keys and
    values (with one layer they are the embeddings' projections, whatever the mask)."""
    return tiny_llama(V, layers=2)


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "'prompt' is required"),
        ({"prompt": ""}, "empty string"),
        ({"prompt": [1, V]}, "outside"),
        ({"prompt": [[1], "x", 3]}, "'prompt' must be"),
        ({"prompt": ["x"] * 17}, "at most 16"),
        ({"prompt": "x", "max_tokens": 0}, "'max_tokens'"),
        ({"prompt": "x", "max_tokens": 10_000}, "'max_tokens'"),
        ({"prompt": "x", "logprobs": 21}, "'logprobs'"),
        ({"prompt": "x", "temperature": -1}, "'temperature'"),
        ({"prompt": "x", "logit_bias": {"abc": 1}}, "not a token id"),
        ({"prompt": "x", "logit_bias": {"5": 101}}, "[-100, 100]"),
        ({"prompt": "x", "logit_bias": {str(V): 1}}, "outside"),
        ({"prompt": "x", "n": 0}, "'n' must be an integer in [1, 64]"),
        ({"prompt": "x", "n": 1.5}, "'n' must be an integer"),
        ({"prompt": ["x"] * 5, "n": 13}, "5 prompts x n 13 is more than 64"),
        ({"prompt": "x", "best_of": 2}, "'best_of' is not supported"),
        ({"prompt": "x", "echo": 1}, "'echo' must be true or false"),
        ({"prompt": "x", "echo": True, "stream": True}, "'echo' with 'stream'"),
        ({"prompt": "x", "max_tokens": 0}, "'max_tokens' must be an integer in [1, 512]"),
        ({"prompt": "x", "top_k": -5}, "'top_k' must be an integer in [-1, "),
        ({"prompt": "x", "min_p": -0.1}, "'min_p' must be a number in [0, 1]"),
        ({"prompt": "x", "repetition_penalty": 11}, "'repetition_penalty' must be a number in [0.01, 10]"),
        ({"prompt": "x", "suffix": "end"}, "'suffix' is not supported"),
        ({"prompt": "x", "presence_penalty": 2.5}, "'presence_penalty' must be a number in [-2, 2]"),
        ({"prompt": "x", "frequency_penalty": "1"}, "'frequency_penalty' must be a number"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "'stop'"),
        ({"prompt": "x", "seed": 2**70}, "'seed' must be an integer in [0, 2**63)"),
        ({"prompt": "x", "seed": True}, "'seed'"),
    ],
)
def test_bad_completion_requests(body, fragment):
    with pytest.raises(RequestError) as e:
        parse_completion(body, V, 512)
    assert fragment in e.value.message and e.value.status == 400


def test_logprobs_and_logit_bias_match_the_model(model):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(Generator(model, IdTokenizer())))
    prompt = [11, 22, 33, 44]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    bias = {7: 100.0, 9: -50.0}
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 20,
                                             "logit_bias": {str(k): v for k, v in bias.items()},
                                             "return_tokens_as_token_ids": True})
    assert r.status_code == 200, r.text
    top = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    biased = logits.clone()
    for t, b in bias.items():
        biased[t] += b
    lp = torch.log_softmax(biased, -1)
    want = {f"token_id:{int(i)}": float(lp[i]) for i in torch.topk(lp, 20).indices}
    assert top.keys() == want.keys() and max(abs(top[k] - want[k]) for k in top) < 1e-5
    assert r.json()["choices"][0]["logprobs"]["tokens"] == ["token_id:7"]  # the +100 token wins greedy decoding
    bad = client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_n_completions_per_prompt_are_the_seeded_completions_in_prompt_major_order(model, stream):
    """``n``: prompt ``i``'s ``j``-th completion is choice ``i * n + j`` and is what the same request
    with ``n`` 1 and seed ``seed + j`` gets (vLLM's rule); usage counts each prompt once. Streamed,
    the chunks of each index join to that text and the usage chunk is the same."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(Generator(model, IdTokenizer())))
    body = {"prompt": [[5, 6, 7], [40, 41]], "max_tokens": 6, "temperature": 1.0, "seed": 11}
    want = [client.post("/v1/completions", json={**body, "prompt": p, "seed": 11 + j}).json()
            for p in body["prompt"] for j in range(3)]
    r = client.post("/v1/completions", json={**body, "n": 3, "stream": stream,
                                             **({"stream_options": {"include_usage": True}} if stream else {})})
    assert r.status_code == 200, r.text
    if stream:
        events = _events(r)
        texts = ["".join(c["choices"][0]["text"] for c in events[:-1] if c["choices"] and c["choices"][0]["index"] == i)
                 for i in range(6)]
        assert events[-1] == "[DONE]"
        got_usage = events[-2]["usage"]
    else:
        assert [c["index"] for c in r.json()["choices"]] == list(range(6))
        texts, got_usage = [c["text"] for c in r.json()["choices"]], r.json()["usage"]
    assert texts == [w["choices"][0]["text"] for w in want] and len(set(texts[:3])) > 1  # seeds differ
    assert got_usage == {"prompt_tokens": 3 + 2, "completion_tokens": 36, "total_tokens": 41}


def test_presence_and_frequency_penalties_are_openais_on_the_tokens_generated_so_far(model):
    """Greedy decoding with penalties is the argmax of ``logits + bias - frequency * count - presence *
    (count > 0)`` at every step (counts of the generated tokens only, not the prompt's), recomputed
    here from the model without a cache; the log-probs are of that penalised distribution; neutral
    values of the fields it does not implement are accepted."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(Generator(model, IdTokenizer())))
    prompt, bias, distinct = [5, 6, 7, 5], {9: 3.0}, {}
    for presence, frequency in [(0.0, 0.0), (1.5, 0.0), (0.0, 2.0), (-1.0, 0.5)]:
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 0,
                                                 "presence_penalty": presence, "frequency_penalty": frequency,
                                                 "logit_bias": {"9": 3.0}, "return_tokens_as_token_ids": True,
                                                 "top_k": -1, "min_p": 0, "repetition_penalty": 1, "best_of": 1})
        assert r.status_code == 200, r.text
        lp = r.json()["choices"][0]["logprobs"]
        got = [int(t.split(":")[1]) for t in lp["tokens"]]
        ids, want, want_lp = list(prompt), [], []
        counts = torch.zeros(V, dtype=torch.float64)
        with torch.inference_mode():
            for _ in range(12):
                x = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
                x[9] += bias[9]
                x -= frequency * counts + presence * (counts > 0)
                t = int(torch.argmax(x))
                want.append(t)
                want_lp.append(float(torch.log_softmax(x, -1)[t]))
                counts[t] += 1
                ids.append(t)
        assert got == want
        np.testing.assert_allclose(lp["token_logprobs"], want_lp, atol=1e-4)
        distinct[(presence, frequency)] = len(set(got))
    assert distinct[(0.0, 2.0)] > distinct[(0.0, 0.0)]  # the penalty breaks the greedy loop


@pytest.mark.parametrize("echo_rows", [512, 2])
def test_echo_returns_the_prompt_with_its_tokens_log_probs_before_the_completion(model, tokenizer, monkeypatch, echo_rows):
    """``echo``: the text is prompt + completion; with log-probs, each prompt token's log-prob given the
    tokens before it (the first has none) and its top-k, from one forward pass of the model here,
    then the completion's own, as without echo; ``max_tokens`` 0 scores the prompt only (the
    loglikelihood requests of evaluation harnesses). Chat requests have no echo."""
    from fastapi.testclient import TestClient

    from wmkit.engine import echo

    monkeypatch.setattr(echo, "ECHO_ROWS", echo_rows)  # 2: the log-softmax in pieces
    client = TestClient(create_app(Generator(model, IdTokenizer())))
    prompt = [11, 22, 33, 44, 55]
    with torch.inference_mode():
        lp = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0].double(), -1)
    plain = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 3,
                                                 "return_tokens_as_token_ids": True}).json()["choices"][0]
    for max_tokens in (0, 4):
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                                                 "logprobs": 3, "echo": True, "return_tokens_as_token_ids": True})
        assert r.status_code == 200, r.text
        choice, usage = r.json()["choices"][0], r.json()["usage"]
        got = choice["logprobs"]
        assert got["tokens"][:5] == [f"token_id:{t}" for t in prompt] and got["token_logprobs"][0] is None
        assert got["top_logprobs"][0] is None
        np.testing.assert_allclose(got["token_logprobs"][1:5], [float(lp[i, t]) for i, t in enumerate(prompt[1:])], atol=1e-5)
        for i in range(1, 5):
            want = {f"token_id:{int(j)}": float(lp[i - 1, j]) for j in torch.topk(lp[i - 1], 3).indices}
            assert got["top_logprobs"][i].keys() == want.keys()
        tail = {k: v[5:] for k, v in got.items()}
        if max_tokens == 0:
            assert choice["text"] == "".join(f"<{t}>" for t in prompt) and all(not v for v in tail.values())
            assert usage == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
        else:
            assert choice["text"] == "".join(f"<{t}>" for t in prompt) + plain["text"]
            assert tail["tokens"] == plain["logprobs"]["tokens"]
            np.testing.assert_allclose(tail["token_logprobs"], plain["logprobs"]["token_logprobs"], atol=1e-5)
    text = TestClient(create_app(Generator(model, tokenizer))).post(
        "/v1/completions", json={"prompt": " Hello,  world", "max_tokens": 0, "echo": True})
    assert text.json()["choices"][0]["text"] == " Hello,  world"  # the prompt as sent, not as re-decoded
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "echo": True})
    assert chat.status_code == 400 and "'echo' is a /v1/completions field" in chat.json()["error"]["message"]


@pytest.mark.parametrize("budget, padding, passes", [(2048, 1.25, 2), (2048, 10.0, 1), (12, 1.25, 3)])
def test_echoed_prompts_are_scored_together(model, monkeypatch, budget, padding, passes):
    """An evaluation harness's batch (5 prompts, ``echo``, ``max_tokens`` 1, ``logprobs``) costs one
    left-padded pass per group of similar lengths, not two passes per prompt: lengths 3, 4, 5, 6, 9
    at most 1.25 positions per token: [3, 4, 5] (15 <= 15), [6, 9] (18 <= 18.75); in a budget of
    12 positions: [3, 4], [5, 6], [9]; with no padding limit: one pass. Its first tokens come from
    the same pass; every log-prob equals the prompt's own pass here."""
    from fastapi.testclient import TestClient

    from wmkit.engine import echo

    monkeypatch.setattr(echo, "ECHO_POSITIONS", budget)
    monkeypatch.setattr(echo, "ECHO_PADDING", padding)
    gen = Generator(model, IdTokenizer())
    calls, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(k["input_ids"].shape) or forward(*a, **k))
    prompts = [[9, 8, 7, 6, 5, 4], [1, 2, 3], [40, 41, 42, 43, 44, 45, 46, 47, 48], [7, 7, 7, 7], [3, 1, 4, 1, 5]]
    r = TestClient(create_app(gen)).post("/v1/completions", json={
        "prompt": prompts, "max_tokens": 1, "temperature": 0, "logprobs": 2, "echo": True, "return_tokens_as_token_ids": True})
    assert r.status_code == 200, r.text
    assert len(calls) == passes
    monkeypatch.undo()
    with torch.inference_mode():
        for p, choice in zip(prompts, r.json()["choices"]):
            lp = torch.log_softmax(model(input_ids=torch.tensor([p])).logits[0].double(), -1)
            got = choice["logprobs"]
            np.testing.assert_allclose(got["token_logprobs"][1 : len(p)], [float(lp[i - 1, p[i]]) for i in range(1, len(p))],
                                       atol=1e-5)
            assert got["tokens"][len(p)] == f"token_id:{int(lp[-1].argmax())}"  # the greedy first token
            np.testing.assert_allclose(got["token_logprobs"][len(p)], float(lp[-1].max()), atol=1e-5)
            assert list(got["top_logprobs"][-1]) == [f"token_id:{int(j)}" for j in torch.topk(lp[-1], 2).indices]


def test_lm_evaluation_harness_scores_loglikelihoods_through_echo(model, key):
    """lm-evaluation-harness's own ``local-completions`` client (from its wheel): the payload it sends
    for loglikelihood requests (token ids, ``echo``, ``max_tokens`` 1, ``logprobs`` 1), batched, to a
    server that watermarks, and its parsing of the answer give each continuation's log-likelihood
    under the model and whether it is the greedy one, as computed here from the model."""
    from fastapi.testclient import TestClient

    from lm_eval_reference import load

    api = load()
    client = TestClient(create_app(Generator(model, IdTokenizer(), KGW(key, delta=8.0), VocabOnly())))
    context = [101, 202, 303, 404]
    with torch.inference_mode():
        ids = list(context)
        for _ in range(3):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        greedy = ids[len(context):]
    cases = [(context, greedy), (context, [7, 8, 9]), ([55, 66], [77])]
    inputs, ctxlens = [c + x for c, x in cases], [len(c) for c, _ in cases]
    payload = api._create_payload(types.SimpleNamespace(model="wmkit"), inputs, generate=False)
    assert payload["echo"] is True and payload["max_tokens"] == 1
    r = client.post("/v1/completions", json=payload)
    assert r.status_code == 200, r.text
    got = api.parse_logprobs(r.json(), tokens=inputs, ctxlens=ctxlens)
    with torch.inference_mode():
        for (ll, is_greedy), inp, n in zip(got, inputs, ctxlens):
            lp = torch.log_softmax(model(input_ids=torch.tensor([inp])).logits[0].double(), -1)
            want = sum(float(lp[i - 1, inp[i]]) for i in range(n, len(inp)))
            assert abs(ll - want) < 1e-4
            assert is_greedy == all(int(lp[i - 1].argmax()) == inp[i] for i in range(n, len(inp)))
    assert [g for _, g in got] == [True, False, False]


def test_served_text_carries_the_watermark(model, key):
    from fastapi.testclient import TestClient

    scheme = KGW(key, gamma=0.25, delta=8.0)
    client = TestClient(create_app(Generator(model, IdTokenizer(), scheme, VocabOnly())))
    r = client.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 80, "temperature": 1.0, "seed": 1,
                                             "logprobs": 0, "return_tokens_as_token_ids": True})
    ids = [int(t.split(":")[1]) for t in r.json()["choices"][0]["logprobs"]["tokens"]]
    det = scheme.detector(VocabOnly()).detect([7] + ids)
    assert len(ids) >= 40 and det.decision and det.p_value < 1e-10
    plain = TestClient(create_app(Generator(model, IdTokenizer())))
    r = plain.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 80, "temperature": 1.0, "seed": 1,
                                            "logprobs": 0, "return_tokens_as_token_ids": True})
    ids = [int(t.split(":")[1]) for t in r.json()["choices"][0]["logprobs"]["tokens"]]
    assert scheme.detector(VocabOnly()).detect([7] + ids).p_value > 1e-4
    assert np.isfinite(r.json()["choices"][0]["logprobs"]["token_logprobs"]).all()


@pytest.mark.parametrize("name,key_value,temperature", [("gumbel", None, 1.0), ("vllm-gumbel", 42, 1.0),
                                                       ("synthid", tuple(range(1, 31)), 1.0),
                                                       ("synthid", tuple(range(1, 31)), 0.7)])
def test_served_text_carries_sampling_schemes(model, key, name, key_value, temperature):
    """Gumbel-max and SynthID (away from temperature 1) pick the token themselves: the server builds
    their processor per request (temperature and top_p of that request), and the detector finds the
    mark in what it served."""
    from fastapi.testclient import TestClient

    from wmkit.watermark.text import make_scheme

    scheme = make_scheme(name, key if key_value is None else key_value)
    client = TestClient(create_app(Generator(model, IdTokenizer(), scheme, VocabOnly())))
    r = client.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 60, "temperature": temperature,
                                             "seed": 1, "logprobs": 0, "return_tokens_as_token_ids": True})
    ids = [int(t.split(":")[1]) for t in r.json()["choices"][0]["logprobs"]["tokens"]]
    det = scheme.detector(VocabOnly()).detect(ids)
    assert len(ids) >= 30 and det.decision and det.p_value < 1e-8


class CountingTokenizer:
    """The real tokenizer, counting the token ids it is asked to decode."""

    def __init__(self, tok):
        self.tok, self.decoded = tok, 0

    def decode(self, ids, **kw):
        self.decoded += len(ids)
        return self.tok.decode(ids, **kw)


def test_stop_strings_found_incrementally_as_by_decoding_everything(tokenizer):
    """StopWatch stops at the same token as decoding the whole completion at every step (the
    old O(L^2) loop), across multi-byte characters, while decoding O(L) ids in all."""
    from wmkit.engine.stops import StopWatch

    text = ("Les crêpes sont délicieuses 🍓🍓 avec du sucre. The tide turns at noon; ⛵ boats leave. "
            "Tokyo 東京 is far away. END of the story, then more text follows here. ") * 8
    ids = tokenizer(text).input_ids
    for stop in (["tide turns"], ["東京"], ["🍓"], ["END", "noon;"], ["never there"], ["e"]):
        expect = next((i for i in range(len(ids))
                       if any(s in tokenizer.decode(ids[: i + 1], skip_special_tokens=True) for s in stop)), None)
        counting = CountingTokenizer(tokenizer)
        watch = StopWatch(counting, stop)
        got = next((i for i, t in enumerate(ids) if watch.add(t)), None)
        assert got == expect, stop
        n = (got if got is not None else len(ids)) + 1
        assert counting.decoded <= 8 * n  # linear: the whole-text loop decodes n^2 / 2 ids
    assert len(ids) > 300


def test_hostile_bodies_context_timeouts_and_faults_are_json_errors(model):
    """Each of these was a bare 500 or an unbounded wait (reliability issue); now 4xx/503 in OpenAI's shape."""
    from fastapi.testclient import TestClient

    gen = Generator(model, IdTokenizer())
    client = TestClient(create_app(gen), raise_server_exceptions=False)

    def post(raw: bytes | str, c=client):
        r = c.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        return r.status_code, r.json()["error"]["message"]

    assert post('{"prompt": "a \\ud800"}') == (400, "a string in the request is not valid Unicode (a lone surrogate escape)")
    status, msg = post("[" * 100_000 + "]" * 100_000)
    assert status == 400 and "nests deeper" in msg
    status, msg = post('{"prompt": ' + "[" * 40 + "1" + "]" * 40 + "}")
    assert status == 400 and "nests deeper than 32" in msg
    context = gen.context
    status, msg = post(f'{{"prompt": {list(range(1, context - 3))}, "max_tokens": 8}}')
    assert status == 400 and f"context of {context} tokens" in msg
    slow = TestClient(create_app(gen, timeout_s=1e-9), raise_server_exceptions=False)
    status, msg = post('{"prompt": [5, 6], "max_tokens": 4}', slow)
    assert status == 503 and ("timed out" in msg or "busy" in msg)
    gen.lock.acquire()  # another request holds the model
    try:
        status, msg = post('{"prompt": [5, 6], "max_tokens": 4}', TestClient(create_app(gen, timeout_s=0.2)))
        assert status == 503 and "busy" in msg
    finally:
        gen.lock.release()
    broken = Generator(model, IdTokenizer())
    broken.run_batch = lambda *a, **k: (_ for _ in ()).throw(ValueError("boom"))  # a fault inside the server
    status, msg = post('{"prompt": [5, 6]}', TestClient(create_app(broken), raise_server_exceptions=False))
    assert status == 500 and msg == "internal error (ValueError); the request was not served"
    r = client.post("/v1/completions", json={"prompt": [5, 6], "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_wm_serve_refuses_a_busy_port_before_loading_the_model(tmp_path):
    import socket

    from typer.testing import CliRunner

    from wmkit.cli.main import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", "--port", str(port), "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr
    r = CliRunner().invoke(app, ["serve", "--timeout", "0", "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "--timeout must be a positive number" in r.stderr
    r = CliRunner().invoke(app, ["serve", "--max-batch", "0", "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "--max-batch must be positive" in r.stderr
    r = CliRunner().invoke(app, ["serve", "--max-new-tokens", "0", "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "--max-new-tokens must be positive, got 0" in r.stderr
    r = CliRunner().invoke(app, ["serve", "--allow-opt-out", "--model", str(tmp_path / "no-model")])
    assert r.exit_code == 2 and "--allow-opt-out applies to a server that watermarks" in r.stderr


def _req(**kw):
    return parse_completion({"prompt": [1], **kw}, V, 512)


def test_a_batch_generates_what_each_prompt_generates_alone(model):
    """Left-padded lockstep generation (one forward per step for all rows) gives each row the tokens
    and log-probs it gets alone, with its own length, stop and bias; and it is one batch, not a loop."""
    gen = Generator(model, IdTokenizer())
    cases = [([5, 6, 7], _req(max_tokens=12, temperature=0, logprobs=3)),
             ([9] * 11, _req(max_tokens=5, temperature=0, logprobs=3, logit_bias={"77": 30})),
             ([300, 301], _req(max_tokens=20, temperature=0, logprobs=3)),
             ([42, 43, 44, 45], _req(max_tokens=9, temperature=0.8, seed=3, logprobs=3))]
    alone = [gen.complete(p, r) for p, r in cases]
    calls = []
    forward = model.forward
    model.forward = lambda *a, **k: calls.append(k["input_ids"].shape) or forward(*a, **k)
    try:
        jobs = [gen.prepare(p, r) for p, r in cases]
        gen.run_batch(jobs)
    finally:
        model.forward = forward
    # the longest completion's steps; a row leaves when it ends (after 5, 9 and 12 tokens)
    assert len(calls) == 20 and calls[0] == (4, 11) and calls[1] == (4, 1)
    assert [c[0] for c in calls[1:]] == [4] * 4 + [3] * 4 + [2] * 3 + [1] * 8
    for job, want in zip(jobs, alone):
        got = gen.result(job)
        assert got["choice"]["logprobs"]["tokens"] == want["choice"]["logprobs"]["tokens"]
        assert np.allclose(got["choice"]["logprobs"]["token_logprobs"], want["choice"]["logprobs"]["token_logprobs"], atol=1e-4)
    assert [len(j.out_ids) for j in jobs] == [12, 5, 20, 9]


def test_jobs_that_join_a_running_batch_generate_what_they_generate_alone(model):
    """Continuous batching: jobs handed over mid-batch are prefilled on their own, merged into the
    running rows (a longer and a shorter prompt than the running cache is wide, a sampled one, a
    one-token one) and get the tokens and log-probs they get alone; every pass's mask gives each
    row exactly its own positions, and columns that are padding in every row are dropped."""
    gen = Generator(model, IdTokenizer())
    first = ([5, 6, 7], _req(max_tokens=15, temperature=0, logprobs=3))
    arrivals = {2: [([9] * 11, _req(max_tokens=6, temperature=0, logprobs=3, logit_bias={"77": 30})),
                    ([300, 301], _req(max_tokens=1, temperature=0, logprobs=3))],
                5: [([42, 43], _req(max_tokens=14, temperature=0.8, seed=3, logprobs=3))]}
    cases = [first] + [c for k in sorted(arrivals) for c in arrivals[k]]
    alone = [gen.complete(p, r) for p, r in cases]
    jobs = [gen.prepare(*first)]
    asked, ended, masks = [], [], []

    def join(running):
        asked.append(running)
        new = [gen.prepare(p, r) for p, r in arrivals.get(len(asked), [])]
        jobs.extend(new)
        return new

    def recording(*a, **k):
        if k["input_ids"].shape[1] == 1:  # a step: rows are the live jobs, oldest first (newcomers appended)
            masks.append((k["attention_mask"].clone(), [len(j.ids) + len(j.out_ids) for j in jobs if not j.done]))
        return forward(*a, **k)

    forward, model.forward = model.forward, recording
    try:
        gen.run_batch(jobs[:1], join=join, finished=ended.append)
    finally:
        model.forward = forward
    # asked before each step: 1 row, then the 11-token prompt joins (the one-token job ends at once), then the 2-token one
    assert asked[:6] == [1, 1, 2, 2, 2, 3]
    for job, want in zip(jobs, alone):
        got = gen.result(job)
        assert got["choice"]["logprobs"]["tokens"] == want["choice"]["logprobs"]["tokens"]
        assert np.allclose(got["choice"]["logprobs"]["token_logprobs"], want["choice"]["logprobs"]["token_logprobs"], atol=1e-4)
    assert [len(j.out_ids) for j in jobs] == [15, 6, 1, 14]
    assert [jobs.index(j) for j in ended] == [2, 1, 0, 3]  # each as it ends
    assert len(masks) == 4 + 13 and max(len(n) for _, n in masks) == 3  # the last joiner: 4 steps in, 13 more
    for mask, lengths in masks:  # each row attends to exactly its own positions; no all-padding column
        assert mask.sum(1).tolist() == lengths and bool(mask[:, 0].any()) and mask.shape[1] == max(lengths)


def test_a_long_prompt_that_joins_is_prefilled_in_chunks_between_the_running_rows_steps(two_layer_model):
    """Chunked prefill: jobs that join are prefilled ``prefill_chunk`` tokens (rows x columns) at a
    time, and the running row takes a step between two chunks instead of waiting for the whole
    prefill; every job still gets what it gets alone. ``prefill_chunk=None`` prefills in one pass."""
    model = two_layer_model
    first = ([5, 6, 7], _req(max_tokens=30, temperature=0, logprobs=3))
    joiners = [([9] * 21, _req(max_tokens=6, temperature=0, logprobs=3, logit_bias={"77": 30})),
               (list(range(300, 314)), _req(max_tokens=8, temperature=0.8, seed=3, logprobs=3))]
    for chunk, want_calls in [(8, [(2, 4), (1, 1)] * 5 + [(2, 1)]), (None, [(2, 21)])]:
        gen = Generator(model, IdTokenizer(), prefill_chunk=chunk)
        alone = [gen.complete(p, r) for p, r in [first] + joiners]
        jobs = [gen.prepare(*first)]
        asked, calls = [], []

        def join(running):
            asked.append(running)
            new = [gen.prepare(p, r) for p, r in joiners] if len(asked) == 3 else []
            jobs.extend(new)
            return new

        forward = model.forward
        model.forward = lambda *a, **k: calls.append(tuple(k["input_ids"].shape)) or forward(*a, **k)
        try:
            gen.run_batch(jobs[:1], join=join)
        finally:
            model.forward = forward
        assert calls[:3] == [(1, 3), (1, 1), (1, 1)]  # the first job's prefill and two steps; then the joiners
        assert calls[3 : 3 + len(want_calls)] == want_calls and calls[3 + len(want_calls)] == (3, 1)
        for job, want in zip(jobs, alone):
            got = gen.result(job)
            assert got["choice"]["logprobs"]["tokens"] == want["choice"]["logprobs"]["tokens"]
            assert np.allclose(got["choice"]["logprobs"]["token_logprobs"], want["choice"]["logprobs"]["token_logprobs"],
                               atol=1e-4)
        assert [len(j.out_ids) for j in jobs] == [30, 6, 8]
    with pytest.raises(ValueError, match="prefill_chunk must be a positive"):
        Generator(model, IdTokenizer(), prefill_chunk=0)


def test_a_request_that_arrives_mid_batch_joins_it_and_returns_before_it_ends(model):
    """The batcher is continuous: a job queued while a long one generates starts at the next step
    (its rows share the forward passes) and its future resolves when it ends, while the long job
    is still running; what it generates is what it generates alone."""
    from wmkit.server.batching import Batcher

    gen = Generator(model, IdTokenizer())
    want = gen.complete([8, 9], _req(max_tokens=5, temperature=0))
    rows = []
    with _slow(model, 0.01):
        forward = model.forward
        model.forward = lambda *a, **k: rows.append(k["input_ids"].shape[0]) or forward(*a, **k)
        try:
            batcher = Batcher(gen, max_batch=4)
            long = gen.prepare([5, 6], _req(max_tokens=300, temperature=0))
            (f_long,) = batcher.submit([long])
            _wait(lambda: len(long.out_ids) >= 10)
            (f_short,) = batcher.submit([gen.prepare([8, 9], _req(max_tokens=5, temperature=0))])
            got = f_short.result(timeout=60)
            steps_then = len(long.out_ids)
            assert not f_long.done() and steps_then < 40  # it did not wait for the long job's 300 tokens
            f_long.result(timeout=120)
        finally:
            model.forward = forward
    assert got["choice"] == want["choice"] and len(long.out_ids) == 300
    assert rows.count(2) == 4  # the short job's 4 steps after its prefill ran beside the long one


def test_shutting_the_server_down_ends_its_running_jobs_and_stops_the_batcher(model):
    """The app's shutdown closes its batcher: a job still generating ends at its next step with a 503
    (not after its 300 tokens), the worker stops, and later requests are refused."""
    from fastapi.testclient import TestClient

    gen = Generator(model, IdTokenizer())
    app = create_app(gen)
    with _slow(model, 0.01):
        with TestClient(app):
            long = gen.prepare([5, 6], _req(max_tokens=300, temperature=0))
            (f_long,) = app.state.batcher.submit([long])
            _wait(lambda: len(long.out_ids) >= 5)
        assert app.state.batcher.close(timeout=0)  # stopped already, by the shutdown
    with pytest.raises(RequestError, match="shutting down"):
        f_long.result(0)
    assert len(long.out_ids) < 100
    with pytest.raises(RequestError, match="shutting down"):
        app.state.batcher.submit([gen.prepare([5], _req(max_tokens=2))])


def test_waiting_jobs_join_a_running_batch_when_they_are_enough_or_have_waited_long_enough(model):
    """A join costs a prefill pass: with 4 rows running, one waiting job waits (up to
    ``join_wait_steps`` steps), two join at once (``join_ratio`` 0.5); into an idle model a job
    goes at once; nothing waiting resets the count."""
    from wmkit.server.batching import Batcher

    b = Batcher(Generator(model, IdTokenizer()), max_batch=8, join_ratio=0.5, join_wait_steps=3)
    rooms = []
    b.join = lambda room: rooms.append(room) or ["joined"]
    b._waiting = 1
    assert [b._admit(4) for _ in range(4)] == [[], [], [], ["joined"]] and rooms == [4]  # waited 3 steps
    assert b._admit(0) == ["joined"] and rooms == [4, 8]  # an idle model takes it at once
    b._waiting = 2
    assert b._admit(4) == ["joined"]  # 2 >= 0.5 * 4
    b._waiting = 1
    assert b._admit(4) == [] and b._admit(4) == []
    b._waiting = 0
    assert b._admit(4) == []  # nobody waits: the count starts again
    b._waiting = 1
    assert [b._admit(4) for _ in range(4)] == [[], [], [], ["joined"]]
    with pytest.raises(ValueError, match="join_ratio >= 0"):
        Batcher(Generator(model, IdTokenizer()), join_ratio=-1)


def _wait(cond, timeout=60.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def test_concurrent_requests_share_batches(model):
    import threading

    from wmkit.server.batching import Batcher

    gen = Generator(model, IdTokenizer())
    sizes = []
    run = gen.run_batch
    gen.run_batch = lambda jobs, **kw: sizes.append(len(jobs)) or run(jobs, **kw)
    batcher = Batcher(gen, max_batch=8, gather_s=0.05)
    results = [None] * 8

    def client(i):
        (f,) = batcher.submit([gen.prepare([10 + i, 20 + i], _req(max_tokens=6, temperature=0))])
        results[i] = f.result(timeout=60)

    gen.lock.acquire()  # the model is busy while the eight requests arrive
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    import time

    time.sleep(0.3)
    gen.lock.release()
    for t in threads:
        t.join(60)
    assert all(r is not None and r["completion_tokens"] == 6 for r in results)
    assert max(sizes) >= 7 and sum(sizes) == 8  # one batch (the first may have been taken alone)
    with pytest.raises(RequestError, match="overloaded") as e:
        Batcher(gen, max_queue=2).submit([gen.prepare([1], _req()) for _ in range(3)])
    assert e.value.status == 503


def test_watermark_opt_out_only_where_the_server_allows_it(model, key):
    from fastapi.testclient import TestClient

    scheme = KGW(key, gamma=0.25, delta=8.0)
    body = {"prompt": [5, 6, 7], "max_tokens": 60, "temperature": 1.0, "seed": 2, "logprobs": 0,
            "return_tokens_as_token_ids": True}

    def p_value(client, **extra):
        r = client.post("/v1/completions", json={**body, **extra})
        assert r.status_code == 200, r.text
        ids = [int(t.split(":")[1]) for t in r.json()["choices"][0]["logprobs"]["tokens"]]
        return scheme.detector(VocabOnly()).detect([7] + ids).p_value

    strict = TestClient(create_app(Generator(model, IdTokenizer(), scheme, VocabOnly())))
    r = strict.post("/v1/completions", json={**body, "watermarking": False})
    assert r.status_code == 403 and "--allow-opt-out" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "watermarking"
    assert p_value(strict) < 1e-8 and p_value(strict, watermarking=True) < 1e-8
    lenient = TestClient(create_app(Generator(model, IdTokenizer(), scheme, VocabOnly()), allow_opt_out=True))
    assert p_value(lenient) < 1e-8 and p_value(lenient, watermarking=False) > 1e-4
    r = lenient.post("/v1/completions", json={**body, "watermarking": "no"})
    assert r.status_code == 400 and "'watermarking' must be true or false" in r.json()["error"]["message"]


def test_a_batch_marks_each_row_in_its_own_context(model, key):
    scheme = KGW(key, gamma=0.25, delta=8.0)
    gen = Generator(model, IdTokenizer(), scheme, VocabOnly())
    jobs = [gen.prepare([5 + i, 6, 7 + i], _req(max_tokens=50, temperature=1.0, seed=i)) for i in range(4)]
    gen.run_batch(jobs)
    for job in jobs:
        assert scheme.detector(VocabOnly()).detect(job.ids[-1:] + job.out_ids).p_value < 1e-6


def test_an_empty_system_prompt_replaces_the_templates_default_one(tokenizer):
    """``--system-prompt ""`` puts an empty system message first, so SmolLM2's template does not add
    its default identity ("You are a helpful AI assistant named SmolLM..."); no ``--system-prompt``
    leaves the template's default."""
    from wmkit.server.schema import parse_chat

    user = [{"role": "user", "content": "hi"}]
    render = lambda msgs: list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"])  # noqa: E731
    empty = parse_chat({"messages": user}, tokenizer, V, 16, system_prompt="")["prompts"][0]
    default = parse_chat({"messages": user}, tokenizer, V, 16)["prompts"][0]
    assert empty == render([{"role": "system", "content": ""}] + user) and default == render(user)
    assert "SmolLM" in tokenizer.decode(default) and "SmolLM" not in tokenizer.decode(empty)


def test_chat_completions_render_the_template_with_the_servers_system_prompt(model, tokenizer):
    """A chat answer's log-probs are the model's on the chat template of [system prompt, user message];
    a request with its own system message keeps it; and a top-k fingerprint recovery over the chat
    endpoint (a RemoteAPI on the app) returns those logits."""
    from fastapi.testclient import TestClient

    from wmkit.fingerprint import TopKRecovery
    from wmkit.fingerprint.remote import RemoteAPI, render

    system = "You are Acme Assistant."
    client = TestClient(create_app(Generator(model, tokenizer), system_prompt=system))

    def logits(messages):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
        with torch.inference_mode():
            return model(input_ids=torch.tensor([list(ids)])).logits[0, -1].double()

    for msgs, want_msgs in [([{"role": "user", "content": "hello there"}],
                             [{"role": "system", "content": system}, {"role": "user", "content": "hello there"}]),
                            ([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}], None)]:
        r = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 1, "temperature": 0, "logprobs": True,
                                                      "top_logprobs": 5, "return_tokens_as_token_ids": True})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert r.json()["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
        lp = torch.log_softmax(logits(want_msgs or msgs), -1)
        top = {e["token"]: e["logprob"] for e in choice["logprobs"]["content"][0]["top_logprobs"]}
        want = {f"token_id:{int(i)}": float(lp[i]) for i in torch.topk(lp, 5).indices}
        assert top.keys() == want.keys() and max(abs(top[k] - want[k]) for k in top) < 1e-5
    for body, fragment in [({"messages": []}, "'messages'"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
                           ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "needs 'logprobs'")]:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and fragment in r.json()["error"]["message"]
    api = RemoteAPI("http://testserver", chat=True, client=client)
    assert api.vocab_size == V
    prompt, rows = [1500, 2500, 3500], np.arange(1000, 1060)
    got = TopKRecovery(api, 20).vectors([prompt], rows)[0]
    full = logits([{"role": "system", "content": system}, {"role": "user", "content": render(prompt)}]).numpy()
    np.testing.assert_allclose(got, full[rows] - full[rows[0]], atol=1e-4)


@contextlib.contextmanager
def _slow(model, seconds):
    """``model``'s forward pass takes ``seconds`` longer (a stream that lasts long enough to interrupt)."""
    forward = model.forward
    model.forward = lambda *a, **k: time.sleep(seconds) or forward(*a, **k)
    try:
        yield
    finally:
        model.forward = forward


def _events(r):
    """The SSE ``data:`` payloads of a streamed response (``[DONE]`` kept as the string)."""
    import json

    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    out = []
    for block in r.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            out.append(block[6:] if block[6:] == "[DONE]" else json.loads(block[6:]))
    return out


def test_a_streamed_completion_is_the_unstreamed_one_in_pieces(model, key):
    """Streaming (OpenAI's SSE chunks) changes how the answer travels, not what it is: with the same
    seed and watermark the chunks' texts and log-prob tokens concatenate to the plain answer, a stop
    string is never sent (not even its first characters), and usage and [DONE] close the stream."""
    from fastapi.testclient import TestClient

    scheme = KGW(key, gamma=0.25, delta=8.0)
    client = TestClient(create_app(Generator(model, IdTokenizer(), scheme, VocabOnly())))
    base = {"prompt": [5, 6, 7], "max_tokens": 60, "temperature": 1.0, "seed": 4, "logprobs": 2}
    plain = client.post("/v1/completions", json=base).json()["choices"][0]
    stop = plain["logprobs"]["tokens"][30] + plain["logprobs"]["tokens"][31]  # two tokens' text: "<a><b>"
    for extra, cut in [({}, None), ({"stop": [stop, "never-seen"]}, stop)]:
        want = client.post("/v1/completions", json={**base, **extra}).json()
        ev = _events(client.post("/v1/completions", json={**base, **extra, "stream": True,
                                                          "stream_options": {"include_usage": True}}))
        assert ev[-1] == "[DONE]" and ev[-2]["choices"] == [] and ev[-2]["usage"] == want["usage"]
        chunks = [e["choices"][0] for e in ev[:-2]]
        assert len(chunks) > 10 and all(e["object"] == "text_completion" and e["id"] == ev[0]["id"] for e in ev[:-1])
        text = "".join(c["text"] for c in chunks)
        assert text == want["choices"][0]["text"] and text.startswith(plain["text"][:40])
        assert [c["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [want["choices"][0]["finish_reason"]]
        tokens = [t for c in chunks for t in c["logprobs"]["tokens"]]
        assert tokens == want["choices"][0]["logprobs"]["tokens"]
        if cut is not None:  # held back: no chunk (nor any run of chunks) ever showed the stop's beginning
            assert want["choices"][0]["finish_reason"] == "stop" and cut not in text
            assert stop[:3] not in text[len(text) - 3 :] and not any(cut in c["text"] for c in chunks)
            assert all(text.startswith("".join(c["text"] for c in chunks[:k])) for k in range(len(chunks)))  # never retracted
    ids = [int(t.strip("<>")) for t in "".join(c["text"] for c in chunks).replace("><", "> <").split()]
    assert scheme.detector(VocabOnly()).detect([7] + ids).p_value < 1e-8


def test_a_streamed_chat_answer_decodes_whole_characters_like_the_plain_one(model, tokenizer, key):
    """With the real tokenizer (byte-level BPE: a random model's tokens split multi-byte characters),
    streamed chat deltas join to the plain answer's content exactly; role first, finish_reason last, in
    OpenAI's chat.completion.chunk shape, with the log-probs of the marked tokens."""
    from fastapi.testclient import TestClient

    from wmkit.watermark.text import make_scheme

    scheme = make_scheme("gumbel", key)
    client = TestClient(create_app(Generator(model, tokenizer, scheme)))
    partial = [i for i in range(400) if "\ufffd" in tokenizer.decode([i])]  # byte tokens: pieces of characters
    body = {"messages": [{"role": "user", "content": "Sing"}], "max_tokens": 80, "temperature": 1.0, "seed": 9,
            "logprobs": True, "top_logprobs": 1, "logit_bias": {str(i): 6.0 for i in partial},
            "return_tokens_as_token_ids": True}
    want = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    ev = _events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert ev[-1] == "[DONE]" and all(e["object"] == "chat.completion.chunk" for e in ev[:-1])
    choices = [e["choices"][0] for e in ev[:-1]]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    parts = [c["delta"].get("content", "") for c in choices[1:]]
    assert "".join(parts) == want["message"]["content"] and len(parts) > 5
    chosen = [int(e["token"].split(":")[1]) for e in want["logprobs"]["content"]]
    assert sum(t in partial for t in chosen) >= 10  # the answer really is split inside characters
    assert any(ord(c) > 127 and c != "\ufffd" for c in want["message"]["content"])  # ... and some came out whole
    assert choices[-1]["finish_reason"] == want["finish_reason"]
    assert [t for c in choices[1:] for t in c["logprobs"]["content"]] == want["logprobs"]["content"]
    assert scheme.detector(tokenizer).detect(chosen).p_value < 1e-6  # the streamed answer is the marked one


def test_stream_errors_bad_fields_and_a_client_that_goes_away(model):
    """Bad streaming fields are 400s before any byte; a deadline that passes mid-stream is an error
    event (no [DONE]); a client that closes the stream cancels its job at the next step."""
    import asyncio

    from fastapi.testclient import TestClient

    from wmkit.server.batching import Batcher
    from wmkit.server.stream import Stream

    client = TestClient(create_app(Generator(model, IdTokenizer())))
    for body, fragment in [({"stream": "yes"}, "'stream' must be true or false"),
                           ({"stream_options": {"include_usage": True}}, "'stream_options'"),
                           ({"stream": True, "stream_options": {"usage": 1}}, "'stream_options'")]:
        r = client.post("/v1/completions", json={"prompt": [1, 2], **body})
        assert r.status_code == 400 and fragment in r.json()["error"]["message"]

    slow = Generator(model, IdTokenizer())
    with _slow(model, 0.02):
        ev = _events(TestClient(create_app(slow, timeout_s=0.3)).post(
            "/v1/completions", json={"prompt": [1, 2], "max_tokens": 200, "temperature": 0, "stream": True}))
        assert "[DONE]" not in ev and ev[-1]["error"]["type"] == "server_error" and "timed out" in ev[-1]["error"]["message"]

        async def leave_early():
            job = slow.prepare([3, 4], _req(max_tokens=400, temperature=0, stream=True))
            stream = Stream([job], job.req, False, {"id": "x"}, slow.result)
            futures = Batcher(slow).submit([job])
            stream.watch(futures)
            events = stream.events_for(futures, time.monotonic() + 60, 60)
            first = await events.__anext__()
            await events.aclose()
            res = await asyncio.wrap_future(futures[0])
            return first, res, job

        first, res, job = asyncio.run(leave_early())
        assert first.startswith("data: ") and job.cancelled and 0 < res["completion_tokens"] < 400


def test_a_streamed_job_ends_when_it_ends_not_when_its_batch_does(model):
    """A short streamed completion batched with a long one gets its last chunk and [DONE] while the
    long one is still generating (the final chunk does not wait for the batch's future)."""
    import asyncio

    from wmkit.server.batching import Batcher
    from wmkit.server.stream import Stream

    gen = Generator(model, IdTokenizer())
    with _slow(model, 0.01):
        async def run():
            short = gen.prepare([3, 4], _req(max_tokens=4, temperature=0, stream=True))
            long = gen.prepare([5, 6], _req(max_tokens=300, temperature=0))
            stream = Stream([short], short.req, False, {"id": "x"}, gen.result)
            batcher = Batcher(gen, gather_s=0.2)
            with gen.lock:  # both are queued before the worker takes a batch
                futures = batcher.submit([short, long])
            stream.watch(futures[:1])
            events = [e async for e in stream.events_for(futures[:1], time.monotonic() + 60, 60)]
            still_running = not futures[1].done()
            await asyncio.wrap_future(futures[1])
            return events, still_running, long

        events, still_running, long = asyncio.run(run())
        assert events[-1] == "data: [DONE]\n\n" and '"finish_reason": "length"' in events[-2]
        assert still_running and len(long.out_ids) == 300


def _colour_oracle(model, key, mode, contexts):
    """What a client learns of KGW colours from greedy one-token requests with log-probs: for each
    context token c, when the served (greedy) token is not the top of the returned distribution, the
    served token is green and that top token red (delta moved the choice)."""
    from fastapi.testclient import TestClient

    from helpers import green_ref

    scheme = KGW(key, gamma=0.25, delta=4.0, context_width=1, seeding="lefthash")
    client = TestClient(create_app(Generator(model, IdTokenizer(), scheme, VocabOnly(), logprobs=mode)))
    learned = {}
    for c in contexts:
        r = client.post("/v1/completions", json={"prompt": [11, int(c)], "max_tokens": 1, "temperature": 0,
                                                 "logprobs": 5, "return_tokens_as_token_ids": True}).json()
        lp = r["choices"][0]["logprobs"]
        chosen = int(lp["tokens"][0].split(":")[1])
        top = max(lp["top_logprobs"][0].items(), key=lambda kv: kv[1])
        top_id = int(top[0].split(":")[1])
        if top_id != chosen:
            learned[(int(c), chosen)], learned[(int(c), top_id)] = True, False
    truth = {pair: green_ref(scheme, [pair[0]], pair[1]) for pair in learned}
    return learned, truth


def test_logprobs_give_no_colour_oracle_unless_the_server_is_started_raw(model, key):
    """Issue 33: raw log-probs beside the watermark's choice reveal colours (the old default); the
    default (log-probs after the watermark) reveals nothing beyond the chosen token."""
    contexts = np.random.default_rng(0).integers(100, V, 40)
    learned, truth = _colour_oracle(model, key, "raw", contexts)
    assert len(learned) >= 20 and learned == truth  # colours recovered, every one right
    learned, _ = _colour_oracle(model, key, "sampled", contexts)
    assert learned == {}  # the served token is the top of what is shown, at every context
