"""What wmkit sends to a remote suspect: credentials only when named, never over plain HTTP by default.

A suspect is the other side of a dispute. A request to its URL carries exactly the headers the user
named for that call -- ``--api-key-env NAME`` (a bearer token read from the variable ``NAME``) or
``--header "Name: value"`` -- and never an ambient credential such as ``$OPENAI_API_KEY``. Credentials
never travel over plain ``http://`` to a host other than loopback unless the user says ``--insecure``.
Errors name the variable or header, never its value.

>>> suspect_headers("http://127.0.0.1:8000", api_key_env=None, headers=())
{}
>>> is_loopback("http://localhost:8000/v1"), is_loopback("http://10.0.0.7/v1")
(True, False)
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Sequence
from urllib.parse import urlsplit

from .errors import InputError

__all__ = ["is_loopback", "suspect_headers", "Completions"]


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def suspect_headers(url: str, api_key_env: str | None = None, headers: Sequence[str] = (),
                    insecure: bool = False) -> dict[str, str]:
    """The headers to send to ``url``: ``Authorization: Bearer $api_key_env`` if a variable is named,
    plus each ``"Name: value"`` of ``headers``; nothing else.

    Raises :class:`InputError` (naming the variable or header, never a value) when a named variable
    is unset or empty, a header is malformed, or credentials would go over plain HTTP to a host that
    is not loopback without ``insecure``.
    """
    out: dict[str, str] = {}
    if api_key_env is not None:
        value = os.environ.get(api_key_env)
        if not value:
            raise InputError(f"--api-key-env: environment variable {api_key_env} is not set or empty")
        out["Authorization"] = f"Bearer {value}"
    for i, item in enumerate(headers):
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or not name or any(c.isspace() or not c.isprintable() for c in name):
            raise InputError(f"--header {i + 1}: expected 'Name: value' (the value is not shown)")
        if any(c in value for c in "\r\n\x00"):
            raise InputError(f"--header {name}: the value holds a line break or NUL")
        out[name] = value.strip()
    if out and urlsplit(url).scheme == "http" and not is_loopback(url) and not insecure:
        raise InputError(f"{urlsplit(url).hostname}: credentials ({', '.join(out)}) would go over plain HTTP to a host "
                         "that is not this machine; use https://, or --insecure if you accept that")
    return out


class Completions:
    """Completions from an OpenAI-compatible URL (``/v1/completions``), sent with exactly the headers
    given (:func:`suspect_headers`). ``calls`` counts requests, ``samples`` the completions returned.
    A failed request or an answer of the wrong shape is an :class:`InputError` of one line."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 120.0, model: str = "wmkit") -> None:
        import httpx

        base = url.rstrip("/")
        self.endpoint = (base if base.endswith("/v1") else base + "/v1") + "/completions"
        self.client, self.headers, self.model = httpx.Client(timeout=timeout), headers or {}, model
        self.calls = self.samples = 0

    def complete(self, prompt: str, max_tokens: int, temperature: float, seed: int | None = None, n: int = 1) -> list[str]:
        """``n`` completions of ``prompt`` (their texts)."""
        import httpx

        body: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "n": n}
        if seed is not None:
            body["seed"] = seed
        try:
            r = self.client.post(self.endpoint, json=body, headers=self.headers)
        except httpx.HTTPError as e:
            raise InputError(f"{self.endpoint}: request failed ({type(e).__name__})") from None
        self.calls += 1
        if r.status_code != 200:
            raise InputError(f"{self.endpoint}: HTTP {r.status_code}")
        try:
            texts = [c["text"] for c in r.json()["choices"]]
        except (ValueError, KeyError, IndexError, TypeError):
            raise InputError(f"{self.endpoint}: the answer is not an OpenAI completion (choices[].text)") from None
        if len(texts) != n or not all(isinstance(t, str) for t in texts):
            raise InputError(f"{self.endpoint}: asked for {n} completions, got {len(texts)} (or a text that is not a string)")
        self.samples += n
        return texts
