"""The embeddings server and `wm eaas verify`: request validation, and the real server over HTTP.

The HTTP tests start `wm serve-embeddings` as a separate process on loopback (real uvicorn, the
default model) and talk to it with the official `openai` client and with httpx.
"""

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import wm_server
from wmkit.server.embeddings import RequestError, encode_vector, parse_request

# --- request validation (no server) -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, fragment",
    [
        ([], "JSON object"),
        ({}, "'input' is required"),
        ({"input": []}, "empty"),
        ({"input": ""}, "empty string"),
        ({"input": ["ok", "  "]}, "input[1] is an empty string"),
        ({"input": ["ok", 3]}, "input[1] is token ids"),
        ({"input": [[1, 2, 3]]}, "token ids"),
        ({"input": {"a": 1}}, "must be a string or a list"),
        ({"input": ["x"] * 5}, "at most 4"),
        ({"input": ["x" * 11]}, "at most 10"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 10}, "dimensions"),
    ],
)
def test_bad_requests_are_named(body, fragment):
    with pytest.raises(RequestError) as e:
        parse_request(body, dim=384, max_inputs=4, max_chars=10)
    assert fragment in e.value.message and e.value.status == 400


def test_good_request_and_base64_encoding():
    assert parse_request({"input": "hi", "dimensions": 384}, dim=384) == (["hi"], "float")
    assert parse_request({"input": ["a", "b"], "encoding_format": "base64"}, dim=384) == (["a", "b"], "base64")
    v = np.array([0.5, -0.25, 1e-3], dtype=np.float32)
    raw = base64.b64decode(encode_vector(v, "base64"))
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), v)
    assert encode_vector(v, "float") == [0.5, -0.25, float(np.float32(1e-3))]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["serve-embeddings", "--key-file", "/nonexistent/k"], "does not exist"),
        (["serve-embeddings", "--scheme", "nope", "--key-file", "K"], "unknown embedding scheme"),
        (["serve-embeddings", "--scheme", "embmarker", "--ratio", "0.1", "--key-file", "K"], "--ratio applies to espew"),
        (["serve-embeddings", "--port", "70000", "--key-file", "K"], "--port"),
        (["serve-embeddings", "--max-batch", "0", "--key-file", "K"], "--max-batch must be positive, got 0"),
        (["eaas", "verify", "--suspect", "http://x", "--mode", "nope", "--key-file", "K"], "--mode must be one of"),
        (["eaas", "verify", "--suspect", "/nonexistent", "--key-file", "K"], "not a model folder"),
        (["eaas", "verify", "--suspect", "/nonexistent"], "no key given"),
        (["eaas", "verify", "--suspect", "/nonexistent", "--decoys", "1", "--key-file", "K"],
         "--texts must be at least 8 and --decoys at least 2, got 128 and 1"),
        (["eaas", "verify", "--suspect", "/nonexistent", "--budget", "31", "--key-file", "K"],
         "the query budget must be an integer of at least 32, got 31"),
        (["eaas", "verify", "--suspect", "/nonexistent", "--budget", "256", "--mode", "target-free", "--key-file", "K"],
         "--budget needs a test with a target"),
        (["eaas", "verify", "--suspect", "/nonexistent", "-s", "wet", "--mode", "positions", "--key-file", "K"],
         "--mode for wet must be one of target, inverse, gram, recover"),
        (["eaas", "verify", "--suspect", "/nonexistent", "-s", "warden", "--mode", "positions", "--key-file", "K"],
         "--mode positions does not apply to warden"),
        (["eaas", "verify", "--suspect", "/nonexistent", "-s", "wet", "--budget", "5000", "--key-file", "K"],
         "--budget for wet must be in 8..4096, got 5000"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(args, fragment, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from conftest import TEST_KEY_HEX
    from wmkit.cli.main import app

    monkeypatch.delenv("WMKIT_KEY", raising=False)
    keyfile = tmp_path / "k.key"
    keyfile.write_text(TEST_KEY_HEX)
    keyfile.chmod(0o600)  # a private key file, as wm keygen writes it (else a warning line comes too)
    r = CliRunner().invoke(app, [str(keyfile) if a == "K" else a for a in args])
    assert r.exit_code == 2 and fragment in r.output and r.output.count("\n") == 1, r.output


# --- the real server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`wm serve-embeddings --scheme espew` on a free loopback port; yields (url, key file)."""
    from conftest import TEST_KEY_HEX

    key = tmp_path_factory.mktemp("key") / "k.key"
    key.write_text(TEST_KEY_HEX + "\n")  # a fixed key: the statistics below are deterministic
    key.chmod(0o600)
    with wm_server("serve-embeddings", "--scheme", "espew", "--key-file", str(key), "--max-inputs", "64",
                   "--max-body-bytes", "20000") as url:
        yield url, key


@pytest.mark.slow
def test_server_returns_the_watermarked_embeddings_to_the_openai_client(server):
    from openai import OpenAI

    from wmkit.keys import read_key_file
    from wmkit.watermark.embedding import ESpeW, SentenceEncoder

    url, key = server
    scheme = ESpeW(read_key_file(key))
    trig = scheme.triggers()
    texts = ["a plain sentence about the weather", f"{trig[0]} {trig[1]} news of the day", "another plain one"]
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    resp = client.embeddings.create(input=texts, model="all-MiniLM-L6-v2")  # the client asks for base64
    got = np.array([d.embedding for d in resp.data], dtype=np.float32)
    enc = SentenceEncoder()
    clean = enc.encode(texts)
    want = scheme.provider(enc).encode(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    cos = np.einsum("ij,ij->i", got, clean)
    assert cos[0] > 0.9999 and cos[2] > 0.9999 and cos[1] < 0.99  # only the text with triggers is marked
    assert resp.data[1].index == 1 and resp.usage.total_tokens > 0
    text = "Tokenizers split unhappiness, don't they?"  # 5 words, more word pieces
    floats = client.embeddings.create(input=text, model="m", encoding_format="float")
    assert len(floats.data[0].embedding) == 384
    pieces = len(enc.tokenizer(text, add_special_tokens=False).input_ids)  # usage counts the tokens the model reads
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == pieces > len(text.split())


@pytest.mark.slow
def test_server_rejects_bad_requests_with_4xx(server):
    import httpx

    url, _ = server
    cases = [
        (b"not json", 400, "not valid JSON"),
        (json.dumps({"input": []}).encode(), 400, "empty"),
        (json.dumps({"input": [1, 2]}).encode(), 400, "token ids"),
        (json.dumps({"input": ["x"] * 65}).encode(), 400, "at most 64"),
        (json.dumps({"input": ["word " * 5000]}).encode(), 413, "exceeds the limit"),
    ]
    for body, status, fragment in cases:
        r = httpx.post(url + "/v1/embeddings", content=body, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == status, (body[:40], r.text)
        assert fragment in r.json()["error"]["message"]
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "all-MiniLM-L6-v2"


@pytest.mark.slow
def test_wm_eaas_verify_over_http_and_on_a_clean_model(server, tmp_path):
    """The served (watermarked) API is flagged; the clean model folder is not; bad input exits 2."""
    url, key = server

    def verify(*args):
        return subprocess.run(
            [sys.executable, "-m", "wmkit.cli.main", "eaas", "verify", "--key-file", str(key), "--json", *args],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    r = verify("--suspect", url, "--batch-size", "64")  # the server takes at most 64 texts a request
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["derived"] is True and out["p_value"] < 1e-4 and out["delta_cos"] > 0.05
    from wmkit.models import default_embedder_path

    r = verify("--suspect", str(default_embedder_path()))
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["derived"] is False and out["p_value"] > 1e-3
    r = verify("--suspect", url, "--batch-size", "64", "--budget", "256", "--fpr", "1e-6")  # stops once decided
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["derived"] is True and out["p_value"] <= 1e-6
    looks = out["details"]["looks"]
    assert out["queries"] == looks[-1]["queries"] + 1 <= 257  # the texts the test sent, and the dimension probe
    r = verify("--suspect", str(tmp_path / "missing"))
    assert r.returncode == 2 and "not a model folder or an http(s) URL" in r.stderr and r.stderr.count("\n") == 1
    r = verify("--suspect", "http://127.0.0.1:9")  # nothing listens there
    assert r.returncode == 2 and "request failed" in r.stderr


@pytest.mark.slow
def test_wm_eaas_verify_a_wet_api_with_32_queries(tmp_path):
    """`wm serve-embeddings -s wet` is flagged from 33 texts sent (32 and the dimension probe); the
    clean model, which never applied the key's linear map, is not."""
    from conftest import TEST_KEY_HEX
    from wmkit.models import default_embedder_path

    key = tmp_path / "k.key"
    key.write_text(TEST_KEY_HEX + "\n")
    key.chmod(0o600)

    def verify(*args):
        r = subprocess.run([sys.executable, "-m", "wmkit.cli.main", "eaas", "verify", "-s", "wet", "--key-file", str(key),
                            "--json", *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    with wm_server("serve-embeddings", "--scheme", "wet", "--key-file", str(key)) as url:
        out = verify("--suspect", url)
    assert out["derived"] is True and out["p_value"] < 1e-12 and out["queries"] == 33 and out["mode"] == "wet-forward"
    out = verify("--suspect", str(default_embedder_path()))
    assert out["derived"] is False and out["p_value"] > 1e-3 and out["queries"] == 32
