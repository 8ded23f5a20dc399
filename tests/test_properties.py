"""Property tests (hypothesis): hostile inputs to key parsing, scheme configs, file reading and both
servers' request parsers fail only with wmkit's one-line errors (InputError / RequestError), never a crash;
and valid inputs of each are accepted and round-trip (a parser that refused everything would fail)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wmkit.errors import WmkitError
from wmkit.params import _fields
from wmkit.files import read_text
from wmkit.keys import SecretKey
from wmkit.server.schema import parse_completion
from wmkit.server.embeddings import parse_request
from wmkit.server.http import RequestError, check_json
from wmkit.watermark.text import SCHEMES
from wmkit.watermark.text.synthid import parse_keys
from wmkit.watermark.text.vllm_native import parse_vllm_key

KEY = SecretKey(bytes(range(32)))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["prompt", "max_tokens", "temperature", "top_p", "logprobs", "seed", "logit_bias", "stop", "n", "input",
          "encoding_format", "dimensions", "return_tokens_as_token_ids"]


def only_wmkit_errors(fn, *args):  # noqa: ANN001, ANN201
    try:
        return fn(*args)
    except (WmkitError, RequestError):
        return None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.binary(max_size=40).map(lambda b: b.hex()))
def test_key_parsing(text):
    only_wmkit_errors(SecretKey.from_hex, text)
    only_wmkit_errors(parse_vllm_key, text)
    only_wmkit_errors(parse_keys, text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SCHEMES)), st.dictionaries(st.sampled_from(
    ["gamma", "delta", "context_width", "seeding", "tau", "navigate", "tagger", "alpha", "key_length", "gap",
     "n_resamples", "ngram_len", "depth", "num_leaves", "score", "weights", "deduplicate_contexts",
     "deduplicate_contexts_max_history", "entropy_threshold", "prf_version", "bogus"]), json_values, max_size=4))
def test_scheme_configs(name, config):
    key = 42 if name.startswith("vllm") else KEY
    only_wmkit_errors(SCHEMES[name].from_config, config, key)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_reading_any_bytes_as_a_text_file(tmp_path, data):
    p = tmp_path / "input.txt"
    p.write_bytes(data)
    out = only_wmkit_errors(read_text, str(p))
    assert out is None or (isinstance(out, str) and out.strip())


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | json_values)
def test_server_request_bodies(body):
    raw = json.loads(json.dumps(body))  # what a client can send
    only_wmkit_errors(check_json, raw)
    only_wmkit_errors(parse_completion, raw, 1000, 64)
    only_wmkit_errors(parse_request, raw, 384)


# -- valid inputs are accepted and round-trip ------------------------------------------------------------

SKIP = {("synthid", "score"), ("synthid", "weights"), ("ie", "tagger")}  # need a trained file beside them


def _valid(spec, tp, nullable):  # noqa: ANN001, ANN202
    """Values a parameter's declared Spec admits."""
    if spec.choices is not None:
        base = st.sampled_from(spec.choices)
    elif tp is bool:
        base = st.booleans()
    elif tp is int:
        base = st.integers(int(spec.low) if spec.low is not None else -(2**31), int(spec.high) if spec.high is not None else 2**31)
    elif tp is float:
        base = st.floats(spec.low if spec.low is not None else -1e6, spec.high if spec.high is not None else 1e6,
                         exclude_min=spec.open_low, exclude_max=spec.open_high, allow_nan=False)
    else:
        base = st.text(min_size=1, max_size=8)
    return base | st.none() if nullable else base


@st.composite
def valid_configs(draw):  # noqa: ANN001, ANN201
    name = draw(st.sampled_from(sorted(SCHEMES)))
    config = {}
    for f, spec, tp, nullable in _fields(SCHEMES[name]):
        if (name, f.name) not in SKIP and draw(st.booleans()):
            config[f.name] = draw(_valid(spec, tp, nullable))
    return name, config


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs())
def test_valid_scheme_configs_are_accepted_and_round_trip(case):
    name, config = case
    key, other = (42, 43) if name.startswith("vllm") else (KEY, SecretKey(bytes(range(1, 33))))
    cls = SCHEMES[name]
    scheme = cls.from_config(dict(config), key)
    again = cls.from_config(json.loads(json.dumps(scheme.config())), key)
    assert again == scheme and again.config() == scheme.config()
    assert all(scheme.config()[k] == v for k, v in config.items() if v is not None)  # None: resolved default
    assert cls.from_config(json.loads(json.dumps(scheme.config())), other) != scheme  # the key is part of it


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=64), st.sampled_from(["", "0x", "0X"]), st.booleans())
def test_valid_keys_are_accepted_and_round_trip(raw, prefix, commented):
    text = ("# a comment\n\n" if commented else "") + prefix + raw.hex() + "\n"
    key = SecretKey.from_hex(text)
    assert key.secret == raw and SecretKey.from_hex(key.to_hex()) == key


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**64 - 1), st.booleans(), st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40))
def test_valid_vllm_and_synthid_keys_are_accepted(n, as_hex, keys):
    assert parse_vllm_key(hex(n) if as_hex else str(n)) == n and parse_vllm_key(n) == n
    assert parse_keys(",".join(map(str, keys))) == tuple(keys) and parse_keys(keys) == tuple(keys)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufeff"), min_size=1, max_size=200)
       .filter(str.strip))  # a text file: no NUL (binary), no BOM (read as an encoding mark)
def test_reading_valid_utf8_text(tmp_path, text):
    p = tmp_path / "input.txt"
    p.write_bytes(text.encode("utf-8"))
    out = read_text(str(p))
    assert out.replace("\r\n", "\n").replace("\r", "\n") == text.replace("\r\n", "\n").replace("\r", "\n") or out == text


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(min_size=1, max_size=40), st.lists(st.integers(0, 999), min_size=1, max_size=20)),
       st.integers(1, 64), st.floats(0, 2), st.floats(1e-6, 1), st.none() | st.integers(0, 2**31),
       st.none() | st.integers(0, 20), st.integers(1, 4))
def test_valid_completion_requests_are_accepted(prompt, max_tokens, temperature, top_p, seed, logprobs, n):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
            "logprobs": logprobs, "n": n}
    req = parse_completion(json.loads(json.dumps(body)), 1000, 64)
    assert req["prompts"] == [prompt] and req["max_tokens"] == max_tokens and req["n"] == n
    assert req["temperature"] == temperature and req["top_p"] == top_p and req["seed"] == seed
    assert req["logprobs"] == logprobs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40).filter(str.strip), min_size=1, max_size=8))  # blank: refused
def test_valid_embedding_requests_are_accepted(texts):
    req = parse_request({"input": texts, "model": "m"}, 384)
    assert list(req["texts"] if isinstance(req, dict) else req[0]) == texts
