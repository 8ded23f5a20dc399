"""What the schemes whose context is the completion's own tokens share (vLLM-native schemes, wmkit's
Gumbel-max): contexts as vLLM builds them, the completion found inside transformers' ``input_ids``,
context deduplication, the Gumbel-max processor and the template detector.

A scheme plugs in with ``context_width``, ``deduplicate_contexts`` (``"none"`` | ``"single_turn"``),
``deduplicate_contexts_max_history``, ``choose(logits, contexts) -> [B]`` (Gumbel-max schemes),
``score(contexts, targets, fpr) -> Detection`` and optionally ``skip_partial_context`` (the first
``context_width`` completion tokens are sampled normally and not scored).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import LogitsProcessor

from ... import dedup
from ...errors import InputError
from ...params import Spec
from ...stats import Detection
from .detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, Capabilities, Detector
from ...engine.sampling import Sampling

__all__ = ["DEDUP", "DEDUP_HISTORY", "completion_contexts", "CompletionProcessor", "repeated_context",
           "gumbel_max", "GumbelProcessor", "CompletionDetector", "DEDUP_SCOPES"]

DEDUP_SCOPES = ("none", "single_turn")


DEDUP = Spec("a repeated context is sampled normally (single_turn) or marked again (none)", choices=DEDUP_SCOPES)
DEDUP_HISTORY = Spec("positions searched for a repeated context (null: all)", low=1)


def gumbel_max(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``argmax(logits - log(-log u))`` per row (the first index on ties): exact sampling from
    ``softmax(logits)`` when ``u`` is uniform, and a keyed choice when ``u`` comes from a PRF."""
    return torch.argmax(logits + -torch.log(-torch.log(u)), dim=-1)


def completion_contexts(ids: torch.Tensor, width: int, pad: int = -1) -> torch.Tensor:
    """``[..., n, width]``: the context of each of the ``n`` completion tokens (``pad`` before the
    first: vLLM's -1; SynthID's 0)."""
    before = torch.full((*ids.shape[:-1], width), pad, dtype=torch.int64, device=ids.device)
    return torch.cat([before, ids.to(torch.int64)], -1).unfold(-1, width, 1)[..., : ids.shape[-1], :]


class CompletionProcessor(LogitsProcessor):
    """Base of the completion-context processors (vLLM-native, Gumbel-max, EXP-edit): finds the completion inside transformers' ``input_ids``
    (the columns after the first call of a ``generate()`` run) and builds vLLM's contexts.

    A call continues the run iff its ``input_ids`` are the previous ones plus one column; any other
    call starts a new run (the processor can be reused across ``generate()`` calls).
    """

    pad: ClassVar[int] = -1  # the context before the completion's first token

    def __init__(self, width: int, vocab_size: int | None):
        self.width, self.vocab_size = width, vocab_size
        self._prev: torch.Tensor | None = None
        self._start = 0

    def completion(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The completion's token ids ``[B, n]`` so far (validates shapes)."""
        if scores.dim() != 2 or input_ids.dim() != 2 or scores.shape[0] != input_ids.shape[0]:
            raise InputError(f"expected input_ids [batch, len] and scores [batch, vocab], got {tuple(input_ids.shape)} and {tuple(scores.shape)}")
        if self.vocab_size is not None and scores.shape[1] < self.vocab_size:
            raise InputError(f"scores have {scores.shape[1]} columns but the tokenizer has {self.vocab_size} tokens (mismatched tokenizer?)")
        p = self._prev
        if not (p is not None and p.shape[0] == input_ids.shape[0] and p.shape[1] + 1 == input_ids.shape[1]
                and torch.equal(p, input_ids[:, :-1])):
            self._start = input_ids.shape[1]
        self._prev = input_ids
        return input_ids[:, self._start:]

    def contexts(self, completion: torch.Tensor) -> torch.Tensor:
        """``[B, width]``: the context of the token about to be sampled."""
        return completion_contexts(torch.cat([completion, completion.new_zeros(completion.shape[0], 1)], 1),
                                   self.width, self.pad)[:, -1, :]


def repeated_context(completion: torch.Tensor, contexts: torch.Tensor, max_history: int | None, pad: int = -1) -> torch.Tensor:
    """``[B]`` bool: the current context already occurred at one of the last ``max_history`` positions
    of the completion (vLLM's ``single_turn`` deduplication; SynthID's context history;
    :func:`wmkit.dedup.seen_recently`)."""
    return dedup.seen_recently(completion_contexts(completion, contexts.shape[-1], pad), contexts, max_history)


class GumbelProcessor(CompletionProcessor):
    """Leaves only the scheme's Gumbel-max choice (``scheme.choose(sampling.process(logits), contexts)``:
    divided by the temperature, filtered by min-p, top-k and top-p as vLLM's sampler filters) finite
    on each marked row; the sampler then takes it.

    Rows are left unchanged (ordinary sampling) at temperature 0 and, with ``single_turn``
    deduplication, when the context already occurred in the completion, as vLLM's sampler does.
    """

    def __init__(self, scheme: Any, vocab_size: int | None, sampling: Sampling):
        super().__init__(scheme.context_width, vocab_size)
        self.scheme, self.sampling = scheme, sampling

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        completion = self.completion(input_ids, scores)
        if self.sampling.temperature <= 0:
            return scores
        contexts = self.contexts(completion)
        processed = self.sampling.process(scores.float())
        chosen = self.scheme.choose(processed, contexts)
        marked = torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
        if getattr(self.scheme, "skip_partial_context", False) and completion.shape[1] < self.width:
            return scores  # the first tokens: a context of padding alone would fix them for every completion
        if self.scheme.deduplicate_contexts == "single_turn":
            marked &= ~repeated_context(completion, contexts, self.scheme.deduplicate_contexts_max_history)
        one_hot = torch.full_like(scores, float("-inf")).scatter(1, chosen.unsqueeze(1), 0.0)
        return torch.where(marked.unsqueeze(1), one_hot, scores)


class CompletionDetector(Detector):
    """Detects a completion-context mark (vLLM-native schemes, Gumbel-max) in a completion (text, or
    token ids of the tokenizer): ``scheme.score(contexts, targets, fpr)`` over its tokens.

    Contexts are the completion's own tokens (``-1`` before its first): pass the completion, not
    the prompt (``prompt=`` strips it if the text starts with it). Each context is scored once
    (vLLM's ``deduplicate_contexts=True``).
    """

    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, scheme: Any, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = DEFAULT_MIN_TOKENS,
                 ignore_repeated_ngrams: bool = True):
        super().__init__(scheme, tokenizer, fpr, min_tokens)
        self.deduplicate = ignore_repeated_ngrams  # vLLM's deduplicate_contexts: a repeated context is scored once

    def score_ids(self, ids: torch.Tensor) -> Detection:
        """The scheme's statistic over the completion ``ids``."""
        ctx = completion_contexts(ids, self.scheme.context_width)
        keep = dedup.first_row(ctx) if self.deduplicate else torch.ones(len(ids), dtype=torch.bool)
        if getattr(self.scheme, "skip_partial_context", False):
            keep &= torch.arange(len(ids)) >= self.scheme.context_width
        if int(keep.sum()) < self.min_tokens:
            raise self.too_short(int(keep.sum()))
        det = self.scheme.score(ctx[keep], ids[keep], self.fpr)
        det.details["tokens_total"] = len(ids)
        return det
