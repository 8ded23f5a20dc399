"""The generation engine under ``wm generate``, ``wm serve`` and the benchmarks: one prompt or a batch
of them in lockstep (left-padded, a shared KV cache, rows that leave as they end and join while it
runs), each row with its own seed, logit bias, penalties, watermark processor, sampling filters and
stop strings.

A token is chosen as transformers' ``generate`` chooses it with a wmkit processor and the same
settings: the model's float32 logits, then the bias, the penalties and ``min_tokens`` (vLLM's
order), then the watermark processor, then the temperature and the min-p / top-k / top-p filters
(:class:`~wmkit.engine.sampling.Sampling`, vLLM's order: with top-k and top-p alone that is also
transformers' order), then ``torch.multinomial`` on the float32 softmax with the row's own
``torch.Generator`` seeded with its seed -- the draw transformers makes from the global generator
after ``torch.manual_seed(seed)`` -- or the argmax at temperature 0. So one prompt with one seed
gives the same tokens here, in any batch, and through ``model.generate`` (``tests/test_engine.py``
checks it for every scheme).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import torch

from ..errors import RequestError
from .echo import echo_choice, score_prompts
from .job import Job
from .rows import Rows, mergeable
from .sampling import Sampling
from .stops import StopWatch, cut_at_stop

__all__ = ["Generator", "LOGPROBS_MODES", "LOGPROB_FLOOR", "PREFILL_CHUNK"]

LOGPROBS_MODES = ("sampled", "raw")  # after the watermark (default) / before it (reveals colours)
LOGPROB_FLOOR = -9999.0  # vLLM's floor for -inf in OpenAI responses (JSON has no infinity)
FIRST_CACHE = 64
PREFILL_CHUNK = 256  # prompt tokens per prefill pass of jobs that join a running batch


class Generator:
    """Greedy or sampled generation with logit bias, an optional watermark scheme, and top-k log-probs,
    for one prompt (:meth:`complete`) or a batch of them in lockstep (:meth:`run_batch`).

    ``scheme`` is any text scheme (its processor is built per completion, for the request's sampling
    settings); ``scheme_tokenizer`` is the tokenizer it is given (default ``tokenizer``).
    ``prefill_chunk``: the most prompt tokens (rows x columns) one prefill pass of jobs joining a
    running batch takes; a longer prefill runs in chunks with a step of the running rows between
    them, so a long prompt that joins does not stall them for its whole prefill (``None``: one pass).
    """

    def __init__(self, model: Any, tokenizer: Any, scheme: Any = None, scheme_tokenizer: Any = None,
                 prefill_chunk: int | None = PREFILL_CHUNK, logprobs: str = "sampled") -> None:
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive number of tokens (or None), got {prefill_chunk}")
        if logprobs not in LOGPROBS_MODES:
            raise ValueError(f"logprobs must be one of {', '.join(LOGPROBS_MODES)}, got {logprobs!r}")
        self.model, self.tok, self.scheme, self.prefill_chunk = model, tokenizer, scheme, prefill_chunk
        self.logprobs = logprobs
        self.scheme_tok = scheme_tokenizer if scheme_tokenizer is not None else tokenizer
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.device = next(model.parameters()).device  # inputs go there; logits come back to the CPU
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None  # None: unbounded
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self.lock = threading.RLock()  # the model runs one batch at a time
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 names it `cache`
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # no prompt-wide logits
        self._first: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # prompt -> next-token logits

    def _first_logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits of a prompt, from a small LRU cache (repeated one-token queries are common)."""
        key = tuple(ids)
        if key in self._first:
            self._first.move_to_end(key)
            return self._first[key]
        logits = self.model(input_ids=torch.tensor([ids], device=self.device), **self._last_only).logits[0, -1].float().cpu()
        self._first[key] = logits
        if len(self._first) > FIRST_CACHE:
            self._first.popitem(last=False)
        return logits

    def cached(self, job: Job) -> bool:
        """Whether ``job`` is one token whose prompt's logits are cached (answered without the model)."""
        return job.req["max_tokens"] == 1 and tuple(job.ids) in self._first and not self._scored(job)

    @staticmethod
    def _scored(job: Job) -> bool:
        """Whether ``job`` echoes its prompt with log-probs (its prompt is scored)."""
        return bool(job.req.get("echo")) and job.req["logprobs"] is not None

    def token_str(self, t: int, ids: bool) -> str:
        return f"token_id:{t}" if ids else self.tok.decode([t])

    def prepare(self, prompt: str | list[int], req: dict[str, Any], deadline: float | None = None) -> Job:
        """Tokenize ``prompt`` and set up its sampler and watermark; a :class:`RequestError` (400) if
        prompt + max_tokens exceed the model's context."""
        ids = self.tok(prompt, return_tensors="pt").input_ids[0].tolist() if isinstance(prompt, str) else list(prompt)
        if self.context is not None and len(ids) + req["max_tokens"] > self.context:
            raise RequestError(f"the prompt has {len(ids)} tokens; with max_tokens {req['max_tokens']} that exceeds the "
                               f"model's context of {self.context} tokens", "prompt")
        bias = torch.zeros(self.vocab_size, dtype=torch.float32)
        for t, b in req["logit_bias"].items():
            bias[t] = b
        gen = torch.Generator().manual_seed(req["seed"]) if req["seed"] is not None else None
        sampling = Sampling(req["temperature"], req["top_p"], req.get("top_k", 0), req.get("min_p", 0.0))
        # one processor per completion: a Gumbel-max scheme samples at this request's temperature and filters
        processor = (self.scheme.processor(self.scheme_tok, temperature=sampling.temperature, top_p=sampling.top_p,
                                           top_k=sampling.top_k, min_p=sampling.min_p)
                     if self.scheme is not None and req.get("watermarking", True) else None)
        context = torch.tensor(ids + [0] * req["max_tokens"])[None]
        watch = StopWatch(self.tok, req["stop"], track=req.get("stream", False))
        repetition = req.get("repetition_penalty", 1.0) != 1
        penalised = repetition or req.get("presence_penalty", 0.0) != 0 or req.get("frequency_penalty", 0.0) != 0
        counts = torch.zeros(self.vocab_size, dtype=torch.int32) if penalised else None
        in_prompt = torch.zeros(self.vocab_size, dtype=torch.bool).index_fill_(0, torch.tensor(ids), True) if repetition else None
        return Job(ids, req, deadline, bias, gen, processor, watch, context, counts, sampling, in_prompt,
                   prompt if isinstance(prompt, str) else None)

    def prepare_all(self, req: dict[str, Any], deadline: float | None = None) -> list[Job]:
        """The jobs of a request: ``n`` per prompt, prompt-major (choice ``i * n + j`` is prompt ``i``'s
        ``j``-th), completion ``j`` seeded ``seed + j`` when the request has a seed (vLLM's rule)."""
        seeds = [None if req["seed"] is None else req["seed"] + j for j in range(req["n"])]
        return [self.prepare(p, {**req, "seed": s}, deadline) for p in req["prompts"] for s in seeds]

    def _step(self, job: Job, logits: torch.Tensor) -> int:
        """Choose ``job``'s next token from the model's next-token ``logits`` [V]: bias and penalties
        (:meth:`Job.penalised`), the watermark, then greedy or sampled at the temperature after the
        min-p / top-k / top-p filters (:class:`~wmkit.engine.sampling.Sampling`, vLLM's
        order); record it."""
        req = job.req
        raw = job.penalised(logits)
        if len(job.out_ids) < req.get("min_tokens", 0) and self.tok.eos_token_id is not None:
            raw[self.tok.eos_token_id] = float("-inf")  # no end before min_tokens (vLLM's and transformers' rule)
        scores = raw.clone()
        n = len(job.ids) + len(job.out_ids)
        with job.own_rng():
            if job.processor is not None:
                scores = job.processor(job.context[:, :n], scores[None])[0]
            if req["temperature"] == 0:
                t = int(torch.argmax(scores))
            else:  # float32, as transformers samples: the same seed draws the same token
                t = int(torch.multinomial(torch.softmax(job.sampling.process(scores).float(), -1), 1))
        job.out_ids.append(t)
        job.context[0, n] = t
        if job.counts is not None:
            job.counts[t] += 1
        if req["logprobs"] is not None:
            # of the distribution the token came from: after the watermark (the raw one beside the
            # watermark's choice shows a token's colour), unless the server was started with raw
            shown = raw if job.processor is None or self.logprobs == "raw" else scores
            lp = torch.log_softmax(shown.double(), -1).clamp_(min=LOGPROB_FLOOR)
            job.tokens.append(self.token_str(t, req["ids"]))
            job.token_lps.append(float(lp[t]))
            k = req["logprobs"]
            top = torch.topk(lp, k).indices.tolist() if k else []
            job.tops.append({self.token_str(int(i), req["ids"]): float(lp[i]) for i in top})
        job.done = t == self.tok.eos_token_id or job.watch.add(t) or len(job.out_ids) >= req["max_tokens"]
        if job.listener is not None:
            job.listener(job)
        return t

    def _expired(self, job: Job) -> bool:
        if job.cancelled:
            job.done = True
        elif job.deadline is not None and time.monotonic() > job.deadline:
            job.error = RequestError("the request timed out; ask for fewer tokens or retry", None, 503)
            job.done = True
        return job.done

    def run_batch(self, jobs: list[Job], join: Callable[[int], list[Job]] | None = None,
                  finished: Callable[[Job], None] | None = None) -> None:
        """Advance every job to its end (or its deadline: then ``job.error`` is a 503): one-token
        jobs from the prompt-logits cache, the others as one left-padded batch with a shared KV
        cache, one forward pass per step for all of them. A finished row leaves the batch (and its
        cache) at once, and ``finished(job)`` is called as each job ends.

        Continuous batching: before each step, ``join(rows running)`` may hand over new jobs; they
        are prefilled together (in passes of at most ``prefill_chunk`` tokens, with a step of the
        running rows between two passes), take their first token, and join the running batch
        (:class:`~wmkit.server.rows.Rows`), so they start now instead of after it. (A model whose
        KV cache cannot be merged gets no new jobs until its batch ends.)"""
        done = finished or (lambda job: None)
        with self.lock, torch.inference_mode():
            rows = self._pending(jobs, done)
            if rows is not None:
                rows = self._advance(rows, done)
            while True:
                if join is not None and (rows is None or mergeable(rows.cache)):
                    new = self._pending(join(0 if rows is None else len(rows.jobs)), done)
                    while new is not None and rows is not None and self._chunk(new):  # a step between chunks
                        rows = self._advance(rows, done)
                    if new is not None:
                        new = self._advance(new, done)  # the prefill's last pass: the first tokens
                    if rows is None or new is None:
                        rows = rows or new
                    else:
                        rows.merge(new)
                if rows is None:
                    return
                rows = self._advance(rows, done)

    def _chunk(self, new: Rows) -> bool:
        """Prefill the next ``prefill_chunk`` tokens' columns of ``new`` if more than that are left
        (the rest, with the first token, is :meth:`_advance`'s pass); whether it did."""
        if self.prefill_chunk is None:
            return False
        cols = max(1, self.prefill_chunk // len(new.jobs))
        if new.inp.shape[1] <= cols:
            return False
        seen = new.mask.shape[1] - new.inp.shape[1] + cols  # cached columns after this pass
        out = self.model(input_ids=new.inp[:, :cols], attention_mask=new.mask[:, :seen], position_ids=new.pos[:, :cols],
                         use_cache=True, **{self._cache_arg: new.cache}, **self._last_only)
        new.cache = out[self._cache_arg] if self._cache_arg in out else out.past_key_values
        new.inp, new.pos = new.inp[:, cols:], new.pos[:, cols:]
        return True

    def _pending(self, jobs: list[Job], done: Callable[[Job], None]) -> Rows | None:
        """Jobs set going: the expired and the one-token ones end here; the rest are one left-padded
        batch of prompts to prefill (``None``: none)."""
        score_prompts(self, [job for job in jobs if self._scored(job) and not self._expired(job)])
        batch = []
        for job in jobs:
            if job.req["max_tokens"] == 0:  # echo only: nothing to generate
                job.done = True
            elif not self._expired(job) and job.req["max_tokens"] == 1:
                self._step(job, job.first if job.first is not None else self._first_logits(job.ids))
            if job.done:
                done(job)
            else:
                batch.append(job)
        if not batch:
            return None
        inp, mask = self.left_padded(batch)
        return Rows(batch, inp, (mask.cumsum(1) - 1).clamp(min=0), mask, None)

    def left_padded(self, jobs: list[Job]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts of ``jobs`` as one left-padded batch: token ids and attention mask ``[B, width]``."""
        width = max(len(j.ids) for j in jobs)
        inp = torch.full((len(jobs), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(jobs), width), dtype=torch.long, device=self.device)
        for r, job in enumerate(jobs):
            inp[r, width - len(job.ids) :] = torch.tensor(job.ids)
            mask[r, width - len(job.ids) :] = 1
        return inp, mask

    def _advance(self, rows: Rows, done: Callable[[Job], None]) -> Rows | None:
        """One forward pass over ``rows`` and one token for each; the rows still running."""
        out = self.model(input_ids=rows.inp, attention_mask=rows.mask, position_ids=rows.pos, use_cache=True,
                         **{self._cache_arg: rows.cache}, **self._last_only)
        rows.cache = out[self._cache_arg] if self._cache_arg in out else out.past_key_values
        logits = out.logits[:, -1].float().cpu()
        nxt = torch.full((len(rows.jobs), 1), self.pad_id, dtype=torch.long)
        live = []
        for r, job in enumerate(rows.jobs):
            if job.done:  # ended earlier, kept by a cache that cannot drop rows
                continue
            if not self._expired(job):
                nxt[r, 0] = self._step(job, logits[r])
            if job.done:
                done(job)
            else:
                live.append(r)
        if not live:
            return None
        rows.inp, rows.pos = nxt.to(self.device), rows.pos[:, -1:] + 1
        rows.mask = torch.cat([rows.mask, torch.ones((len(rows.jobs), 1), dtype=torch.long, device=self.device)], 1)
        if hasattr(rows.cache, "batch_select_indices"):  # finished rows leave
            rows.select(live)
        return rows

    def result(self, job: Job) -> dict[str, Any]:
        """The OpenAI choice of a finished job, with its token counts (raises its error, if any)."""
        if job.error is not None:
            raise job.error
        text, _, stopped = cut_at_stop(self.tok, job.out_ids, job.req["stop"])
        finish = "stop" if stopped or (job.out_ids and job.out_ids[-1] == self.tok.eos_token_id) else "length"
        choice: dict[str, Any] = {"text": text, "finish_reason": finish, "logprobs": None}
        if job.req["logprobs"] is not None:
            choice["logprobs"] = {"tokens": job.tokens, "token_logprobs": job.token_lps, "top_logprobs": job.tops}
        if job.req["echo"]:
            echo_choice(self, job, choice)
        return {"choice": choice, "prompt_tokens": len(job.ids), "completion_tokens": len(job.out_ids)}

    def complete(self, prompt: str | list[int], req: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """One completion, now (a batch of one); a :class:`RequestError` if prompt + max_tokens exceed
        the model's context (400) or the ``deadline`` (``time.monotonic()``) passes (503)."""
        job = self.prepare(prompt, req, deadline)
        self.run_batch([job])
        return self.result(job)
