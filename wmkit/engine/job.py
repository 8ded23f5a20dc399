"""One prompt's completion as the engine advances it."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ..errors import RequestError
from .sampling import Sampling
from .stops import StopWatch

__all__ = ["Job", "request"]

NEUTRAL = {"logit_bias": {}, "seed": None, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "stop": [],
           "stream": False, "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
           "logprobs": None, "ids": False, "echo": False, "watermarking": True, "min_tokens": 0, "n": 1}


def request(max_tokens: int, **fields: Any) -> dict[str, Any]:
    """A request for :meth:`~wmkit.engine.core.Generator.prepare`, as a server's parser makes one:
    ``max_tokens`` and any of the fields of :data:`NEUTRAL` (the others keep their neutral values)."""
    unknown = set(fields) - set(NEUTRAL)
    if unknown:
        raise TypeError(f"unknown request fields: {', '.join(sorted(unknown))}")
    return {**NEUTRAL, "logit_bias": {}, "stop": [], **fields, "max_tokens": max_tokens}  # no shared mutable default


@dataclass(eq=False)
class Job:
    """One prompt's completion as the batch loop advances it: its request, sampler state and output."""

    ids: list[int]
    req: dict[str, Any]
    deadline: float | None
    bias: torch.Tensor
    gen: torch.Generator | None
    processor: Any
    watch: StopWatch
    context: torch.Tensor  # prompt + completion so far, filled in place (what the watermark processor reads)
    counts: torch.Tensor | None  # [V] how often each token was generated (None: no penalties)
    sampling: Sampling  # temperature and the min-p / top-k / top-p filters
    in_prompt: torch.Tensor | None = None  # [V] the prompt's tokens (for a repetition penalty; None: none)
    echo: tuple[list[float | None], list[dict[str, float] | None]] | None = None  # its prompt's log-probs, top-k
    first: torch.Tensor | None = None  # [V] its prompt's next-token logits, if a scoring pass gave them
    prompt: str | None = None  # the prompt as the request gave it, if as text (what echo returns)
    out_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    token_lps: list[float] = field(default_factory=list)
    tops: list[dict[str, float]] = field(default_factory=list)
    done: bool = False
    error: RequestError | None = None
    listener: Callable[["Job"], None] | None = None  # called after each token (a streamed request)
    cancelled: bool = False  # set by a streamed request whose client went away: the job ends at its next step

    def penalised(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [V] (float32) with this job's logit bias and penalties, as vLLM's sampler applies
        them (``vllm/v1/worker/gpu/sample/penalties.py``): the bias, then the repetition penalty on
        every token of the prompt or the completion so far (a positive logit divided by it, a
        negative one multiplied), then ``frequency * count``, then ``presence * (count > 0)`` (counts
        of the completion's tokens)."""
        req, raw = self.req, logits.float() + self.bias
        if self.counts is None:
            return raw
        generated = self.counts > 0
        if self.in_prompt is not None:
            scale = torch.where(self.in_prompt | generated, torch.tensor(req["repetition_penalty"], dtype=torch.float32), 1.0)
            raw = raw * torch.where(raw > 0, 1.0 / scale, scale)
        return raw - req["frequency_penalty"] * self.counts - req["presence_penalty"] * generated

    @contextmanager
    def own_rng(self) -> Iterator[None]:
        """Make this job's seeded stream torch's global CPU generator while the block runs (then put
        both back): the processors that draw from the global generator (EXP-edit's start, SynthID's
        tournament, vLLM's key choice) and the sampler draw from it in the order transformers'
        ``generate`` does after ``torch.manual_seed(seed)``, whatever else runs in the batch. A job
        without a seed uses the global generator as it is. Only the engine's one worker thread may draw
        from the global generator meanwhile (``wm serve``'s request handlers draw nothing)."""
        if self.gen is None:
            yield
            return
        saved = torch.random.get_rng_state()
        torch.random.set_rng_state(self.gen.get_state())
        try:
            yield
        finally:
            self.gen.set_state(torch.random.get_rng_state())
            torch.random.set_rng_state(saved)
