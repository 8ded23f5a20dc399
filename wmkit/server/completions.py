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
vLLM's order and arithmetic (:meth:`~wmkit.engine.job.Job.penalised`,
:class:`~wmkit.engine.sampling.Sampling`; a Gumbel-max watermark draws from the filtered
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
(:func:`wmkit.engine.echo.score_prompts`). Fields it does not implement (``best_of``, ``suffix``) are refused
unless they have their neutral value.
Bad requests get HTTP 400 with an OpenAI-style error.

``POST /v1/chat/completions`` takes ``messages`` (rendered by the tokenizer's chat template, after the
server's system prompt unless the request has its own), ``logprobs: true`` with ``top_logprobs``, and
otherwise the same fields (``max_completion_tokens`` as an alias of ``max_tokens``); its answer has
OpenAI's chat shape (``message``, ``logprobs.content[i].top_logprobs``).

``"stream": true`` (either endpoint) answers with server-sent events in OpenAI's chunk shapes
(``text_completion`` / ``chat.completion.chunk``, ``stream_options.include_usage``, ``data: [DONE]``);
the chunks' texts concatenate to the text the same request gets without streaming (:class:`~wmkit.server.stream.Stream`).

Concurrent requests are generated together: a worker batches the completions waiting for the
model (left-padded, one forward pass per step for the batch, each row with its own sampler, bias,
stop strings and watermark processor), so eight clients are served faster than one after another;
batching is continuous (:class:`~wmkit.server.batching.Batcher`): jobs that arrive mid-batch join it, and each is answered
when it ends.
A request may turn the watermark off with vLLM's ``"watermarking": false`` only on a server started
with ``--allow-opt-out`` (otherwise 403).

The request schema is :mod:`wmkit.server.schema`, the engine :mod:`wmkit.engine`.
Start it with ``wm serve --model PATH [--scheme kgw --key-file K]`` or :func:`create_app`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import Future
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine import Generator
from ..errors import RequestError
from . import defaults
from .batching import Batcher, timeout_error
from .http import base_app, error_response, internal_error, read_json
from .schema import chat_choice, parse_chat, parse_completion, usage
from .stream import Stream

__all__ = ["create_app"]


def create_app(generator: Generator, model_name: str = "wmkit", max_new_tokens: int = defaults.MAX_NEW_TOKENS,
               max_body_bytes: int = defaults.MAX_BODY_BYTES, timeout_s: float = defaults.TIMEOUT_S,
               allow_opt_out: bool = False, max_batch: int = defaults.MAX_BATCH,
               system_prompt: str | None = None) -> FastAPI:
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
            return error_response(timeout_error(futures, timeout_s))  # a job not yet started never runs
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

