"""One generation engine: the same prompt, seed and settings give the same tokens through
transformers' ``generate`` with a scheme's processor, through the engine alone or in a batch, and
through ``generate_completions`` (what ``wm generate`` runs) and ``wm serve``'s request path."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_llama
from wmkit.engine import Generator, generate_completions, request
from wmkit.keys import SecretKey
from wmkit.watermark.text import SCHEMES

KEY = SecretKey(bytes(range(32)))
PROMPTS = ["The tide comes in", "Write about the sea.", "A"]
N = 12


@pytest.fixture(scope="module")
def model(tokenizer):
    m = tiny_llama(layers=2)
    m.generation_config.eos_token_id = tokenizer.eos_token_id
    m.generation_config.pad_token_id = tokenizer.eos_token_id
    return m


def scheme(name: str):
    return None if name == "none" else SCHEMES[name](key=42 if name.startswith("vllm") else KEY)


def transformers_tokens(model, tokenizer, s, prompt: str, seed: int, temperature: float, top_p: float) -> list[int]:
    """transformers' own sampling loop with the scheme's processor (the documented library path)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    procs = [s.processor(tokenizer, temperature=temperature, top_p=top_p)] if s is not None else []
    sampling = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p} if temperature > 0
                else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None})
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=N, logits_processor=procs, **sampling)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("name", ["none", *(n for n, c in SCHEMES.items() if not getattr(c, "sentence_level", False))])
def test_engine_gives_transformers_tokens_for_every_scheme(model, tokenizer, name):
    s = scheme(name)
    engine = Generator(model, tokenizer, s)
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)]:
        want = [transformers_tokens(model, tokenizer, s, p, 11 + i, temperature, top_p) for i, p in enumerate(PROMPTS)]
        alone = [engine.complete(p, request(N, seed=11 + i, temperature=temperature, top_p=top_p, logprobs=0, ids=True))
                 for i, p in enumerate(PROMPTS)]
        jobs = [engine.prepare(p, request(N, seed=11 + i, temperature=temperature, top_p=top_p))
                for i, p in enumerate(PROMPTS)]
        engine.run_batch(jobs)  # three prompts of different lengths, left-padded in one batch
        got = generate_completions(model, tokenizer, PROMPTS, s, max_new_tokens=N, temperature=temperature,
                                   top_p=top_p, seed=11, batch_size=2)
        for i in range(len(PROMPTS)):
            assert [int(t.split(":")[1]) for t in alone[i]["choice"]["logprobs"]["tokens"]] == want[i]
            assert jobs[i].out_ids == want[i], (name, temperature, top_p, i)
            assert got[i]["completion_ids"] == [t for t in want[i] if t != tokenizer.eos_token_id]
        if s is None and temperature > 0:
            assert len({tuple(w) for w in want}) == len(want)  # the prompts and seeds do differ


def test_a_marked_run_differs_from_an_unmarked_one(model, tokenizer):
    """The processor is really in the loop: KGW at delta 8 changes what the same seed samples."""
    plain = generate_completions(model, tokenizer, PROMPTS, None, max_new_tokens=N, seed=3)
    marked = generate_completions(model, tokenizer, PROMPTS, SCHEMES["kgw"](key=KEY, delta=8.0), max_new_tokens=N, seed=3)
    assert [r["completion_ids"] for r in plain] != [r["completion_ids"] for r in marked]


def test_seeds_are_per_prompt_so_a_resumed_run_matches(model, tokenizer):
    whole = generate_completions(model, tokenizer, PROMPTS, None, max_new_tokens=N, seed=5, batch_size=3)
    rest = generate_completions(model, tokenizer, PROMPTS[1:], None, max_new_tokens=N, seed=[6, 7], batch_size=1)
    assert [r["completion_ids"] for r in whole[1:]] == [r["completion_ids"] for r in rest]


def test_min_new_tokens_and_stop_strings(model, tokenizer):
    eos = tokenizer.eos_token_id
    biased = Generator(model, tokenizer)
    job = biased.prepare("Hi", request(6, seed=1, min_tokens=4, logit_bias={eos: 100.0}))
    biased.run_batch([job])
    assert job.out_ids[:4].count(eos) == 0 and job.out_ids[4] == eos  # held back until 4 tokens, then taken
    (free,) = generate_completions(model, tokenizer, ["Hi"], None, max_new_tokens=N, seed=2)
    cut = free["completion"][3:6]
    (stopped,) = generate_completions(model, tokenizer, ["Hi"], None, max_new_tokens=N, seed=2, stop=[cut])
    assert stopped["completion"] == free["completion"][: free["completion"].index(cut)]
    assert tokenizer.decode(stopped["completion_ids"], skip_special_tokens=True) == stopped["completion"] or \
        stopped["completion"].startswith(tokenizer.decode(stopped["completion_ids"], skip_special_tokens=True))
