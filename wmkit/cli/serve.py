"""``wm serve``: an OpenAI-compatible /v1/completions and /v1/chat/completions server, optionally watermarking what it generates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..models import load_lm
from ..server import defaults
from .common import SchemeArgs, key_id, run_guarded, scheme_options, stderr


@scheme_options
def serve(
    scheme_args: SchemeArgs,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model folder or .gguf file (default: SmolLM2-135M-Instruct).", show_default=False),
    scheme_name: str = typer.Option("none", "--scheme", "-s", help="Watermark scheme (see wm detect --help), or none."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_new_tokens: int = typer.Option(defaults.MAX_NEW_TOKENS, help="Largest max_tokens a request may ask for."),
    timeout: float = typer.Option(defaults.TIMEOUT_S, help="Seconds a request may wait for the model and generate (then 503)."),
    max_batch: int = typer.Option(defaults.MAX_BATCH, help="Most completions generated together (concurrent requests are batched)."),
    prefill_chunk: int = typer.Option(defaults.PREFILL_CHUNK, help="Most prompt tokens per prefill pass of requests that join a running batch "
                                      "(longer prefills run in chunks between its steps); 0: one pass."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System message put first in every chat request that has none (\"\" too: an empty one replaces the chat template's default)."),
    allow_opt_out: bool = typer.Option(False, "--allow-opt-out", help="Let a request ask for unmarked text (\"watermarking\": false); refused (403) otherwise."),
    logprobs: str = typer.Option("sampled", "--logprobs", help="Log-probs a watermarking server returns: sampled (of the "
                                 "distribution after the watermark) or raw (before it: GIVES THE KEY AWAY, since beside "
                                 "the chosen token it shows the token's colour; for tests and fingerprint checks only)."),
) -> None:
    """Serve MODEL at /v1/completions and /v1/chat/completions (logprobs up to 20, logit_bias, "stream": true); --scheme marks the generated text."""
    from ..engine import Generator
    from ..engine.core import LOGPROBS_MODES
    from ..server.completions import create_app
    from ..server.http import serve as run_server

    def build() -> Generator:
        if not (1 <= port <= 65535):
            raise InputError(f"--port must be in 1..65535, got {port}")
        if max_new_tokens < 1:
            raise InputError(f"--max-new-tokens must be positive, got {max_new_tokens}")
        if max_batch < 1:
            raise InputError(f"--max-batch must be positive, got {max_batch}")
        if prefill_chunk < 0:
            raise InputError(f"--prefill-chunk must be a number of tokens >= 0 (0: one pass), got {prefill_chunk}")
        if allow_opt_out and scheme_name == "none":
            raise InputError("--allow-opt-out applies to a server that watermarks (--scheme)")
        if logprobs not in LOGPROBS_MODES:
            raise InputError(f"--logprobs must be one of {', '.join(LOGPROBS_MODES)}, got {logprobs!r}")
        if not timeout > 0:
            raise InputError(f"--timeout must be a positive number of seconds, got {timeout}")
        import socket

        with socket.socket() as s:  # a busy port fails now, not after the model has loaded
            try:
                s.bind((host, port))
            except OSError as e:
                raise InputError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        scheme = None
        if scheme_name != "none":
            scheme = scheme_args.build(scheme_name)
            if getattr(scheme, "sentence_level", False):
                raise InputError(f"{scheme_name} is a sentence-level mark, generated a sentence at a time from candidates: "
                                 f"wm serve generates token by token (use wm generate, or a token scheme here)")
        lm, tok = load_lm(model)
        return Generator(lm, tok, scheme, prefill_chunk=prefill_chunk or None, logprobs=logprobs)

    gen = run_guarded(build)
    mark = (f"watermark {gen.scheme.name} {json.dumps(gen.scheme.config())}, key id {key_id(gen.scheme)}"
            if gen.scheme is not None else "no watermark")
    stderr.print(f"serving {model or 'SmolLM2-135M-Instruct (default)'} on http://{host}:{port}: {mark}; "
                 f"log-probs {logprobs}", markup=False)
    run_server(create_app(gen, Path(model).name if model else "SmolLM2-135M-Instruct", max_new_tokens, timeout_s=timeout,
                          allow_opt_out=allow_opt_out, max_batch=max_batch, system_prompt=system_prompt), host, port)
