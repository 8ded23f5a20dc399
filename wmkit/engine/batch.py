"""Offline generation over a list of prompts, on the engine: what ``wm generate``, ``wm demo``, the
paraphrase attack and the benchmarks run."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch

from ..errors import InputError, RequestError
from .core import Generator
from .job import request
from .stops import cut_at_stop

__all__ = ["generate_completions", "TextScheme"]


class TextScheme(Protocol):
    """What generation needs of a text scheme: a processor for the sampler's settings."""

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> Any: ...


def _encode(tokenizer: Any, prompt: str, chat: bool, prefill: str) -> list[int]:
    """The prompt's token ids: as it is, or (``chat``) as a user turn through the chat template with
    ``prefill`` starting the assistant's answer."""
    if not chat:
        return tokenizer(prompt).input_ids
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True) + prefill
    return tokenizer(text, add_special_tokens=False).input_ids


def _seeds(seed: int | Sequence[int] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    if len(seed) != n:
        raise InputError(f"{len(seed)} seeds for {n} prompts")
    return list(seed)


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    scheme: TextScheme | None = None,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    seed: int | Sequence[int] | None = None,
    batch_size: int = 8,
    chat: bool = False,
    min_new_tokens: int = 0,
    on_batch: Callable[[int], None] | None = None,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    prefills: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Complete every prompt; returns ``[{"prompt", "completion", "completion_ids"}]`` in order.

    Sampling is multinomial over the full distribution at ``temperature`` (0 means greedy), the
    decoding Kirchenbauer et al. evaluate; ``top_p < 1`` samples from the nucleus instead (the
    code-watermark papers' decoding). A row stops at the first of the ``stop`` strings, which is
    cut from its completion (``completion_ids`` are the tokens kept), or at the end-of-sequence
    token (not before ``min_new_tokens``). With ``chat`` the prompt is a user turn; ``prefills[i]``
    (if given) starts the assistant's answer. Prompt ``i`` is sampled with its own generator seeded
    ``seed + i`` (or ``seed[i]`` for a list), so its completion does not depend on the batch it runs
    in, and equals what ``model.generate`` with the scheme's processor gives after
    ``torch.manual_seed(seed + i)`` (:mod:`wmkit.engine.core`). Batches of ``batch_size`` prompts
    run in lockstep; ``on_batch(n)`` is called as each ends.
    """
    if not prompts:
        raise InputError("no prompts given")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise InputError(f"min_new_tokens must be in 0..max_new_tokens ({max_new_tokens}), got {min_new_tokens}")
    if prefills is not None and len(prefills) != len(prompts):
        raise InputError(f"{len(prefills)} prefills for {len(prompts)} prompts")
    seeds = _seeds(seed, len(prompts))
    if getattr(scheme, "sentence_level", False):  # a sentence at a time, from candidate sentences
        return _sentence_level(model, tokenizer, prompts, scheme, max_new_tokens, temperature, seeds, batch_size, chat,
                               on_batch, top_p, prefills)
    engine = Generator(model, tokenizer, scheme, prefill_chunk=None)
    fields = {"temperature": temperature, "top_p": top_p, "stop": list(stop), "min_tokens": min_new_tokens}
    results: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        batch = range(start, min(start + batch_size, len(prompts)))
        try:
            jobs = [engine.prepare(_encode(tokenizer, prompts[i], chat, prefills[i] if prefills else ""),
                                   request(max_new_tokens, seed=seeds[i], **fields)) for i in batch]
        except RequestError as e:
            raise InputError(e.message) from None
        with torch.no_grad():
            engine.run_batch(jobs)
        for i, job in zip(batch, jobs):
            ids = job.out_ids
            if ids and ids[-1] == tokenizer.eos_token_id:  # generation ended there
                ids = ids[:-1]
            text, ids, _ = cut_at_stop(tokenizer, ids, stop)
            results.append({"prompt": prompts[i], "completion": text, "completion_ids": ids})
        if on_batch is not None:
            on_batch(len(batch))
    return results


def _sentence_level(model: Any, tokenizer: Any, prompts: Sequence[str], scheme: Any, max_new_tokens: int, temperature: float,
                    seeds: list[int | None], batch_size: int, chat: bool, on_batch: Callable[[int], None] | None, top_p: float,
                    prefills: Sequence[str] | None) -> list[dict[str, Any]]:
    """:func:`generate_completions` for a sentence-level scheme (:mod:`wmkit.watermark.text.semantic`):
    ``batch_size`` prompts in lockstep, each sentence chosen from the scheme's candidate sentences."""
    from ..watermark.text.semantic import generate_sentences

    results: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        batch = range(start, min(start + batch_size, len(prompts)))
        ids = [_encode(tokenizer, prompts[i], chat, prefills[i] if prefills else "") for i in batch]
        out = generate_sentences(model, tokenizer, ids, scheme, max_new_tokens, temperature, top_p, [seeds[i] for i in batch])
        results += [{"prompt": prompts[i], "completion": tokenizer.decode(o, skip_special_tokens=True), "completion_ids": o}
                    for i, o in zip(batch, out)]
        if on_batch is not None:
            on_batch(len(batch))
    return results
