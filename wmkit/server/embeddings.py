"""An OpenAI-compatible ``/v1/embeddings`` server that returns (watermarked) embeddings.

``POST /v1/embeddings`` takes ``{"input": str | [str, ...], "model": str, "encoding_format":
"float" | "base64"}`` and answers as OpenAI does (``{"object": "list", "data": [{"object":
"embedding", "index": i, "embedding": ...}], "model", "usage"}``; ``base64`` is little-endian float32,
what the ``openai`` client asks for by default). Bad requests get HTTP 4xx with an OpenAI-style
``{"error": {"message", "type", "param", "code"}}``: a body that is not JSON, no or empty input, an
empty string, a non-string item (token-id input is not supported), more than ``max_inputs`` texts,
a text longer than ``max_chars`` characters, a body over ``max_body_bytes`` (413); a full queue
gets 503. Concurrent requests are encoded together (see :func:`create_app`).
``GET /v1/models`` lists the one model; ``GET /health`` answers ``{"status": "ok"}``.

Start it with ``wm serve-embeddings --scheme espew --key-file K`` or :func:`create_app`.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from ..encoders import Encoder, token_counts
from .batching import MicroBatcher
from .http import RequestError, base_app, error_response, internal_error, read_json

MAX_INPUTS = 2048
MAX_CHARS = 20_000
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_BATCH = 256  # texts encoded together (the encoder runs them in length-sorted chunks)
MAX_QUEUE = 8192  # texts waiting


def parse_request(
    body: Any, dim: int | None = None, max_inputs: int = MAX_INPUTS, max_chars: int = MAX_CHARS
) -> tuple[list[str], str]:
    """``(texts, encoding_format)`` of a decoded JSON request, or a :class:`RequestError`."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", param=None)
    if "input" not in body:
        raise RequestError("'input' is required: a string or a list of strings")
    raw = body["input"]
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list):
        raise RequestError(f"'input' must be a string or a list of strings, got {type(raw).__name__}")
    if not texts:
        raise RequestError("'input' is empty; send at least one string")
    if len(texts) > max_inputs:
        raise RequestError(f"'input' has {len(texts)} items; at most {max_inputs} per request")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            kind = "token ids" if isinstance(t, (int, list)) else type(t).__name__
            raise RequestError(f"input[{i}] is {kind}; only strings are supported")
        if not t.strip():
            raise RequestError(f"input[{i}] is an empty string")
        if len(t) > max_chars:
            raise RequestError(f"input[{i}] has {len(t)} characters; at most {max_chars}")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise RequestError(f"encoding_format must be 'float' or 'base64', got {fmt!r}", param="encoding_format")
    if body.get("dimensions") is not None and body["dimensions"] != dim:
        raise RequestError(f"'dimensions' must be {dim} (this model's size) or absent", param="dimensions")
    return texts, fmt


def encode_vector(v: np.ndarray, fmt: str) -> list[float] | str:
    """One embedding as OpenAI returns it: a list of floats, or base64 of little-endian float32."""
    if fmt == "base64":
        return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in v]


def encode_together(encoder: Encoder, requests: list[list[str]]) -> list[Any]:
    """The embeddings and token counts of several requests' texts from one :meth:`Encoder.encode`
    call: ``(emb [n_i, dim], tokens_i)`` per request. If the joint call fails, each request is
    encoded alone, so a fault is its request's (an exception instance in its place), not its
    companions'."""
    flat = [t for texts in requests for t in texts]
    try:
        emb, counts = encoder.encode(flat), token_counts(encoder, flat)
    except Exception:  # noqa: BLE001 - retried request by request below
        if len(requests) == 1:
            raise
        out: list[Any] = []
        for texts in requests:
            try:
                out.extend(encode_together(encoder, [texts]))
            except Exception as e:  # noqa: BLE001 - this request's fault, reported to it alone
                out.append(e)
        return out
    bounds = np.cumsum([0] + [len(texts) for texts in requests])
    return [(emb[a:b], sum(counts[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


def create_app(
    encoder: Encoder,
    model_name: str = "wmkit",
    max_inputs: int = MAX_INPUTS,
    max_chars: int = MAX_CHARS,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_batch: int = MAX_BATCH,
    max_queue: int = MAX_QUEUE,
) -> Any:
    """A FastAPI app serving ``encoder`` (e.g. a :class:`~wmkit.watermark.embedding.WatermarkedEncoder`).

    Concurrent requests are encoded together (:class:`~wmkit.server.batching.MicroBatcher`: what
    is queued when the model comes free, up to ``max_batch`` texts; a request is never split, and
    one bigger than that runs alone); more than ``max_queue`` texts waiting (at least
    ``max_inputs``): 503. ``usage`` counts the tokens the encoder reads (:func:`token_counts`).
    """
    batcher: MicroBatcher[list[str]] = MicroBatcher(
        lambda requests: encode_together(encoder, requests), threading.Lock(), max_batch=max_batch,
        max_queue=max(max_queue, max_inputs), gather_s=0.0, size=len, what="texts")
    app = base_app("wmkit embeddings", model_name, on_shutdown=batcher.close)
    app.state.batcher = batcher

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        try:
            body = await read_json(request, max_body_bytes)
            texts, fmt = parse_request(body, encoder.dim, max_inputs, max_chars)
            (future,) = batcher.submit([texts])
        except RequestError as e:
            return error_response(e)
        try:
            emb, n_tokens = await asyncio.wrap_future(future)
        except Exception as e:  # noqa: BLE001 - a server fault is still a JSON error
            return internal_error(e)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, fmt)} for i, v in enumerate(emb)],
                "model": str(body.get("model") or model_name),
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
                "created": int(time.time()),
            }
        )

    return app
