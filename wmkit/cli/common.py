"""Helpers shared by the ``wm`` commands: input files, keys, schemes and one-line errors."""

from __future__ import annotations

import json
import functools
import inspect
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from ..errors import InputError, WmkitError
from ..files import read_text  # noqa: F401  (re-exported: the commands read files with it)
from ..keys import KeyFileWarning
from ..params import describe, parse_value
from ..verify import key_id, read_record, scheme_from_config  # noqa: F401  (re-exported for the commands)
from ..watermark.text import SCHEMES, key_kind

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
EXIT_ERROR = 2

KeyFileOpt = typer.Option(None, "--key-file", "-k", help="Key file (wm keygen); else $WMKIT_KEY.", show_default=False)
SchemeOpt = typer.Option("kgw", "--scheme", "-s", help=f"Watermark scheme: {', '.join(SCHEMES)}.")
VllmKeyOpt = typer.Option(None, "--vllm-key", help="vLLM's integer watermark key (vllm-* schemes); else $WMKIT_VLLM_KEY.",
                          show_default=False)
NAMED_PARAMS = ("gamma", "delta", "context_width", "seeding")  # parameters with their own option


def param_help(pname: str) -> str:
    """Help of a named scheme option, from the schemes' declarations (:mod:`wmkit.params`)."""
    by_default: dict[str, list[str]] = {}
    docs = [d for cls in SCHEMES.values() for d in describe(cls) if d.name == pname]
    for scheme, cls in SCHEMES.items():
        for d in describe(cls):
            if d.name == pname:
                by_default.setdefault("null (per seeding)" if d.default is None else str(d.default), []).append(scheme)
    defaults = "; ".join(f"{', '.join(s)} {v}" for v, s in by_default.items())
    helps, accepts = {d.help for d in docs}, {d.accepts for d in docs}
    what = docs[0].help if len(helps) == 1 else pname.replace("_", " ")
    rng = docs[0].accepts if len(accepts) == 1 else "per scheme (wm schemes)"
    return f"{what[0].upper()}{what[1:]}: {rng} (default: {defaults})."


def extra_params_help() -> str:
    """Help of ``--param``: every scheme's parameters that have no option of their own."""
    per = [f"{s}: {', '.join(d.name for d in describe(c) if d.name not in NAMED_PARAMS)}" for s, c in SCHEMES.items()]
    return "A scheme parameter NAME=VALUE, repeatable (wm schemes describes each). " + "; ".join(
        p for p in per if not p.endswith(": ")) + "."


GammaOpt = typer.Option(None, help=param_help("gamma"), show_default=False)
DeltaOpt = typer.Option(None, help=param_help("delta"), show_default=False)
WidthOpt = typer.Option(None, "--context-width", help=param_help("context_width"), show_default=False)
SeedingOpt = typer.Option(None, help=param_help("seeding"), show_default=False)
ParamOpt = typer.Option([], "--param", "-P", show_default=False, help=extra_params_help())
# the corpus options of wm scan and wm calibrate (both read with wmkit.scan.iter_shards)
CorpusArg = typer.Argument(..., help="Text files, folders (recursive), .jsonl or .parquet files, or '-' (JSON lines on stdin).")
GlobOpt = typer.Option("*", help="File-name pattern inside folders (e.g. '*.txt').")
FieldOpt = typer.Option(None, "--field", "--column", help="Text field of JSON lines / column of .parquet files (default 'text'; "
                        "with --field every non-Parquet file is read as JSON lines).", show_default=False)
KeyOnlySchemeOpt = typer.Option("kgw", "--scheme", "-s", help="Watermark scheme (key-only detectors): " + ", ".join(
    n for n, c in SCHEMES.items() if not c.capabilities.needs_model) + " (sweet and ewd run the model: wm detect --model).")
# what goes to a suspect's URL (wmkit.remote): credentials only when named for the call
ApiKeyEnvOpt = typer.Option(None, "--api-key-env", help="Send the value of this environment variable as a bearer token to "
                            "the suspect URL (nothing is sent unless named; $OPENAI_API_KEY is never read).", show_default=False)
HeaderOpt = typer.Option([], "--header", help="A header 'Name: value' to send to the suspect URL, repeatable.",
                         show_default=False)
InsecureOpt = typer.Option(False, "--insecure", help="Allow credentials over plain http:// to a host that is not loopback.")
NullOpt = typer.Option(None, "--null", show_default=False, help=(
    "What the p-value assumes of unmarked text, for the green-list schemes (kgw, unigram): reference (the default: "
    "calibrated for the key you hold: the shipped news/reviews/code corpora's 300 commonest n-grams are not scored, and "
    "the test is against this key's own green rate on the rest where it is higher), or gamma (each token green with "
    "probability gamma: exact over random keys, but a fixed key can flag several times the FPR on natural text). "
    "The other schemes have one exact null."))
ModelOpt = typer.Option(None, "--model", "-m", help="Model folder or .gguf file (default: SmolLM2-135M-Instruct).", show_default=False)


@dataclass(frozen=True)
class SchemeArgs:
    """The key and scheme parameters a command was given (see :func:`scheme_options`)."""

    key_file: Optional[Path] = None
    vllm_key: Optional[str] = None
    gamma: Optional[float] = None
    delta: Optional[float] = None
    context_width: Optional[int] = None
    seeding: Optional[str] = None
    params: list[str] = field(default_factory=list)

    def named(self) -> tuple[Any, ...]:
        """The named parameters in :data:`NAMED_PARAMS` order."""
        return self.gamma, self.delta, self.context_width, self.seeding

    def build(self, name: str) -> Any:
        """:func:`build_scheme` for scheme ``name`` with these arguments."""
        return build_scheme(name, self.key_file, *self.named(), self.params, self.vllm_key)


