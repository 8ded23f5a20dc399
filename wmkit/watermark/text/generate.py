"""Batched generation with (or without) a watermark processor: what ``wm generate`` runs."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch
from transformers import LogitsProcessorList

from ...errors import InputError

__all__ = ["generate_completions", "TextScheme"]


class TextScheme(Protocol):
    """What generation needs of a text scheme: a processor for the sampler's settings."""

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> Any: ...


def _encode(tokenizer: Any, prompts: Sequence[str], chat: bool, prefills: Sequence[str]) -> dict[str, torch.Tensor]:
    if chat:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) + f
            for p, f in zip(prompts, prefills)
        ]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return tokenizer(list(prompts), return_tensors="pt", padding=True)


def _cut(tokenizer: Any, ids: list[int], stop: Sequence[str]) -> tuple[str, list[int]]:
    """Decode ``ids`` and cut at the first stop string; keep the tokens that lie before the cut."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    if not cuts:
        return text, ids
    text = text[: min(cuts)]
    keep = len(ids)
    while keep and not text.startswith(tokenizer.decode(ids[:keep], skip_special_tokens=True)):
        keep -= 1
    return text, ids[:keep]


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    scheme: TextScheme | None = None,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    seed: int | None = None,
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
    cut from its completion (``completion_ids`` are the tokens kept). With ``chat`` the prompt is a
    user turn; ``prefills[i]`` (if given) starts the assistant's answer. ``seed`` makes the run
    reproducible.
    """
    if not prompts:
        raise InputError("no prompts given")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    processors = LogitsProcessorList(
        [scheme.processor(tokenizer, temperature=temperature, top_p=top_p)] if scheme is not None else [])
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    )
    if seed is not None:
        torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    results: list[dict[str, Any]] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        fills = list(prefills[start : start + batch_size]) if prefills is not None else [""] * len(batch)
        enc = {k: v.to(device) for k, v in _encode(tokenizer, batch, chat, fills).items()}
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                logits_processor=processors,
                pad_token_id=tokenizer.pad_token_id,
                **({"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}),
                **sampling,
            )
        new = out[:, enc["input_ids"].shape[1] :].cpu()
        for prompt, row in zip(batch, new):
            ids = row.tolist()
            if tokenizer.eos_token_id in ids:  # generation ended; the rest is padding
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            text, ids = _cut(tokenizer, ids, stop)
            results.append({"prompt": prompt, "completion": text, "completion_ids": ids})
        if on_batch is not None:
            on_batch(len(batch))
    return results
