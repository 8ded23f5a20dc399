"""``wm serve``'s defaults, declared once: the server, the CLI and its help read them here."""

from __future__ import annotations

from ..engine.core import PREFILL_CHUNK

__all__ = ["MAX_NEW_TOKENS", "TIMEOUT_S", "MAX_BATCH", "MAX_BODY_BYTES", "PREFILL_CHUNK"]

MAX_NEW_TOKENS = 512  # the largest max_tokens a request may ask for
TIMEOUT_S = 120.0  # seconds a request may wait for the model and generate (then 503)
MAX_BATCH = 16  # completions generated together
MAX_BODY_BYTES = 1024 * 1024  # the largest request body read
