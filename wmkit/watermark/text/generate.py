"""Batched generation with (or without) a watermark processor: what ``wm generate`` runs."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from transformers import LogitsProcessorList

from ...errors import InputError
from .base import GreenListScheme

__all__ = ["generate_completions"]


def _encode(tokenizer: Any, prompts: Sequence[str], chat: bool) -> dict[str, torch.Tensor]:
    if chat:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return tokenizer(list(prompts), return_tensors="pt", padding=True)


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    scheme: GreenListScheme | None = None,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    seed: int | None = None,
    batch_size: int = 8,
    chat: bool = False,
    min_new_tokens: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Complete every prompt; returns ``[{"prompt", "completion", "completion_ids"}]`` in order.

    Sampling is multinomial over the full distribution at ``temperature`` (0 means greedy), the
    decoding Kirchenbauer et al. evaluate. ``seed`` makes the run reproducible.
    """
    if not prompts:
        raise InputError("no prompts given")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    processors = LogitsProcessorList([scheme.processor(tokenizer)] if scheme is not None else [])
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
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
        enc = {k: v.to(device) for k, v in _encode(tokenizer, batch, chat).items()}
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                logits_processor=processors,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        new = out[:, enc["input_ids"].shape[1] :].cpu()
        for prompt, row in zip(batch, new):
            ids = row.tolist()
            if tokenizer.eos_token_id in ids:  # generation ended; the rest is padding
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            results.append(
                {"prompt": prompt, "completion": tokenizer.decode(ids, skip_special_tokens=True), "completion_ids": ids}
            )
        if on_batch is not None:
            on_batch(len(batch))
    return results
