"""What every wmkit HTTP endpoint shares: OpenAI-style errors, a bounded JSON body reader, uvicorn."""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..errors import RequestError


def error_response(e: RequestError) -> JSONResponse:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if e.status < 500 else "server_error"
    return JSONResponse({"error": {"message": e.message, "type": kind, "param": e.param, "code": None}}, status_code=e.status)


async def read_json(request: Request, max_body_bytes: int) -> Any:
    """The decoded JSON body; 413 past ``max_body_bytes`` (declared or streamed), 400 if not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise RequestError(f"request body of {declared} bytes exceeds the limit of {max_body_bytes}", None, 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise RequestError(f"request body exceeds the limit of {max_body_bytes} bytes", None, 413)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON", None) from None
    except RecursionError:
        raise RequestError(f"the request body nests deeper than {MAX_DEPTH} levels", None) from None
    check_json(body)
    return body


MAX_DEPTH = 32


def check_json(body: Any, max_depth: int = MAX_DEPTH) -> None:
    """Reject (400) a body nested deeper than ``max_depth`` or holding a string that is not valid
    Unicode (a lone surrogate such as ``"\\ud800"``: JSON allows the escape, UTF-8 cannot encode it).
    Iterative, so a hostile body cannot exhaust the stack here."""
    stack = [(body, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > max_depth and isinstance(obj, (dict, list)):
            raise RequestError(f"the request body nests deeper than {max_depth} levels", None)
        if isinstance(obj, str):
            try:
                obj.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError("a string in the request is not valid Unicode (a lone surrogate escape)", None) from None
        elif isinstance(obj, dict):
            stack.extend((k, depth + 1) for k in obj)
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)


def internal_error(e: BaseException) -> JSONResponse:
    """A 500 in OpenAI's error shape (never a bare text body), naming the exception's type only."""
    return error_response(RequestError(f"internal error ({type(e).__name__}); the request was not served", None, 500))


def base_app(title: str, model_name: str, on_shutdown: Callable[[], Any] | None = None) -> FastAPI:
    """A FastAPI app with ``GET /health`` and an OpenAI-style ``GET /v1/models`` listing ``model_name``;
    ``on_shutdown()`` (blocking, run in a worker thread) is called when the server shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(on_shutdown)

    app = FastAPI(title=title, docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "wmkit"}]}

    return app


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
