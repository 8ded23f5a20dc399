"""An OpenAI-compatible ``/v1/completions`` and ``/v1/chat/completions`` server for a local causal LM,
optionally watermarking its output.

``POST /v1/completions`` takes OpenAI's fields ``prompt`` (a string, a list of token ids, or a list of
up to 16 of either), ``n`` (completions per prompt, at most 64 per request; choice ``i * n + j`` is
prompt ``i``'s ``j``-th, seeded ``seed + j`` as vLLM does), ``max_tokens`` (default 16, at most
``max_new_tokens``), ``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop``, ``logprobs`` (top-k
log-probs per generated token, ``k <= 20``), ``logit_bias`` (``{"token id": bias in [-100, 100]}``)
and ``presence_penalty`` / ``frequency_penalty``
(in [-2, 2]: OpenAI's ``logit -= frequency * count + presence * (count > 0)``, counts of the tokens
generated so far), plus vLLM's sampling fields ``top_k`` (0 or -1: off), ``min_p`` (in [0, 1]) and
``repetition_penalty`` (in [0.01, 10]; on the prompt's and the completion's tokens), applied in
vLLM's order and arithmetic (:meth:`Generator.penalised`,
:class:`~wmkit.watermark.text.sampling.Sampling`; a Gumbel-max watermark draws from the filtered
distribution), and vLLM's ``return_tokens_as_token_ids`` (tokens rendered ``"token_id:123"``,
so token strings that several ids decode to stay unambiguous). The log-probs are those of the
next-token distribution the token was chosen from: the model's, *with the logit bias and the
penalties* and, on a watermarking server, *after* the watermark (before the temperature and the
filters, as vLLM reports them; ``-inf`` shown as -9999.0, vLLM's floor). The distribution before the
watermark beside the token the watermark chose would show each chosen token's colour (one
greedy request per context), so it is given only by a server started with ``logprobs="raw"``
(``wm serve --logprobs raw``), which gives the key away.
``echo`` (not with ``stream``) puts the prompt before the completion and, with ``logprobs``, its tokens
and their log-probs (each given the tokens before it; the first has none) before the completion's;
``max_tokens`` may then be 0; the echoed prompts of a request (or of jobs that start together) are
scored in shared left-padded passes, whose last position also gives a one-token job its token
(:meth:`Generator._score_prompts`). Fields it does not implement (``best_of``, ``suffix``) are refused
unless they have their neutral value.
Bad requests get HTTP 400 with an OpenAI-style error.

``POST /v1/chat/completions`` takes ``messages`` (rendered by the tokenizer's chat template, after the
server's system prompt unless the request has its own), ``logprobs: true`` with ``top_logprobs``, and
otherwise the same fields (``max_completion_tokens`` as an alias of ``max_tokens``); its answer has
OpenAI's chat shape (``message``, ``logprobs.content[i].top_logprobs``).

``"stream": true`` (either endpoint) answers with server-sent events in OpenAI's chunk shapes
(``text_completion`` / ``chat.completion.chunk``, ``stream_options.include_usage``, ``data: [DONE]``);
the chunks' texts concatenate to the text the same request gets without streaming (:class:`Stream`).

Concurrent requests are generated together: a worker batches the completions waiting for the
model (left-padded, one forward pass per step for the batch, each row with its own sampler, bias,
stop strings and watermark processor), so eight clients are served faster than one after another;
batching is continuous (:class:`Batcher`): jobs that arrive mid-batch join it, and each is answered
when it ends.
A request may turn the watermark off with vLLM's ``"watermarking": false`` only on a server started
with ``--allow-opt-out`` (otherwise 403).

Start it with ``wm serve --model PATH [--scheme kgw --key-file K]`` or :func:`create_app`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .batching import MicroBatcher
from .http import RequestError, base_app, error_response, internal_error, read_json
from ..watermark.text.sampling import Sampling
from .rows import Rows, mergeable

MAX_PROMPTS = 16
MAX_CHOICES = 64  # prompts x n per request
UNSUPPORTED = {"best_of": (None, 1), "suffix": (None, "")}  # field: its neutral values
MAX_LOGPROBS = 20
LOGPROBS_MODES = ("sampled", "raw")  # after the watermark (default) / before it (reveals colours)
LOGPROB_FLOOR = -9999.0  # vLLM's floor for -inf in OpenAI responses (JSON has no infinity)
MAX_BIAS = 100.0
FIRST_CACHE = 64
PREFILL_CHUNK = 256  # prompt tokens per prefill pass of jobs that join a running batch
ECHO_ROWS = 512  # prompt positions per log-softmax of an echo
ECHO_POSITIONS = 2048  # prompt positions (rows x width) per batched forward pass that scores echoed prompts
ECHO_PADDING = 1.25  # at most this many positions (padding included) per prompt token in such a pass


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_completion(body: Any, vocab_size: int, max_new_tokens: int, max_chars: int = 20_000) -> dict[str, Any]:
    """The validated request: prompts (str or token-id lists), ``n`` completions of each, sampling, logprobs,
    bias; or :class:`RequestError`."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    if "prompt" not in body:
        raise RequestError("'prompt' is required", "prompt")
    p = body["prompt"]
    if isinstance(p, str) or _int_list(p):
        prompts = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) or _int_list(x) for x in p):
        prompts = list(p)
    else:
        raise RequestError("'prompt' must be a string, a list of token ids, or a non-empty list of those", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", "prompt")
    for i, x in enumerate(prompts):
        if isinstance(x, str) and not x:
            raise RequestError(f"prompt[{i}] is an empty string", "prompt")
        if isinstance(x, str) and len(x) > max_chars:
            raise RequestError(f"prompt[{i}] has {len(x)} characters; at most {max_chars}", "prompt")
        if isinstance(x, list) and (min(x) < 0 or max(x) >= vocab_size):
            raise RequestError(f"prompt[{i}] has token ids outside 0..{vocab_size - 1}", "prompt")

    def number(name: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
        v = body.get(name, default)
        if v is None:
            v = default
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if not ok or isinstance(v, bool) or not lo <= v <= hi:
            kind = "an integer" if integer else "a number"
            raise RequestError(f"'{name}' must be {kind} in [{lo:g}, {hi:g}], got {v!r}", name)
        return v

    req = {
        "prompts": prompts,
        "echo": body.get("echo", False) is True,
        "max_tokens": number("max_tokens", 16, 0 if body.get("echo") is True else 1, max_new_tokens, integer=True),
        "temperature": float(number("temperature", 1.0, 0.0, 2.0)),
        "top_p": float(number("top_p", 1.0, 1e-6, 1.0)),
        "logprobs": body.get("logprobs"),
        "seed": body.get("seed"),
        "ids": bool(body.get("return_tokens_as_token_ids", False)),
        "watermarking": body.get("watermarking", True),
    }
    if not (body.get("echo") is None or isinstance(body.get("echo"), bool)):
        raise RequestError("'echo' must be true or false", "echo")
    if not isinstance(req["watermarking"], bool):
        raise RequestError("'watermarking' must be true or false", "watermarking")
    if req["logprobs"] is not None:
        req["logprobs"] = number("logprobs", 0, 0, MAX_LOGPROBS, integer=True)
    if req["seed"] is not None and (not isinstance(req["seed"], int) or isinstance(req["seed"], bool)
                                    or not 0 <= req["seed"] < 2**63):
        raise RequestError("'seed' must be an integer in [0, 2**63)", "seed")
    req["n"] = number("n", 1, 1, MAX_CHOICES, integer=True)
    if len(prompts) * req["n"] > MAX_CHOICES:
        raise RequestError(f"{len(prompts)} prompts x n {req['n']} is more than {MAX_CHOICES} completions per request", "n")
    req["presence_penalty"] = float(number("presence_penalty", 0.0, -2.0, 2.0))
    req["frequency_penalty"] = float(number("frequency_penalty", 0.0, -2.0, 2.0))
    req["repetition_penalty"] = float(number("repetition_penalty", 1.0, 0.01, 10.0))
    req["top_k"] = max(0, number("top_k", 0, -1, 2**31 - 1, integer=True))  # -1 and 0: off (vLLM's and OpenAI clients' "none")
    req["min_p"] = float(number("min_p", 0.0, 0.0, 1.0))
    for name, neutral in UNSUPPORTED.items():
        if body.get(name) not in neutral:
            raise RequestError(f"'{name}' is not supported by this server (leave it out)", name)
    req["stream"] = body.get("stream", False)
    if not isinstance(req["stream"], bool):
        raise RequestError("'stream' must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not req["stream"] or not isinstance(options, dict)
                                or set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool)):
        raise RequestError("'stream_options' must be {\"include_usage\": true|false}, with 'stream': true", "stream_options")
    req["include_usage"] = bool((options or {}).get("include_usage", False))
    if req["echo"] and req["stream"]:
        raise RequestError("'echo' with 'stream' is not supported", "echo")
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict):
        raise RequestError("'logit_bias' must be an object {token id: bias}", "logit_bias")
    parsed: dict[int, float] = {}
    for k, v in bias.items():
        try:
            t = int(k)
        except (TypeError, ValueError):
            raise RequestError(f"logit_bias key {k!r} is not a token id", "logit_bias") from None
        if not 0 <= t < vocab_size:
            raise RequestError(f"logit_bias token id {t} is outside 0..{vocab_size - 1}", "logit_bias")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not -MAX_BIAS <= v <= MAX_BIAS:
            raise RequestError(f"logit_bias values must be numbers in [-100, 100], got {v!r}", "logit_bias")
        parsed[t] = float(v)
    req["logit_bias"] = parsed
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("'stop' must be a string or a list of at most 4 non-empty strings", "stop")
    req["stop"] = stops
    return req


