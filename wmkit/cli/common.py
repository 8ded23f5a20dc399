"""Helpers shared by the ``wm`` commands: input files, keys, schemes and one-line errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from ..errors import InputError, WmkitError
from ..keys import load_key
from ..watermark.text import SCHEMES, key_kind
from ..watermark.text.vllm_native import VLLM_KEY_ENV, load_vllm_key

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
EXIT_ERROR = 2

KeyFileOpt = typer.Option(None, "--key-file", "-k", help="Key file (wm keygen); else $WMKIT_KEY.", show_default=False)
SchemeOpt = typer.Option("kgw", "--scheme", "-s", help=f"Watermark scheme: {', '.join(SCHEMES)}.")
VllmKeyOpt = typer.Option(None, "--vllm-key", help="vLLM's integer watermark key (vllm-* schemes); else $WMKIT_VLLM_KEY.",
                          show_default=False)
GammaOpt = typer.Option(None, help="Green fraction (default: the scheme's: kgw 0.25, unigram 0.5).", show_default=False)
DeltaOpt = typer.Option(None, help="Logit bias for green tokens (default 2.0).", show_default=False)
WidthOpt = typer.Option(None, "--context-width", help="KGW context width h, 1..8 (default 1).", show_default=False)
SeedingOpt = typer.Option(None, help="KGW seeding: lefthash (default) or selfhash.", show_default=False)
ParamOpt = typer.Option(
    [], "--param", "-P", show_default=False,
    help="A scheme parameter NAME=VALUE, repeatable: ie: tau, tagger (causal, paper or a file), navigate; "
         "sweet: entropy_threshold; vllm-*: deduplicate_contexts, alpha (dual-key).",
)
ModelOpt = typer.Option(None, "--model", "-m", help="Model folder or .gguf file (default: SmolLM2-135M-Instruct).", show_default=False)


def error(message: str) -> None:
    """Print ``wm: error: message`` on stderr (one line)."""
    stderr.print(f"wm: error: {message}", markup=False)


def die(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    error(message)
    raise typer.Exit(EXIT_ERROR)


def build_scheme(
    name: str,
    key_file: Optional[Path],
    gamma: Optional[float],
    delta: Optional[float],
    context_width: Optional[int],
    seeding: Optional[str],
    extra: Optional[list[str]] = None,
    vllm_key: Optional[str] = None,
) -> Any:
    """The scheme ``name`` with the user's key and the parameters given (defaults otherwise).

    A named option (``--gamma`` ...) must be a parameter of the scheme's dataclass. ``extra`` holds
    ``NAME=VALUE`` strings (``--param``); a value that reads as JSON (a number, ``true``/``false``,
    ``null``) is taken as such, anything else as a string. vLLM-native schemes take ``--vllm-key``
    (or ``$WMKIT_VLLM_KEY``), the others a wmkit key file (or ``$WMKIT_KEY``); the wrong one is an error.
    """
    key_kind(name)  # an unknown scheme is an error before anything else
    allowed = {f.name for f in dataclasses.fields(SCHEMES[name])} - {"key"}
    params: dict[str, Any] = {}
    for pname, value in (("gamma", gamma), ("delta", delta), ("context_width", context_width), ("seeding", seeding)):
        if value is not None:
            if pname not in allowed:
                raise InputError(f"--{pname.replace('_', '-')} does not apply to {name}")
            params[pname] = value
    for item in extra or []:
        pname, sep, value = item.partition("=")
        pname = pname.strip()
        if not sep or not pname:
            raise InputError(f"--param expects NAME=VALUE, got {item!r}")
        if pname in ("gamma", "delta", "context_width", "seeding") and pname in allowed:
            raise InputError(f"--param {pname}: use the --{pname.replace('_', '-')} option")
        try:
            params[pname] = json.loads(value)
        except json.JSONDecodeError:
            params[pname] = value
    return scheme_from_config({"scheme": name, **params}, key_file, vllm_key)


def key_id(scheme: Any) -> str:
    """The public id of the scheme's key (never the key): a wmkit key's fingerprint, or ``vllm:`` and
    8 hex digits of SHA-256 of a vLLM key."""
    key = scheme.key
    if isinstance(key, int):
        return "vllm:" + hashlib.sha256(b"wmkit/vllm-key-id/" + key.to_bytes(8, "big")).hexdigest()[:8]
    return key.fingerprint()


def read_record(path: Path) -> tuple[dict[str, Any], str | None]:
    """The scheme config in ``path``: a JSON config, or a generation record (a line of ``wm generate -o``;
    the first line is used). Returns the config and the record's key id, if any."""
    text = read_text(str(path))
    try:
        obj = json.loads(text)  # a JSON config (or a one-line record)
    except json.JSONDecodeError:
        first = next(ln for ln in text.splitlines() if ln.strip())
        try:
            obj = json.loads(first)  # the first record of a JSON-lines file
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not a JSON config or generation record ({e.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        return dict(obj["config"]), obj.get("key_id")
    if isinstance(obj, dict) and "scheme" in obj:
        return dict(obj), obj.pop("key_id", None)
    raise InputError(f"{path}: expected a scheme config (with 'scheme') or a wm generate record (with 'config')")


def scheme_from_config(config: dict[str, Any], key_file: Optional[Path], vllm_key: Optional[str]) -> Any:
    """The scheme a config names, with the user's key (the config's parameters exactly)."""
    config = dict(config)
    name = config.pop("scheme", None)
    if not isinstance(name, str):
        raise InputError("the config names no scheme")
    if key_kind(name) == "vllm":
        if key_file is not None:
            raise InputError(f"{name} takes vLLM's integer key (--vllm-key N or ${VLLM_KEY_ENV}), not a wmkit key file")
        key: Any = load_vllm_key(vllm_key)
    else:
        if vllm_key is not None:
            raise InputError(f"--vllm-key applies to the vllm-* schemes; {name} takes a wmkit key file (-k FILE)")
        key = load_key(key_file=key_file)
    return SCHEMES[name].from_config(config, key)


def read_text(path: str) -> str:
    """Read a UTF-8 text file (``-`` is stdin); a clear :class:`InputError` for anything else."""
    if path == "-":
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{path}: no such file")
        if p.is_dir():
            raise InputError(f"{path}: is a directory, expected a text file")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InputError(f"{path}: cannot be read ({e.strerror})") from None
        name = path
    if b"\x00" in data:
        raise InputError(f"{name}: binary file (NUL bytes), expected UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{name}: not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text.strip():
        raise InputError(f"{name}: empty file")
    return text


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a :class:`WmkitError` becomes a one-line error and exit status 2."""
    try:
        return fn(*args, **kwargs)
    except WmkitError as e:
        die(str(e))
