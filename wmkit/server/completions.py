"""An OpenAI-compatible ``/v1/completions`` server for a local causal LM, optionally watermarking its output.

``POST /v1/completions`` takes OpenAI's fields ``prompt`` (a string, a list of token ids, or a list of
up to 16 of either), ``max_tokens`` (default 16, at most ``max_new_tokens``), ``temperature`` (0 =
greedy), ``top_p``, ``seed``, ``stop``, ``logprobs`` (top-k log-probs per generated token, ``k <= 20``)
and ``logit_bias`` (``{"token id": bias in [-100, 100]}``), plus vLLM's ``return_tokens_as_token_ids``
(tokens rendered ``"token_id:123"``, so token strings that several ids decode to stay unambiguous).
The log-probs are those of the model's next-token distribution *with the logit bias* and *before*
the watermark (as vLLM reports raw log-probs): the watermark changes which token is sampled, not
what the model says about its distribution. Bad requests get HTTP 400 with an OpenAI-style error.

Start it with ``wm serve --model PATH [--scheme kgw --key-file K]`` or :func:`create_app`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .http import RequestError, base_app, error_response, internal_error, read_json

MAX_PROMPTS = 16
MAX_LOGPROBS = 20
MAX_BIAS = 100.0
FIRST_CACHE = 64


def _int_list(x: Any) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_completion(body: Any, vocab_size: int, max_new_tokens: int, max_chars: int = 20_000) -> dict[str, Any]:
    """The validated request: prompts (str or token-id lists), sampling, logprobs, bias; or :class:`RequestError`."""
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
        "max_tokens": number("max_tokens", 16, 1, max_new_tokens, integer=True),
        "temperature": float(number("temperature", 1.0, 0.0, 2.0)),
        "top_p": float(number("top_p", 1.0, 1e-6, 1.0)),
        "logprobs": body.get("logprobs"),
        "seed": body.get("seed"),
        "ids": bool(body.get("return_tokens_as_token_ids", False)),
    }
    if req["logprobs"] is not None:
        req["logprobs"] = number("logprobs", 0, 0, MAX_LOGPROBS, integer=True)
    if req["seed"] is not None and (not isinstance(req["seed"], int) or isinstance(req["seed"], bool)
                                    or not 0 <= req["seed"] < 2**63):
        raise RequestError("'seed' must be an integer in [0, 2**63)", "seed")
    if body.get("n", 1) != 1 or body.get("echo") or body.get("stream") or body.get("best_of", 1) != 1:
        raise RequestError("n, best_of, echo and stream are not supported", None)
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


class StopWatch:
    """Finds stop strings in a growing completion in O(total length): decodes only a few trailing
    tokens per step (vLLM's incremental detokenization: the text of ``ids[prefix:]`` minus that of
    ``ids[prefix:read]``), and searches only the new text plus ``longest stop - 1`` characters."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tok, self.stops = tokenizer, stops
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.prefix = self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> bool:
        """Append ``token``; True once a stop string has appeared."""
        self.ids.append(token)
        if not self.stops:
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