def _flat_message(m: Any, i: int) -> dict[str, str]:
    """One chat message with string content: OpenAI's list form (``[{"type": "text", "text": ...}]``)
    is joined with newlines, as vLLM renders it; other part types are refused (a text model)."""
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
        raise RequestError(f"messages[{i}] must be {{\"role\": system|user|assistant, \"content\": ...}}", "messages")
    content = m.get("content")
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(f"messages[{i}].content[{k}]: only text parts are served (got {kind!r})", "messages")
            parts.append(part["text"])
        content = "\n".join(parts)
    if not isinstance(content, str):
        raise RequestError(f"messages[{i}].content must be a string or a list of text parts", "messages")
    return {"role": m["role"], "content": content}

def parse_chat(body: Any, tokenizer: Any, vocab_size: int, max_new_tokens: int, system_prompt: str | None = None,
               max_chars: int = 20_000) -> dict[str, Any]:
    """A ``/v1/chat/completions`` request as a completion request: ``messages`` rendered through the
    tokenizer's chat template (with ``system_prompt`` first unless the request brings its own system
    message) into one token-id prompt; OpenAI's ``logprobs: true`` + ``top_logprobs: k`` become ``logprobs: k``."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    if body.get("echo") not in (None, False):
        raise RequestError("'echo' is a /v1/completions field", "echo")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list of {role, content}", "messages")
    msgs = [_flat_message(m, i) for i, m in enumerate(msgs)]
    if sum(len(m["content"]) for m in msgs) > max_chars:
        raise RequestError(f"the messages have more than {max_chars} characters", "messages")
    if system_prompt is not None and msgs[0]["role"] != "system":  # "" too: it replaces a template's default
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model has no chat template: use /v1/completions", None)
    try:
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    except Exception as e:  # noqa: BLE001 - a template that refuses the messages (say, roles out of order) is a 400
        raise RequestError(f"the chat template rejects these messages: {str(e)[:200]}", "messages") from None
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    lp = body.get("logprobs", False)
    if not isinstance(lp, bool):
        raise RequestError("'logprobs' must be true or false", "logprobs")
    top = body.get("top_logprobs")
    if top is not None and not lp:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    fields = {k: v for k, v in body.items() if k not in ("messages", "logprobs", "top_logprobs", "max_completion_tokens")}
    if body.get("max_completion_tokens") is not None:
        fields["max_tokens"] = body["max_completion_tokens"]
    fields["logprobs"] = (top if top is not None else 0) if lp else None
    return parse_completion({**fields, "prompt": ids}, vocab_size, max_new_tokens)


def chat_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A completion choice in the chat shape (``message``; ``logprobs.content`` with ``top_logprobs`` lists)."""
    out: dict[str, Any] = {"message": {"role": "assistant", "content": choice["text"]},
                           "finish_reason": choice["finish_reason"], "logprobs": None}
    lp = choice.get("logprobs")
    if lp is not None:
        out["logprobs"] = {"content": [
            {"token": t, "logprob": v, "top_logprobs": [{"token": a, "logprob": b} for a, b in top.items()]}
            for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])]}
    return out


