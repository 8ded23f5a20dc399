"""The sampler's filters (min-p, top-k, top-p) and penalties (repetition, frequency, presence),
checked against vLLM's own code from the ``vllm==0.30.0`` wheel (its PyTorch top-k/top-p path and its
Triton min-p and penalty kernels, run by Triton's interpreter), against closed forms, and through
``wm serve`` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import IdTokenizer, VocabOnly, tiny_llama
from wmkit.errors import InputError
from wmkit.engine import Generator
from wmkit.server.completions import create_app
from wmkit.engine.sampling import Sampling
from wmkit.watermark.text.vllm_native import VllmGumbel

V = 97


@pytest.fixture(scope="module")
def vllm():
    import vllm_reference

    return vllm_reference.required(vllm_reference.sampler)


def vllm_filter(ns, logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """vLLM's sampler on ``logits`` [B, V] float32 for one setting: temperature, its min-p kernel, then
    its top-k/top-p (``None`` where a filter is off, as its sampling state passes them)."""
    x = logits.clone()
    if s.temperature not in (0.0, 1.0):
        x = x / torch.tensor(s.temperature, dtype=torch.float32)
    rows = torch.arange(x.shape[0], dtype=torch.int32)
    if s.min_p > 0:
        ns.apply_min_p(x, rows, torch.full((x.shape[0],), s.min_p, dtype=torch.float32))
    k = torch.full((x.shape[0],), s.top_k, dtype=torch.int64) if 0 < s.top_k < x.shape[1] else None
    p = torch.full((x.shape[0],), s.top_p, dtype=torch.float32) if s.top_p < 1 else None
    return ns.apply_top_k_top_p(x, k, p)


SETTINGS = [Sampling(1.0, 0.9), Sampling(1.0, 1.0, 5), Sampling(0.7, 1.0, 0, 0.05), Sampling(1.3, 0.8, 12, 0.02),
            Sampling(1.0, 0.5, 1), Sampling(0.5, 0.95, 40, 0.3), Sampling(1.0, 1.0, 0, 1.0), Sampling(2.0, 1e-6)]


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: f"T{s.temperature}-p{s.top_p}-k{s.top_k}-m{s.min_p}")
def test_filters_equal_vllms_sampler_bit_for_bit(vllm, s):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 3000, generator=g) * 3
    logits[3] = torch.round(logits[3])  # many ties: top-k keeps every token tied with the k-th
    logits[4, :50] = logits[4].max()  # a tie at the top
    want = vllm_filter(vllm, logits, s)
    got = s.process(logits)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.equal(got[torch.isfinite(got)], want[torch.isfinite(want)])
    assert not torch.equal(torch.isinf(got), torch.isinf(logits))  # every setting drops something here


def test_filters_closed_forms():
    logp = torch.log(torch.tensor([[0.05, 0.3, 0.5, 0.15]]))
    kept = lambda s: torch.isfinite(s.filter(logp))[0].tolist()  # noqa: E731
    assert kept(Sampling(top_p=0.75)) == [False, True, True, False]  # 0.5 + 0.3 reach 0.75; 0.05 + 0.15 <= 0.25 go
    assert kept(Sampling(top_p=0.5)) == [False, False, True, False]  # the most likely token alone
    assert kept(Sampling(top_k=2)) == [False, True, True, False]
    assert kept(Sampling(min_p=0.5)) == [False, True, True, False]  # 0.3 >= 0.5 * 0.5; 0.15 is not
    assert kept(Sampling(min_p=0.29)) == [False, True, True, True]
    assert kept(Sampling(top_k=3, top_p=0.6)) == [False, True, True, False]  # top-p on the renormalised top 3
    assert torch.equal(Sampling().filter(logp), logp) and torch.equal(Sampling(top_k=4).filter(logp), logp)
    assert torch.equal(Sampling(0.0, 0.1, 1, 0.9).process(logp), logp)  # greedy: no filter
    for bad in [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2), dict(top_k=2.0),
                dict(min_p=1.1), dict(temperature=float("nan"))]:
        with pytest.raises(InputError, match=next(iter(bad))):
            Sampling(**bad)


def test_vllm_gumbel_processor_chooses_what_vllms_sampler_chooses_after_the_filters(vllm):
    import vllm_reference

    wm = vllm_reference.load().gumbel.GumbelWatermarker(4321)
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(4, 49152, generator=g) * 3
    for s in SETTINGS[:6]:
        out = VllmGumbel(key=4321).processor(VocabOnly(), s.temperature, s.top_p, s.top_k, s.min_p)(
            torch.zeros(4, 3, dtype=torch.long), logits.clone())  # the first completion token: context all -1
        assert (torch.isfinite(out).sum(1) == 1).all()
        want = wm._sample_watermarked(vllm_filter(vllm, logits, s), torch.full((4, 4), -1)).token_ids
        assert torch.equal(out.argmax(1), want)


# --- penalties ----------------------------------------------------------------------------------

def vllm_penalised(ns, logits: torch.Tensor, prompt: list[int], out: list[int], rep: float, freq: float,
                   pres: float) -> torch.Tensor:
    """vLLM on one request's next-token ``logits`` [V]: the prompt's bit mask and the output's counts by
    its bincount kernel, then its penalty kernel."""
    row, tokens = torch.zeros(1, dtype=torch.int32), torch.tensor([prompt + out], dtype=torch.int64)
    mask, counts = torch.zeros(1, -(-V // 32), dtype=torch.int32), torch.zeros(1, V, dtype=torch.int32)
    ns.bincount(row, tokens, torch.tensor([len(prompt)]), torch.tensor([len(prompt) + len(out)]), mask, counts,
                len(prompt) + len(out))
    x = logits.float()[None].clone()
    ns.apply_penalties(x, row, tokens[0], torch.zeros(1, dtype=torch.int64), torch.tensor([rep], dtype=torch.float32),
                       torch.tensor([freq], dtype=torch.float32), torch.tensor([pres], dtype=torch.float32), mask, counts)
    return x[0]


def _job(gen: Generator, prompt: list[int], out: list[int], **req):
    job = gen.prepare(prompt, {"max_tokens": 32, "temperature": 1.0, "top_p": 1.0, "logit_bias": {}, "seed": None,
                               "stop": [], "logprobs": None, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                               "repetition_penalty": 1.0, **req})
    for t in out:
        job.counts[t] += 1
    return job


@pytest.mark.parametrize("rep, freq, pres", [(1.3, 0.0, 0.0), (0.8, 0.5, -1.0), (1.0, 1.5, 0.7), (2.0, -0.3, 0.2)])
def test_penalties_equal_vllms_kernel_bit_for_bit(vllm, tiny_generator, rep, freq, pres):
    prompt, out = [3, 5, 5, 9, 60], [5, 11, 11, 11, 2, 96]
    job = _job(tiny_generator, prompt, out, repetition_penalty=rep, frequency_penalty=freq, presence_penalty=pres)
    logits = torch.randn(V, generator=torch.Generator().manual_seed(1)) * 4
    got = job.penalised(logits)
    assert torch.equal(got, vllm_penalised(vllm, logits, prompt, out, rep, freq, pres))
    assert not torch.equal(got, logits)


# --- through the server -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    return tiny_llama(V)


@pytest.fixture(scope="module")
def tiny_generator(tiny_model):
    return Generator(tiny_model, IdTokenizer())


def _post(client, **body):
    r = client.post("/v1/completions", json={"return_tokens_as_token_ids": True, **body})
    assert r.status_code == 200, r.text
    return r.json()["choices"]


def test_server_repetition_penalty_is_vllms_on_prompt_and_completion(vllm, tiny_model, tiny_generator):
    """Greedy decoding with all three penalties is the argmax of vLLM's penalty kernel's logits at
    every step (the model rerun without a cache); the log-probs are of that penalised distribution."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(tiny_generator))
    prompt = [5, 6, 7, 5, 30]
    free = _post(client, prompt=prompt, max_tokens=12, temperature=0)[0]["text"]
    ch = _post(client, prompt=prompt, max_tokens=12, temperature=0, logprobs=0, repetition_penalty=1.8,
               frequency_penalty=0.3, presence_penalty=0.2)[0]
    got = [int(t.split(":")[1]) for t in ch["logprobs"]["tokens"]]
    ids = list(prompt)
    with torch.inference_mode():
        for i, t in enumerate(got):
            x = vllm_penalised(vllm, tiny_model(input_ids=torch.tensor([ids])).logits[0, -1], prompt, ids[len(prompt):],
                               1.8, 0.3, 0.2)
            assert t == int(x.argmax()), f"step {i}"
            np.testing.assert_allclose(ch["logprobs"]["token_logprobs"][i], float(torch.log_softmax(x.double(), -1)[t]),
                                       atol=1e-4)
            ids.append(t)
    assert ch["text"] != free  # the penalty changed the greedy text


