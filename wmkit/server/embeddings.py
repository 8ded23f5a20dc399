"""An OpenAI-compatible ``/v1/embeddings`` server that returns (watermarked) embeddings.

``POST /v1/embeddings`` takes ``{"input": str | [str, ...], "model": str, "encoding_format":
"float" | "base64"}`` and answers as OpenAI does (``{"object": "list", "data": [{"object":
"embedding", "index": i, "embedding": ...}], "model", "usage"}``; ``base64`` is little-endian float32,
what the ``openai`` client asks for by default). Bad requests get HTTP 4xx with an OpenAI-style
``{"error": {"message", "type", "param", "code"}}``: a body that is not JSON, no or empty input, an
empty string, a non-string item (token-id input is not supported), more than ``max_inputs`` texts,
a text longer than ``max_chars`` characters, a body over ``max_body_bytes`` (413).
``GET /v1/models`` lists the one model; ``GET /health`` answers ``{"status": "ok"}``.

Start it with ``wm serve-embeddings --scheme espew --key-file K`` or :func:`create_app`.
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from ..watermark.embedding.encoders import Encoder
from .http import RequestError, base_app, error_response, internal_error, read_json

MAX_INPUTS = 2048
MAX_CHARS = 20_000
MAX_BODY_BYTES = 8 * 1024 * 1024


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


def create_app(
    encoder: Encoder,
    model_name: str = "wmkit",
    max_inputs: int = MAX_INPUTS,
    max_chars: int = MAX_CHARS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Any:
    """A FastAPI app serving ``encoder`` (e.g. a :class:`~wmkit.watermark.embedding.WatermarkedEncoder`)."""
    app = base_app("wmkit embeddings", model_name)
    lock = threading.Lock()  # one forward pass at a time: the model is shared

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        try:
            body = await read_json(request, max_body_bytes)
            texts, fmt = parse_request(body, encoder.dim, max_inputs, max_chars)
        except RequestError as e:
            return error_response(e)
        from starlette.concurrency import run_in_threadpool

        def work() -> np.ndarray:
            with lock:
                return encoder.encode(texts)

        try:
            emb = await run_in_threadpool(work)
        except Exception as e:  # noqa: BLE001 - a server fault is still a JSON error
            return internal_error(e)
        n_tokens = sum(len(t.split()) for t in texts)
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
