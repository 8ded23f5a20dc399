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
from typing import Sequence
from urllib.parse import urlsplit

from .errors import InputError

__all__ = ["is_loopback", "suspect_headers"]


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