def test_server_sampling_filters_keep_only_the_allowed_tokens(tiny_generator):
    """top_k = 1 and min_p = 1 sample the greedy token; top_k = 3 draws from the renormalised top 3
    of the model's distribution (a chi-square test over 600 draws); bad values are a 400."""
    from fastapi.testclient import TestClient
    from scipy import stats

    client = TestClient(create_app(tiny_generator))
    prompt = [4, 8, 15, 16]
    greedy = _post(client, prompt=prompt, max_tokens=8, temperature=0)[0]["text"]
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        assert _post(client, prompt=prompt, max_tokens=8, temperature=1.0, seed=3, **extra)[0]["text"] == greedy
    with torch.inference_mode():
        p = torch.softmax(tiny_generator.model(input_ids=torch.tensor([prompt])).logits[0, -1].double(), -1)
    top = torch.topk(p, 3)
    draws = [int(c["text"][1:-1]) for s in range(10)  # n = 60 completions seeded seed + j: 600 independent draws
             for c in _post(client, prompt=prompt, max_tokens=1, temperature=1.0, top_k=3, seed=100 * s, n=60)]
    assert set(draws) <= set(top.indices.tolist())
    observed = [draws.count(int(t)) for t in top.indices]
    expected = (top.values / top.values.sum() * len(draws)).tolist()
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    for body, fragment in [({"top_k": -2}, "'top_k' must be an integer in [-1"), ({"top_k": 2.5}, "'top_k' must be an integer"),
                           ({"min_p": 1.5}, "'min_p' must be a number in [0, 1]"),
                           ({"repetition_penalty": 0}, "'repetition_penalty' must be a number in [0.01, 10]")]:
        r = client.post("/v1/completions", json={"prompt": prompt, **body})
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text
