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
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..watermark.embedding.encoders import Encoder

MAX_INPUTS = 2048
MAX_CHARS = 20_000
MAX_BODY_BYTES = 8 * 1024 * 1024


class RequestError(Exception):
    """A bad request: HTTP ``status`` and a one-line message naming the offending field."""

    def __init__(self, message: str, param: str | None = "input", status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


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
    import json

    app = FastAPI(title="wmkit embeddings", docs_url=None, redoc_url=None)
    lock = threading.Lock()  # one forward pass at a time: the model is shared

    def error(e: RequestError) -> JSONResponse:
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        return JSONResponse(
            {"error": {"message": e.message, "type": kind, "param": e.param, "code": None}}, status_code=e.status
        )

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise RequestError(f"request body of {declared} bytes exceeds the limit of {max_body_bytes}", None, 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise RequestError(f"request body exceeds the limit of {max_body_bytes} bytes", None, 413)
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "wmkit"}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        try:
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise RequestError("the request body is not valid JSON", None) from None
            texts, fmt = parse_request(body, encoder.dim, max_inputs, max_chars)
        except RequestError as e:
            return error(e)
        from starlette.concurrency import run_in_threadpool

        def work() -> np.ndarray:
            with lock:
                return encoder.encode(texts)

        emb = await run_in_threadpool(work)
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


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