class StopWatch:
    """Finds stop strings in a growing completion in O(total length): decodes only a few trailing
    tokens per step (vLLM's incremental detokenization: the text of ``ids[prefix:]`` minus that of
    ``ids[prefix:read]``), and searches only the new text plus ``longest stop - 1`` characters.

    ``text`` is the completion's text so far (whole characters only); it is kept when there are
    stop strings or ``track`` is set (a streamed request).
    """

    def __init__(self, tokenizer: Any, stops: list[str], track: bool = False) -> None:
        self.tok, self.stops, self.track = tokenizer, stops, track
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.prefix = self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> bool:
        """Append ``token``; True once a stop string has appeared."""
        self.ids.append(token)
        if not self.stops and not self.track:
            return False
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):  # an incomplete character: wait for more
            return False
        start = max(0, len(self.text) - self.keep)
        self.text += now[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        tail = self.text[start:]
        return any(s in tail for s in self.stops)


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
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None  # None: unbounded
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self.lock = threading.RLock()  # the model runs one batch at a time
        import inspect  # transformers 5 names the KV cache `cache` (`past_key_values` is deprecated)

        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # no prompt-wide logits
        self._first: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # prompt -> next-token logits

    def _first_logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits of a prompt, from a small LRU cache (repeated one-token queries are common)."""
        key = tuple(ids)
        if key in self._first:
            self._first.move_to_end(key)
            return self._first[key]
        logits = self.model(input_ids=torch.tensor([ids]), **self._last_only).logits[0, -1].float()
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

    @staticmethod
    def penalised(job: Job, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [V] (float32) with ``job``'s logit bias and penalties, as vLLM's sampler applies
        them (``vllm/v1/worker/gpu/sample/penalties.py``): the bias, then the repetition penalty on
        every token of the prompt or the completion so far (a positive logit divided by it, a
        negative one multiplied), then ``frequency * count``, then ``presence * (count > 0)`` (counts
        of the completion's tokens)."""
        req, raw = job.req, logits.float() + job.bias
        if job.counts is None:
            return raw
        generated = job.counts > 0
        if job.in_prompt is not None:
            scale = torch.where(job.in_prompt | generated, torch.tensor(req["repetition_penalty"], dtype=torch.float32), 1.0)
            raw = raw * torch.where(raw > 0, 1.0 / scale, scale)
        return raw - req["frequency_penalty"] * job.counts - req["presence_penalty"] * generated

    def _step(self, job: Job, logits: torch.Tensor) -> int:
        """Choose ``job``'s next token from the model's next-token ``logits`` [V]: bias and penalties
        (:meth:`penalised`), the watermark, then greedy or sampled at the temperature after the
        min-p / top-k / top-p filters (:class:`~wmkit.watermark.text.sampling.Sampling`, vLLM's
        order); record it."""
        req = job.req
        raw = self.penalised(job, logits)
        scores = raw.clone()
        n = len(job.ids) + len(job.out_ids)
        if job.processor is not None:
            scores = job.processor(job.context[:, :n], scores[None])[0]
        if req["temperature"] == 0:
            t = int(torch.argmax(scores))
        else:
            probs = torch.softmax(job.sampling.process(scores).double(), -1)
            t = int(torch.multinomial(probs, 1, generator=job.gen))
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
        self._score_prompts([job for job in jobs if self._scored(job) and not self._expired(job)])
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
        inp, mask = self._left_padded(batch)
        return Rows(batch, inp, (mask.cumsum(1) - 1).clamp(min=0), mask, None)

    def _left_padded(self, jobs: list[Job]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts of ``jobs`` as one left-padded batch: token ids and attention mask ``[B, width]``."""
        width = max(len(j.ids) for j in jobs)
        inp = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for r, job in enumerate(jobs):
            inp[r, width - len(job.ids) :] = torch.tensor(job.ids)
            mask[r, width - len(job.ids) :] = 1
        return inp, mask

    def _score_prompts(self, jobs: list[Job]) -> None:
        """Score the prompts of echoing ``jobs`` (``job.echo``: each token's log-prob given the tokens
        before it, the model's own with no bias or penalty, and its top-k; the first token has none)
        and keep each prompt's next-token logits (``job.first``: a one-token job needs no other pass).
        The prompts go through the model together, shortest first, left-padded, in passes of at most
        ``ECHO_POSITIONS`` positions (rows x width; a longer prompt alone) and at most
        ``ECHO_PADDING`` positions per prompt token (padding is compute spent for nothing, and on a
        CPU a pass costs what its positions cost), so the prompts of an evaluation harness's batch
        cost a few passes, not two each; each row's log-softmax is taken
        ``ECHO_ROWS`` positions at a time (a long prompt's [L, V] in float64 at once would take
        gigabytes)."""
        group: list[Job] = []
        tokens = 0
        for job in sorted(jobs, key=lambda j: len(j.ids)):  # the widest last: a group's width is its last prompt's
            width = (len(group) + 1) * len(job.ids)
            if group and (width > ECHO_POSITIONS or width > ECHO_PADDING * (tokens + len(job.ids))):
                self._score_group(group)
                group, tokens = [], 0
            group.append(job)
            tokens += len(job.ids)
        if group:
            self._score_group(group)

    def _score_group(self, jobs: list[Job]) -> None:
        inp, mask = self._left_padded(jobs)
        logits = self.model(input_ids=inp, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        for r, job in enumerate(jobs):
            k, ids, row = job.req["logprobs"], job.req["ids"], logits[r, inp.shape[1] - len(job.ids) :]
            own: list[float | None] = [None]
            tops: list[dict[str, float] | None] = [None]
            for a in range(0, len(job.ids) - 1, ECHO_ROWS):
                lp = torch.log_softmax(row[a : min(a + ECHO_ROWS, len(job.ids) - 1)].double(), -1)
                own += lp.gather(1, torch.tensor(job.ids[a + 1 : a + 1 + len(lp)])[:, None])[:, 0].tolist()
                best = torch.topk(lp, k, dim=-1)  # one call for the piece, not one per position
                tops += [{self.token_str(j, ids): v for j, v in zip(js, vs)}
                         for js, vs in zip(best.indices.tolist(), best.values.tolist())]
            job.echo, job.first = (own, tops), row[-1].float().clone()

    def _advance(self, rows: Rows, done: Callable[[Job], None]) -> Rows | None:
        """One forward pass over ``rows`` and one token for each; the rows still running."""
        out = self.model(input_ids=rows.inp, attention_mask=rows.mask, position_ids=rows.pos, use_cache=True,
                         **{self._cache_arg: rows.cache}, **self._last_only)
        rows.cache = out[self._cache_arg] if self._cache_arg in out else out.past_key_values
        logits = out.logits[:, -1]
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
        rows.inp, rows.pos = nxt, rows.pos[:, -1:] + 1
        rows.mask = torch.cat([rows.mask, torch.ones((len(rows.jobs), 1), dtype=torch.long)], 1)
        if hasattr(rows.cache, "batch_select_indices"):  # finished rows leave
            rows.select(live)
        return rows

    def result(self, job: Job) -> dict[str, Any]:
        """The OpenAI choice of a finished job, with its token counts (raises its error, if any)."""
        if job.error is not None:
            raise job.error
        text = self.tok.decode(job.out_ids, skip_special_tokens=True)
        finish = "length"
        for s in job.req["stop"]:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        if job.out_ids and job.out_ids[-1] == self.tok.eos_token_id:
            finish = "stop"
        choice: dict[str, Any] = {"text": text, "finish_reason": finish, "logprobs": None}
        if job.req["logprobs"] is not None:
            choice["logprobs"] = {"tokens": job.tokens, "token_logprobs": job.token_lps, "top_logprobs": job.tops}
        if job.req["echo"]:
            self._echo(job, choice)
        return {"choice": choice, "prompt_tokens": len(job.ids), "completion_tokens": len(job.out_ids)}

    def _echo(self, job: Job, choice: dict[str, Any]) -> None:
        """Put the prompt before ``choice``'s text and, with log-probs, its tokens and their log-probs
        (scored when the job started: :meth:`_score_prompts`) before the completion's."""
        prompt = job.prompt if job.prompt is not None else self.tok.decode(job.ids)
        choice["text"] = prompt + choice["text"]
        if job.req["logprobs"] is None:
            return
        if job.echo is None:
            raise RuntimeError("an echoed job finished without its prompt scored")
        own, tops = job.echo
        tokens = [self.token_str(t, job.req["ids"]) for t in job.ids]
        out = choice["logprobs"]
        choice["logprobs"] = {"tokens": tokens + out["tokens"], "token_logprobs": own + out["token_logprobs"],
                              "top_logprobs": tops + out["top_logprobs"]}

    def complete(self, prompt: str | list[int], req: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """One completion, now (a batch of one); a :class:`RequestError` if prompt + max_tokens exceed
        the model's context (400) or the ``deadline`` (``time.monotonic()``) passes (503)."""
        job = self.prepare(prompt, req, deadline)
        self.run_batch([job])
        return self.result(job)


class Batcher(MicroBatcher[Job]):
    """The completions' :class:`~wmkit.server.batching.MicroBatcher`, continuous: up to ``max_batch``
    jobs run in lockstep by :meth:`Generator.run_batch`, and jobs queued while a batch runs join it
    (while fewer than ``max_batch`` rows run). Each future resolves to :meth:`Generator.result` (or
    raises its error) the moment its job ends. More than ``max_queue`` waiting jobs: new requests
    get a 503 at once.

    Joining costs a forward pass of its own (the newcomers' prefill), so
    waiting jobs join a running batch only once they are at least ``join_ratio`` times as many as
    the rows running, or have waited ``join_wait_steps`` steps (the rule of TGI's router, with its
    waiting-served ratio and maximum waiting tokens); into an idle model they go at once
    (after ``gather_s`` seconds of gathering company; a one-token answer from cached prompt logits
    never waits). On 2 CPU cores a uniform load then runs at 0.97-1.12x the lockstep batcher's
    throughput and a mixed one (4/16/64 tokens, 16 clients) at 1.53x (``benchmarks/serve_batching.py``)."""

    def __init__(self, generator: Generator, max_batch: int = 16, max_queue: int = 256, gather_s: float = 0.02,
                 join_ratio: float = 0.5, join_wait_steps: int = 8):
        if join_ratio < 0 or join_wait_steps < 0:
            raise ValueError(f"need join_ratio >= 0 and join_wait_steps >= 0; got {join_ratio}, {join_wait_steps}")
        self.gen, self.join_ratio, self.join_wait_steps = generator, join_ratio, join_wait_steps
        self._held_back = 0  # consecutive steps with jobs waiting that did not join
        super().__init__(self._run, generator.lock, max_batch=max_batch, max_queue=max_queue, gather_s=gather_s,
                         eager=generator.cached, what="completions")

    def _admit(self, running: int) -> list[Job]:
        """The jobs that join now, with ``running`` rows running (see the class docstring)."""
        if not self.waiting:
            self._held_back = 0
            return []
        if running and self.waiting < self.join_ratio * running and self._held_back < self.join_wait_steps:
            self._held_back += 1
            return []
        self._held_back = 0
        return self.join(self.max_batch - running)

    def close(self, timeout: float | None = 60.0) -> bool:
        """:meth:`MicroBatcher.close`, and the jobs still generating end at their next step (a 503)."""
        super().close(timeout=0)  # no new jobs from here on
        for job, _ in list(self._running):
            job.error = RequestError("the server is shutting down", None, 503)
            job.cancelled = True
        return super().close(timeout)

    def _outcome(self, job: Job) -> Any:
        try:
            return self.gen.result(job)
        except RequestError as e:
            return e

    def _run(self, jobs: list[Job]) -> list[Any]:
        self.gen.run_batch(jobs, join=self._admit,
                           finished=lambda job: self.finish(job, self._outcome(job)))
        return [None] * len(jobs)  # every job was finished as it ended


def _timeout_error(futures: list[Future], timeout_s: float) -> RequestError:
    """The 503 of a request past its deadline: "busy" if a job never got the model (it is cancelled
    and never runs), "timed out" if it was generating."""
    waited = any(f.cancel() for f in futures)
    msg = (f"the server is busy: no model time within {timeout_s:g} s; retry later" if waited
           else "the request timed out; ask for fewer tokens or retry")
    return RequestError(msg, None, 503)


def usage(results: list[dict[str, Any]], n: int) -> dict[str, int]:
    """OpenAI's ``usage`` of a request's results (:meth:`Generator.result`, ``n`` per prompt,
    prompt-major): each prompt's tokens counted once, every completion's tokens."""
    pt, ct = sum(r["prompt_tokens"] for r in results[::n]), sum(r["completion_tokens"] for r in results)
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _json(response: JSONResponse) -> Any:
    """The body of an (error) response, as the payload of an SSE error event."""
    return json.loads(bytes(response.body))


class Stream:
    """Server-sent events for a request with ``"stream": true``, in OpenAI's chunk shapes.

    Each job's listener (called by the batch worker after every token) hands the completion's text so
    far to the event loop; a chunk is sent whenever the text grows by whole characters, holding back
    the last ``longest stop - 1`` characters (they may begin a stop string, which is never sent) --
    vLLM's rule. The job's last chunk carries the rest of the finished completion's text and its
    ``finish_reason`` (sent when the job ends, not when its batch does), so the chunks' texts concatenate to the text of the same request without
    ``stream`` (for tokenizers whose incremental decoding agrees with decoding the whole, as vLLM
    assumes: byte-level BPE and SentencePiece do). A chunk carries the log-probs of the tokens generated since the previous one. Then a
    usage chunk (``stream_options.include_usage``) and ``data: [DONE]``. An error after the first
    byte (the deadline) is an ``{"error": ...}`` event, then the stream ends. A client that goes
    away cancels its jobs: they stop at their next step.
    """

    def __init__(self, jobs: list[Job], req: dict[str, Any], chat: bool, head: dict[str, Any],
                 result: Callable[[Job], dict[str, Any]]) -> None:
        self.jobs, self.req, self.chat, self.head, self.result = jobs, req, chat, head, result
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, str | None, int]] = asyncio.Queue()
        self.hold = max((len(x) for x in req["stop"]), default=1) - 1
        for i, job in enumerate(jobs):
            job.listener = lambda job, i=i: self._post(i, None if job.done else job.watch.text, len(job.out_ids))

    def _post(self, i: int, text: str | None, n_tokens: int = -1) -> None:
        """From the worker thread: job ``i`` has ``text`` after ``n_tokens`` tokens (``None``: its last
        token), both taken once the token is fully recorded (its log-probs too); ``n_tokens = -1``:
        its future has resolved."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (i, text, n_tokens))
        except RuntimeError:  # the event loop is gone (server shutting down): nobody to tell
            pass

    def watch(self, futures: list[Future]) -> None:
        """Post each job's end when its future resolves (result or error)."""
        for i, f in enumerate(futures):
            f.add_done_callback(lambda f, i=i: self._post(i, None))

    def _chunk(self, i: int, text: str, lo: int, hi: int, finish: str | None) -> dict[str, Any]:
        job, lp = self.jobs[i], None
        if self.req["logprobs"] is not None:
            lp = {"tokens": job.tokens[lo:hi], "token_logprobs": job.token_lps[lo:hi], "top_logprobs": job.tops[lo:hi]}
        if not self.chat:
            choice = {"index": i, "text": text, "logprobs": lp, "finish_reason": finish}
        else:
            choice = {**chat_choice({"text": text, "finish_reason": finish, "logprobs": lp}), "index": i}
            choice["delta"] = {"content": text} if text else {}
            del choice["message"]
        return {**self.head, "choices": [choice]}

    async def events_for(self, futures: list[Future], deadline: float, timeout_s: float) -> AsyncIterator[str]:
        """The event stream of ``futures`` (one per job), each chunk as an SSE ``data:`` line."""
        n = len(self.jobs)
        sent, sent_tokens, finished, results = [""] * n, [0] * n, [False] * n, [{}] * n
        try:
            if self.chat:
                for i in range(n):
                    yield _sse({**self.head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                          "logprobs": None, "finish_reason": None}]})
            while not all(finished):
                try:
                    i, text, hi = await asyncio.wait_for(self.events.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    yield _sse(_json(error_response(_timeout_error(futures, timeout_s))))
                    return
                if finished[i]:
                    continue
                if text is not None:  # still generating: whole characters, minus what may begin a stop string
                    delta = text[len(sent[i]) : max(len(sent[i]), len(text) - self.hold)]
                    if delta:
                        yield _sse(self._chunk(i, delta, sent_tokens[i], hi, None))
                        sent[i], sent_tokens[i] = sent[i] + delta, hi
                    continue
                try:  # its last token (it has ended: nothing moves; its batch may still run), or its future
                    res = self.result(self.jobs[i]) if hi >= 0 else futures[i].result()
                except RequestError as e:
                    yield _sse(_json(error_response(e)))
                    return
                except Exception as e:  # noqa: BLE001 - a fault of the batch: an error event, as internal_error
                    yield _sse(_json(internal_error(e)))
                    return
                hi, final = len(self.jobs[i].out_ids), res["choice"]["text"]
                rest = final[len(sent[i]) :] if final.startswith(sent[i]) else ""
                yield _sse(self._chunk(i, rest, sent_tokens[i], hi, res["choice"]["finish_reason"]))
                finished[i], results[i] = True, res
            if self.req["include_usage"]:
                yield _sse({**self.head, "choices": [], "usage": usage(results, self.req["n"])})
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away mid-stream
            for job, f in zip(self.jobs, futures):
                if not f.done():
                    f.cancel()
                    job.cancelled = True


def create_app(generator: Generator, model_name: str = "wmkit", max_new_tokens: int = 512,
               max_body_bytes: int = 1024 * 1024, timeout_s: float = 120.0, allow_opt_out: bool = False,
               max_batch: int = 16, system_prompt: str | None = None) -> FastAPI:
    """A FastAPI app serving ``generator`` at ``/v1/completions`` and ``/v1/chat/completions``
    (+ ``/v1/models``, ``/health``).

    Concurrent requests are generated together (:class:`Batcher`, up to ``max_batch`` completions
    per batch). Chat requests are rendered through the tokenizer's chat template, with
    ``system_prompt`` as the first message unless a request brings its own. A request may ask for
    unmarked text with vLLM's ``"watermarking": false`` only if
    the server allows it (``allow_opt_out``; otherwise 403). Every error is JSON in OpenAI's shape:
    4xx for a bad request (body, fields, context length), 503 when a request waits for the model or
    generates past ``timeout_s`` seconds or the queue is full, 500 (still JSON) only for a fault of
    the server itself.
    """
    from starlette.concurrency import run_in_threadpool

    batcher = Batcher(generator, max_batch=max_batch)
    app = base_app("wmkit completions", model_name, on_shutdown=batcher.close)
    app.state.batcher = batcher

    async def generate(request: Request, parse: Any, chat: bool) -> Any:
        try:
            body = await read_json(request, max_body_bytes)
            req = parse(body)
            if not req["watermarking"] and not allow_opt_out:
                raise RequestError("this server does not let a request turn its watermark off (start it with "
                                   "--allow-opt-out to allow \"watermarking\": false)", "watermarking", 403)
        except RequestError as e:
            return error_response(e)

        deadline = time.monotonic() + timeout_s
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
                "object": ("chat.completion" if chat else "text_completion") + (".chunk" if chat and req["stream"] else ""),
                "created": int(time.time()), "model": str(body.get("model") or model_name)}
        futures: list[Future] = []
        try:
            jobs = await run_in_threadpool(generator.prepare_all, req, deadline)
            if req["stream"]:  # errors up to here are still plain JSON responses with their status
                stream = Stream(jobs, req, chat, head, generator.result)
                futures = batcher.submit(jobs)
                stream.watch(futures)
                return StreamingResponse(stream.events_for(futures, deadline, timeout_s),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            futures = batcher.submit(jobs)
            results = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)),
                                             max(0.0, deadline - time.monotonic()))
        except RequestError as e:
            return error_response(e)
        except asyncio.TimeoutError:
            return error_response(_timeout_error(futures, timeout_s))  # a job not yet started never runs
        except Exception as e:  # noqa: BLE001 - a server fault is still a JSON error, never a bare 500 page
            return internal_error(e)
        choices = [{**(chat_choice(r["choice"]) if chat else r["choice"]), "index": i} for i, r in enumerate(results)]
        return JSONResponse({**head, "choices": choices, "usage": usage(results, req["n"])})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, lambda b: parse_completion(b, generator.vocab_size, max_new_tokens), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, lambda b: parse_chat(b, generator.tok, generator.vocab_size, max_new_tokens,
                                                            system_prompt), chat=True)

    return app
