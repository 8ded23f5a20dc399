"""Sentence-level generation on the engine: each sentence of a completion is chosen from candidate
sentences the model samples in one batch (a round), by the scheme's ``select``.

The first sentence is sampled once, normally (it only seeds the second: a detector has no prompt).
Every later candidate round continues the prompt plus the sentences kept so far; a candidate ends
where the sentence rule (:mod:`.sentences`) ends it, at the end-of-sequence token, or after
``sentence_tokens`` tokens. A scheme with an inner token mark gives the engine that mark's processor,
so the candidates -- and the kept sentences -- carry it too.

Cost is counted as it runs: ``forward_passes`` (one per batched step, the prefill included),
``candidate_tokens`` (every token sampled) and ``accepted_tokens``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

from ....engine.core import Generator
from ....engine.job import request
from ....engine.stops import StopWatch
from ....errors import InputError, RequestError
from .sentences import first_sentence_end

__all__ = ["generate_sentences", "candidate_seed"]


def candidate_seed(seed: int, sentence: int, round_: int, i: int) -> int:
    """The seed of candidate ``i`` of round ``round_`` of sentence ``sentence`` of a completion seeded ``seed``."""
    d = hashlib.sha256(f"{seed}/{sentence}/{round_}/{i}".encode()).digest()
    return int.from_bytes(d[:7], "little")


class SentenceWatch(StopWatch):
    """Ends a candidate once its text holds a whole sentence (:func:`.sentences.first_sentence_end`
    after any leading whitespace: a blank line before a sentence does not end it)."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, [], track=True)

    def add(self, token: int) -> bool:
        super().add(token)
        body = self.text.lstrip()
        return first_sentence_end(body) is not None


def _cut(tok: Any, ids: list[int]) -> tuple[list[int], bool]:
    """The tokens of the first sentence of ``ids`` (whole tokens up to its end, leading whitespace
    included), and whether it ended the text (end-of-sequence)."""
    eos = tok.eos_token_id
    ended = bool(ids) and ids[-1] == eos
    if ended:
        ids = ids[:-1]
    text = tok.decode(ids, skip_special_tokens=True)
    lead = len(text) - len(text.lstrip())
    end = first_sentence_end(text[lead:])
    if end is None:
        return ids, ended
    keep_text = text[: lead + end]
    keep = len(ids)
    while keep > 1 and len(tok.decode(ids[:keep], skip_special_tokens=True)) > len(keep_text):
        keep -= 1
    return ids[:keep], ended and keep == len(ids)


class _Completion:
    """One prompt's completion as it grows a sentence at a time."""

    def __init__(self, prompt: list[int], seed: int | None, budget: int):
        self.prompt, self.seed, self.budget = prompt, seed, budget
        self.kept: list[int] = []
        self.prev: int | None = None  # the signature of the last kept sentence (None: none yet)
        self.seen: set[tuple[int, int]] = set()  # the (previous, current) signature pairs kept so far
        self.sentence = self.round = 0
        self.done = False


def generate_sentences(model: Any, tokenizer: Any, prompt_ids: Sequence[list[int]], scheme: Any, max_new_tokens: int,
                       temperature: float, top_p: float = 1.0, seeds: Sequence[int | None] | None = None,
                       stats: dict[str, int] | None = None) -> list[list[int]]:
    """The completion token ids of each prompt (``prompt_ids[i]``), marked a sentence at a time; the
    prompts advance in lockstep, every round of every prompt in one engine batch."""
    if temperature <= 0:
        raise InputError(f"{scheme.name} samples candidate sentences: it needs a temperature above 0, got {temperature}")
    stats = stats if stats is not None else {}
    for k in ("forward_passes", "candidate_tokens", "accepted_tokens", "sentences", "rounds"):
        stats.setdefault(k, 0)
    engine = Generator(model, tokenizer, scheme.inner_scheme(), prefill_chunk=None)
    rows = [_Completion(list(ids), None if seeds is None else seeds[i], max_new_tokens) for i, ids in enumerate(prompt_ids)]
    fields = {"temperature": temperature, "top_p": top_p}
    with torch.no_grad():
        while True:
            live = [c for c in rows if not c.done]
            if not live:
                break
            jobs: list[list[Any]] = []
            for c in live:
                n = scheme.candidates if c.prev is not None else 1
                left = c.budget - len(c.kept)
                try:
                    mine = [engine.prepare(c.prompt + c.kept, request(min(left, scheme.sentence_tokens), seed=None if c.seed is None
                                                                      else candidate_seed(c.seed, c.sentence, c.round, i), **fields))
                            for i in range(n)]
                except RequestError as e:
                    raise InputError(e.message) from None
                for j in mine:
                    j.watch = SentenceWatch(tokenizer)
                jobs.append(mine)
            flat = [j for mine in jobs for j in mine]
            engine.run_batch(flat)
            # what each prompt's rounds would cost alone: one pass per step (the prefill gives the first token)
            stats["forward_passes"] += sum(max(len(j.out_ids) for j in mine) for mine in jobs)
            stats["candidate_tokens"] += sum(len(j.out_ids) for j in flat)
            stats["rounds"] += len(live)
            for c, mine in zip(live, jobs):
                _advance(c, [_cut(tokenizer, j.out_ids) for j in mine], scheme, tokenizer)
    for c in rows:
        stats["accepted_tokens"] += len(c.kept)
        stats["sentences"] += c.sentence
    return [c.kept[:max_new_tokens] for c in rows]


def _advance(c: _Completion, cands: list[tuple[list[int], bool]], scheme: Any, tok: Any) -> None:
    """Keep the scheme's choice among ``cands`` (or ask for another round)."""
    if c.prev is None:
        pick: int | None = 0
    else:
        texts = [tok.decode(ids, skip_special_tokens=True).strip() or "." for ids, _ in cands]
        pick = scheme.select(c.prev, scheme.embed(texts), final=c.round == scheme.rounds - 1, seen=c.seen)
    if pick is None:
        c.round += 1
        return
    ids, ended = cands[pick]
    c.kept += ids
    c.sentence += 1
    c.round = 0
    text = tok.decode(ids, skip_special_tokens=True).strip()
    if text:
        label = int(scheme.signatures(scheme.embed([text]))[0][0])
        if c.prev is not None:
            c.seen.add((c.prev, label))
        c.prev = label
    c.done = ended or not ids or len(c.kept) >= c.budget