class Generator:
    """Greedy or sampled generation with logit bias, an optional watermark scheme, and top-k log-probs.

    ``scheme`` is any text scheme (its processor is built per completion, for the request's sampling
    settings); ``scheme_tokenizer`` is the tokenizer it is given (default ``tokenizer``).
    """

    def __init__(self, model: Any, tokenizer: Any, scheme: Any = None, scheme_tokenizer: Any = None) -> None:
        self.model, self.tok, self.scheme = model, tokenizer, scheme
        self.scheme_tok = scheme_tokenizer if scheme_tokenizer is not None else tokenizer
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None  # None: unbounded
        self.lock = threading.Lock()
        self._first: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # prompt -> next-token logits

    def _first_logits(self, ids: list[int]) -> torch.Tensor:
        """Next-token logits of a prompt, from a small LRU cache (repeated one-token queries are common)."""
        key = tuple(ids)
        if key in self._first:
            self._first.move_to_end(key)
            return self._first[key]
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        self._first[key] = logits
        if len(self._first) > FIRST_CACHE:
            self._first.popitem(last=False)
        return logits

    def token_str(self, t: int, ids: bool) -> str:
        return f"token_id:{t}" if ids else self.tok.decode([t])

    def complete(self, prompt: str | list[int], req: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """One completion; a :class:`RequestError` if prompt + max_tokens exceed the model's context (400)
        or the ``deadline`` (``time.monotonic()``) passes (503)."""
        ids = self.tok(prompt, return_tensors="pt").input_ids[0].tolist() if isinstance(prompt, str) else list(prompt)
        if self.context is not None and len(ids) + req["max_tokens"] > self.context:
            raise RequestError(f"the prompt has {len(ids)} tokens; with max_tokens {req['max_tokens']} that exceeds the "
                               f"model's context of {self.context} tokens", "prompt")
        bias = torch.zeros(self.vocab_size, dtype=torch.float32)
        for t, b in req["logit_bias"].items():
            bias[t] = b
        gen = torch.Generator().manual_seed(req["seed"]) if req["seed"] is not None else None
        out_ids: list[int] = []
        tokens, token_lps, tops = [], [], []
        past, inp = None, torch.tensor([ids])
        context = torch.tensor(ids + [0] * req["max_tokens"])[None]  # prompt + completion, filled in place
        watch = StopWatch(self.tok, req["stop"])
        # one processor per completion: a Gumbel-max scheme samples at this request's temperature and top_p
        processor = (self.scheme.processor(self.scheme_tok, temperature=req["temperature"], top_p=req["top_p"])
                     if self.scheme is not None else None)
        with torch.inference_mode():
            for step in range(req["max_tokens"]):
                if deadline is not None and time.monotonic() > deadline:
                    raise RequestError("the request timed out; ask for fewer tokens or retry", None, 503)
                if step == 0 and req["max_tokens"] == 1:
                    raw = self._first_logits(ids) + bias
                else:
                    o = self.model(input_ids=inp, past_key_values=past, use_cache=True)
                    past = o.past_key_values
                    raw = o.logits[0, -1].float() + bias
                lp = torch.log_softmax(raw.double(), -1)
                scores = raw.clone()
                if processor is not None:
                    scores = processor(context[:, : len(ids) + len(out_ids)], scores[None])[0]
                if req["temperature"] == 0:
                    t = int(torch.argmax(scores))
                else:
                    probs = torch.softmax(scores.double() / req["temperature"], -1)
                    if req["top_p"] < 1:
                        sp, si = torch.sort(probs, descending=True)
                        keep = torch.cumsum(sp, 0) - sp < req["top_p"]
                        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
                    t = int(torch.multinomial(probs, 1, generator=gen))
                out_ids.append(t)
                context[0, len(ids) + len(out_ids) - 1] = t
                if req["logprobs"] is not None:
                    tokens.append(self.token_str(t, req["ids"]))
                    token_lps.append(float(lp[t]))
                    k = req["logprobs"]
                    top = torch.topk(lp, k).indices.tolist() if k else []
                    tops.append({self.token_str(int(i), req["ids"]): float(lp[i]) for i in top})
                if t == self.tok.eos_token_id:
                    break
                if watch.add(t):
                    break
                inp = torch.tensor([[t]])
        text = self.tok.decode(out_ids, skip_special_tokens=True)
        finish = "length"
        for s in req["stop"]:
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        if out_ids and out_ids[-1] == self.tok.eos_token_id:
            finish = "stop"
        choice: dict[str, Any] = {"text": text, "finish_reason": finish, "logprobs": None}
        if req["logprobs"] is not None:
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops}
        return {"choice": choice, "prompt_tokens": len(ids), "completion_tokens": len(out_ids)}


def create_app(generator: Generator, model_name: str = "wmkit", max_new_tokens: int = 512,
               max_body_bytes: int = 1024 * 1024, timeout_s: float = 120.0) -> FastAPI:
    """A FastAPI app serving ``generator`` at ``/v1/completions`` (+ ``/v1/models``, ``/health``).

    Every error is JSON in OpenAI's shape: 4xx for a bad request (body, fields, context length),
    503 when a request waits for the model or generates past ``timeout_s`` seconds, 500 (still JSON)
    only for a fault of the server itself.
    """
    from starlette.concurrency import run_in_threadpool

    app = base_app("wmkit completions", model_name)

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        try:
            body = await read_json(request, max_body_bytes)
            req = parse_completion(body, generator.vocab_size, max_new_tokens)
        except RequestError as e:
            return error_response(e)

        deadline = time.monotonic() + timeout_s

        def work() -> list[dict[str, Any]]:
            if not generator.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise RequestError(f"the server is busy: no model time within {timeout_s:g} s; retry later", None, 503)
            try:
                return [generator.complete(p, req, deadline) for p in req["prompts"]]
            finally:
                generator.lock.release()

        try:
            results = await run_in_threadpool(work)
        except RequestError as e:
            return error_response(e)
        except Exception as e:  # noqa: BLE001 - a server fault is still a JSON error, never a bare 500 page
            return internal_error(e)
        choices = [{**r["choice"], "index": i} for i, r in enumerate(results)]
        pt, ct = sum(r["prompt_tokens"] for r in results), sum(r["completion_tokens"] for r in results)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": str(body.get("model") or model_name),
            "choices": choices,
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        })

    return app
