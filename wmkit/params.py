"""Scheme parameters declared once: type, default, range and help on the dataclass field.

A scheme's field is declared with a :class:`Spec`::

    GAMMA = Spec("green fraction of the vocabulary", low=0.0, high=1.0, open_low=True, open_high=True)

    @dataclass(frozen=True)
    class KGW(...):
        gamma: float = GAMMA.field(0.25)

From there come the checks on construction (:func:`check_params`: type, range, choices, one
message format for every scheme), the ``--param NAME=VALUE`` parsing of the CLI
(:func:`parse_value`), the help of the CLI options and ``wm schemes`` (:func:`describe`). A
subclass that changes a default re-declares the field with the same spec (``GAMMA.field(0.5)``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from .errors import InputError

__all__ = ["ParamDoc", "Spec", "check_params", "describe", "parse_value"]

_META = "wmkit.param"


def _num(x: float) -> str:
    """A bound as a reader types it: an integer in full (2147483647, not 2.14748e+09), else ``:g``."""
    return str(int(x)) if isinstance(x, int) or float(x).is_integer() and abs(x) < 2**64 else f"{x:g}"


@dataclass(frozen=True)
class Spec:
    """What a scheme parameter accepts (everything but its default).

    Args:
        help: one line for the CLI and the docs.
        low, high: bounds of a numeric parameter (``None``: unbounded on that side).
        open_low, open_high: the bound itself is excluded.
        choices: the allowed values of a categorical parameter.
    """

    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] | None = None

    def field(self, default: Any) -> Any:
        """A dataclass field with this spec and ``default``."""
        return dataclasses.field(default=default, metadata={_META: self})

    def range_text(self) -> str:
        """The accepted values in words: ``(0, 1)``, ``1..8``, ``one of ['a', 'b']``, ``>= 0``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        lo = "" if self.low is None else f"{'(' if self.open_low else '['}{_num(self.low)}"
        hi = "" if self.high is None else f"{_num(self.high)}{')' if self.open_high else ']'}"
        if lo and hi:
            return f"{lo}, {hi}"
        if lo:
            return f"{'>' if self.open_low else '>='} {_num(self.low)}"
        if hi:
            return f"{'<' if self.open_high else '<='} {_num(self.high)}"
        return ""

    def admits(self, value: float) -> bool:
        """Whether a number is within the bounds."""
        if math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.open_high and value == self.high)))


@dataclass(frozen=True)
class ParamDoc:
    """One parameter of a scheme, as ``wm schemes`` and the CLI help show it."""

    name: str
    type: str
    default: Any
    accepts: str
    help: str


def _fields(cls: type) -> list[tuple[dataclasses.Field, Spec, type, bool]]:
    """``(field, spec, base type, nullable)`` of the fields of ``cls`` declared with a :class:`Spec`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_META)
        if spec is None:
            continue
        tp, nullable = hints[f.name], False
        if typing.get_origin(tp) in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            nullable, tp = len(args) < len(typing.get_args(tp)), args[0]
        out.append((f, spec, tp, nullable))
    return out


def _type_name(tp: type, nullable: bool) -> str:
    name = {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, getattr(tp, "__name__", str(tp)))
    return f"{name} or null" if nullable else name


def check_params(obj: Any) -> None:
    """Raise :class:`InputError` naming the scheme and parameter if a field breaks its :class:`Spec`."""
    scheme = getattr(obj, "name", type(obj).__name__)
    for f, spec, tp, nullable in _fields(type(obj)):
        value = getattr(obj, f.name)
        if value is None and nullable:
            continue
        ok_type = (isinstance(value, bool) if tp is bool else
                   isinstance(value, int) and not isinstance(value, bool) if tp is int else
                   isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float else
                   isinstance(value, tp))
        accepts = spec.range_text()
        what = f"{'an integer' if tp is int else 'a number' if tp is float else 'true or false' if tp is bool else 'a string'}"
        if ok_type and spec.choices is not None:
            ok = value in spec.choices
        elif ok_type and tp in (int, float):
            ok = spec.admits(value)  # an int exactly: float(2**63 - 512) rounds up past an int64 bound
        else:
            ok = ok_type and (tp is not str or bool(value))
        if not ok:
            must = accepts if spec.choices is not None else f"{what} {accepts}".strip()
            raise InputError(f"{scheme}: {f.name} must be {must}, got {value!r}")


def describe(cls: type) -> list[ParamDoc]:
    """The declared parameters of a scheme class, in field order."""
    return [ParamDoc(f.name, _type_name(tp, nullable), f.default, spec.range_text(), spec.help)
            for f, spec, tp, nullable in _fields(cls)]


def parse_value(cls: type, name: str, text: str) -> Any:
    """Parse the command-line text of parameter ``name`` of ``cls`` by its declared type
    (``null``/``none`` for a parameter that may be unset); range checks happen on construction."""
    found = [(tp, nullable) for f, _, tp, nullable in _fields(cls) if f.name == name]
    if not found:
        known = ", ".join(d.name for d in describe(cls))
        raise InputError(f"{getattr(cls, 'name', cls.__name__)}: unknown parameter {name!r} (parameters: {known})")
    tp, nullable = found[0]
    s = text.strip()
    if nullable and s.lower() in ("null", "none"):
        return None
    try:
        if tp is bool:
            if s.lower() in ("true", "1", "yes"):
                return True
            if s.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if tp in (int, float):
            return tp(s)
    except ValueError:
        raise InputError(f"{getattr(cls, 'name', cls.__name__)}: {name} expects {_type_name(tp, nullable)}, got {text!r}") from None
    return s