_SCHEME_OPTIONS = (("key_file", Optional[Path], KeyFileOpt), ("vllm_key", Optional[str], VllmKeyOpt),
                   ("gamma", Optional[float], GammaOpt), ("delta", Optional[float], DeltaOpt),
                   ("context_width", Optional[int], WidthOpt), ("seeding", Optional[str], SeedingOpt),
                   ("params", list[str], ParamOpt))


def scheme_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the key and scheme options (``-k``, ``--vllm-key``, ``--gamma``, ``--delta``,
    ``--context-width``, ``--seeding``, ``-P``), declared here once, as one ``scheme_args: SchemeArgs``
    parameter of ``fn``."""
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "scheme_args"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
             for name, ann, opt in _SCHEME_OPTIONS]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        args = SchemeArgs(**{name: kwargs.pop(name) for name, _, _ in _SCHEME_OPTIONS})
        return fn(scheme_args=args, **kwargs)

    command.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own), *extra])
    return command


_KEEP = {"\n": "\n", "\t": "\t"}


def terminal_safe(text: str, keep_newlines: bool = False) -> str:
    r"""``text`` with every character that could drive a terminal or reorder what it shows -- control
    characters (C0, DEL, C1: ESC sequences), format characters (bidi overrides, invisibles), line and
    paragraph separators, lone surrogates (undecodable file names) -- written as a visible escape
    (``\x1b``, ``\u202e``). Tabs stay; newlines stay only with ``keep_newlines``.

    >>> print(terminal_safe("a\x1b[2Jb\u202ec"))
    a\x1b[2Jb\u202ec
    """
    if text.isprintable() and text.isascii():
        return text
    out = []
    for ch in text:
        if ch == "\t" or (ch == "\n" and keep_newlines) or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])
    return "".join(out)


def error(message: str) -> None:
    """Print ``wm: error: message`` on stderr (one line; control characters escaped)."""
    stderr.print(f"wm: error: {terminal_safe(message)}", markup=False)


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
    ``NAME=VALUE`` strings (``--param``), parsed by the parameter's declared type
    (:func:`wmkit.params.parse_value`). vLLM-native schemes take ``--vllm-key``
    (or ``$WMKIT_VLLM_KEY``), the others a wmkit key file (or ``$WMKIT_KEY``); the wrong one is an error.
    """
    key_kind(name)  # an unknown scheme is an error before anything else
    cls = SCHEMES[name]
    allowed = {d.name for d in describe(cls)}
    params: dict[str, Any] = {}
    for pname, value in zip(NAMED_PARAMS, (gamma, delta, context_width, seeding)):
        if value is not None:
            if pname not in allowed:
                raise InputError(f"--{pname.replace('_', '-')} does not apply to {name}")
            params[pname] = value
    for item in extra or []:
        pname, sep, value = item.partition("=")
        pname = pname.strip()
        if not sep or not pname:
            raise InputError(f"--param expects NAME=VALUE, got {item!r}")
        if pname in NAMED_PARAMS and pname in allowed:
            raise InputError(f"--param {pname}: use the --{pname.replace('_', '-')} option")
        explicit = getattr(cls, "explicit_key_param", None) == pname  # synthid's keys=654,400,...
        params[pname] = value if explicit else parse_value(cls, pname, value)
    return scheme_from_config({"scheme": name, **params}, key_file, vllm_key)


def check_fpr_option(fpr: float) -> float:
    """``--fpr`` as an :class:`InputError` (one line, exit 2) when it is not in (0, 1)."""
    from ..stats import check_fpr

    try:
        return check_fpr(fpr)
    except ValueError as e:
        raise InputError(f"--fpr: {e}") from None


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; a :class:`WmkitError` becomes a one-line error and exit status 2, and a
    :class:`~wmkit.keys.KeyFileWarning` a one-line ``wm: warning: ...`` (other warnings pass on)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", KeyFileWarning)
        try:
            return fn(*args, **kwargs)
        except WmkitError as e:
            _show(caught)  # the warning first, then the error that ends the command
            caught.clear()
            die(str(e))
        finally:
            _show(caught)


def _show(caught: list[Any]) -> None:
    for w in caught:
        if issubclass(w.category, KeyFileWarning):
            stderr.print(f"wm: warning: {terminal_safe(str(w.message))}", markup=False)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def read_texts(paths: list[Path]) -> list[str]:
    """Texts from files: each JSON line's ``completion`` (``wm generate -o``) or ``text`` field, or a
    plain file's whole text."""
    out: list[str] = []
    for path in paths:
        raw = read_text(str(path))
        if path.suffix == ".jsonl":
            for n, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    text = rec.get("completion", rec.get("text")) if isinstance(rec, dict) else None
                except json.JSONDecodeError:
                    raise InputError(f"{path}:{n}: not a JSON line") from None
                if not isinstance(text, str):
                    raise InputError(f"{path}:{n}: no 'completion' or 'text' string")
                out.append(text)
        elif raw.strip():
            out.append(raw)
    if not out:
        raise InputError(f"{', '.join(map(str, paths))}: no texts")
    return out
