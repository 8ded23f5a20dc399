"""Property tests (hypothesis): hostile inputs to key parsing, scheme configs, file reading and both
servers' request parsers fail only with wmkit's one-line errors (InputError / RequestError), never a crash."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wmkit.errors import WmkitError
from wmkit.files import read_text
from wmkit.keys import SecretKey
from wmkit.server.completions import parse_completion
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
