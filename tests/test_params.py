"""wmkit.params: every scheme parameter declared once, checked and parsed from its declaration."""

from __future__ import annotations

import dataclasses
import math

import pytest

from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.params import Spec, check_params, describe, parse_value
from wmkit.watermark.text import SCHEMES

KEY = SecretKey(bytes(range(32)))


def build(name: str, **params):
    return SCHEMES[name](key=42 if name.startswith("vllm") else KEY, **params)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_field_is_declared_with_a_spec(name):
    cls = SCHEMES[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"key"}
    assert {d.name for d in describe(cls)} == fields  # none declared by hand, outside the Spec
    for d in describe(cls):
        assert d.help.strip()


@pytest.mark.parametrize("name", list(SCHEMES))
def test_defaults_are_valid_and_each_bound_is_enforced(name):
    cls = SCHEMES[name]
    build(name)  # the defaults pass their own checks
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("wmkit.param")
        if spec is None or spec.choices is not None or f.name == "prf_version":
            continue
        if spec.low is not None:
            edge, below = spec.low, spec.low - (1 if isinstance(f.default, int) else 1e-6)
            with pytest.raises(InputError, match=f"{cls.name}: {f.name} must be"):
                build(name, **{f.name: below})
            if spec.open_low:
                with pytest.raises(InputError, match=f.name):
                    build(name, **{f.name: edge})
            elif not (name == "vllm-sbw" and f.name == "gamma"):
                build(name, **{f.name: type(f.default)(edge) if f.default is not None else int(edge)})
        if spec.high is not None:
            above = spec.high + (1 if isinstance(f.default, int) else 1e-6)
            with pytest.raises(InputError, match=f.name):
                build(name, **{f.name: above})
        if spec.low is not None or spec.high is not None:
            with pytest.raises(InputError, match=f.name):
                build(name, **{f.name: "1"})  # a string is not a number


def test_messages_and_types():
    with pytest.raises(InputError, match=r"kgw: gamma must be a number \(0, 1\), got 0"):
        build("kgw", gamma=0)
    build("kgw", delta=0)  # closed bound
    with pytest.raises(InputError, match="context_width must be an integer"):
        build("kgw", context_width=2.0)
    with pytest.raises(InputError, match="context_width must be an integer"):
        build("kgw", context_width=True)  # bool is not an int here
    with pytest.raises(InputError, match="seeding must be one of lefthash, selfhash, got 'minhash'"):
        build("kgw", seeding="minhash")
    with pytest.raises(InputError, match="navigate must be true or false"):
        build("ie", navigate=1)
    with pytest.raises(InputError, match="gamma must be"):
        build("kgw", gamma=math.nan)
    assert build("gumbel", deduplicate_contexts_max_history=None).deduplicate_contexts_max_history is None
    assert build("ie", tau=0.9000000000001).tau == 0.9  # a JSON round-trip's float noise is snapped to the grid


def test_parse_value_by_declared_type():
    ie, gumbel = SCHEMES["ie"], SCHEMES["gumbel"]
    assert parse_value(ie, "tau", "1.2") == 1.2 and parse_value(ie, "navigate", "false") is False
    assert parse_value(ie, "tagger", "/path/with=sign") == "/path/with=sign"
    assert parse_value(gumbel, "context_width", "3") == 3 and parse_value(gumbel, "deduplicate_contexts_max_history", "null") is None
    with pytest.raises(InputError, match="context_width expects int"):
        parse_value(gumbel, "context_width", "3.5")
    with pytest.raises(InputError, match=r"unknown parameter 'colour' \(parameters: "):
        parse_value(ie, "colour", "1")
    with pytest.raises(InputError, match="expects int, got 'null'"):
        parse_value(gumbel, "context_width", "null")  # not nullable


def test_spec_range_text_and_admits():
    s = Spec("x", low=0.0, high=1.0, open_low=True)
    assert s.range_text() == "(0, 1]" and not s.admits(0.0) and s.admits(1.0) and not s.admits(1.0001)
    assert Spec("y", low=1).range_text() == ">= 1" and Spec("z", choices=("a", "b")).range_text() == "one of a, b"


def test_check_params_ignores_undeclared_fields():
    @dataclasses.dataclass
    class Plain:
        a: int = 1
        b: float = Spec("b").field(0.5)

    check_params(Plain(a="anything"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="b must be a number"):
        check_params(Plain(b="x"))  # type: ignore[arg-type]
