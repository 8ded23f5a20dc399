"""Issue 33: nothing of the user's leaks (credentials, secrets in errors, key ids, Ray arguments, key
files), and the key-equality rule that the config round-trip tests depend on."""

import hashlib
import json
import os
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from typer.testing import CliRunner

from wmkit.cli.main import app
from wmkit.errors import InputError, InvalidKeyError
from wmkit.keys import KDF_ID_PARAMS, KeyFileWarning, ScopedKey, SecretKey, read_key_file, write_key_file
from wmkit.remote import suspect_headers
from wmkit.watermark.text import SCHEMES, make_scheme

runner = CliRunner()
SECRET = "sk-live-THIS-IS-THE-USERS-OWN-KEY-0123456789"


class _EmbeddingsServer(BaseHTTPRequestHandler):
    """An OpenAI-style /v1/embeddings endpoint that records every request's headers."""

    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(dict(self.headers))
        rng = np.random.default_rng(len(body["input"]))
        data = [{"index": i, "embedding": rng.normal(size=8).tolist()} for i in range(len(body["input"]))]
        out = json.dumps({"data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def header_logging_suspect():
    _EmbeddingsServer.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _EmbeddingsServer.seen
    server.shutdown()


def _verify(url, keyfile, *extra):
    return runner.invoke(app, ["eaas", "verify", "--suspect", url, "-k", str(keyfile), "--mode", "target-free",
                               "--texts", "8", "--decoys", "2", "--json", *extra])


@pytest.fixture
def keyfile(tmp_path, key):
    return write_key_file(tmp_path / "wm.key", key)


def test_eaas_verify_sends_no_ambient_credential(header_logging_suspect, keyfile, monkeypatch):
    url, seen = header_logging_suspect
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    r = _verify(url, keyfile)
    assert r.exit_code == 0, r.output
    assert seen, "the suspect was not queried"
    assert not any(SECRET in json.dumps(h) for h in seen)
    assert not any(k.lower() == "authorization" for h in seen for k in h)


def test_eaas_verify_sends_a_named_credential_only(header_logging_suspect, keyfile, monkeypatch):
    url, seen = header_logging_suspect
    monkeypatch.setenv("MY_SUSPECT_TOKEN", "token-for-this-suspect")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    r = _verify(url, keyfile, "--api-key-env", "MY_SUSPECT_TOKEN", "--header", "X-Case: 17")
    assert r.exit_code == 0, r.output
    assert all(h.get("Authorization") == "Bearer token-for-this-suspect" and h.get("X-Case") == "17" for h in seen)
    assert not any(SECRET in json.dumps(h) for h in seen)


def test_credentials_never_over_plain_http_to_another_host(keyfile, monkeypatch):
    monkeypatch.setenv("MY_SUSPECT_TOKEN", "token-for-this-suspect")
    r = _verify("http://192.0.2.7:9", keyfile, "--api-key-env", "MY_SUSPECT_TOKEN")
    assert r.exit_code == 2 and "plain HTTP" in r.output and "token-for-this-suspect" not in r.output
    assert suspect_headers("http://192.0.2.7", "MY_SUSPECT_TOKEN", insecure=True)["Authorization"].startswith("Bearer ")
    assert suspect_headers("https://192.0.2.7", "MY_SUSPECT_TOKEN")
    assert suspect_headers("http://[::1]:8000", "MY_SUSPECT_TOKEN")
    with pytest.raises(InputError, match="UNSET_VARIABLE_X"):
        suspect_headers("https://a.example", "UNSET_VARIABLE_X")
    with pytest.raises(InputError) as e:
        suspect_headers("https://a.example", headers=["no colon " + SECRET])
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("scheme, var", [("vllm-gumbel", "VLLM_KEY"), ("synthid", "SYNTHID_KEYS"), ("kgw", "WM_KEY")])
def test_a_profiles_file_cannot_print_a_secret(tmp_path, scheme, var, monkeypatch):
    """A profiles file may name any variable as a key source; the error names it, never prints it."""
    from wmkit.profiles import load_profiles

    monkeypatch.setenv(var, SECRET)
    p = tmp_path / "profiles.json"
    p.write_text(json.dumps({"profiles": [{"name": "x", "config": {"scheme": scheme}, "key": {"env": var}}]}))
    with pytest.raises(Exception) as e:
        load_profiles(p)
    assert SECRET not in str(e.value) and SECRET[3:20] not in str(e.value)
    assert var in str(e.value)


def test_key_parsers_never_echo_the_value():
    from wmkit.watermark.text.synthid import parse_keys
    from wmkit.watermark.text.vllm_native import parse_vllm_key

    for bad in (SECRET, "12345678901234567890123456789", "-7", "0x" + "f" * 17):
        with pytest.raises(InvalidKeyError) as e:
            parse_vllm_key(bad, "$X")
        assert bad not in str(e.value) and bad.lstrip("-0x") not in str(e.value)
    with pytest.raises(InputError) as e:
        parse_keys("1,2," + SECRET)
    assert SECRET not in str(e.value)
    with pytest.raises(InvalidKeyError) as e:
        SecretKey.from_hex(SECRET, source="$X")
    assert SECRET not in str(e.value)


def test_vllm_key_id_is_memory_hard_not_a_sha256_lookup():
    """The old id was 32 bits of SHA-256(label || key): key 42 was found by trying 0, 1, 2, ... The id
    is now scrypt with 128 MiB and p=2; its cost per candidate is the target of issue 33."""
    from wmkit.watermark.text.vllm_native import vllm_key_id

    old = "vllm:" + hashlib.sha256(b"wmkit/vllm-key-id/" + (42).to_bytes(8, "big")).hexdigest()[:8]
    new = make_scheme("vllm-gumbel", 42).key_id()
    assert new.startswith("vllm:") and new != old and len(new) == 13
    assert new == "vllm:" + hashlib.scrypt((42).to_bytes(8, "big"), salt=b"wmkit/key-id/v2/vllm", maxmem=2**30,
                                          dklen=16, **KDF_ID_PARAMS).hex()[:8]  # the KDF and salt as documented
    assert 128 * KDF_ID_PARAMS["n"] * KDF_ID_PARAMS["r"] >= 2**27  # 128 MiB per evaluation
    from wmkit.keys import kdf_key_id

    kdf_key_id.cache_clear()
    t = time.process_time()
    vllm_key_id(43)
    per_key = time.process_time() - t
    # 2^40 keys at this cost, in CPU-years: the issue asks for more than 10^4 (on a slower CPU it is more)
    assert per_key * 2**40 / (365.25 * 86400) > 5e3, per_key


def test_ray_workers_get_subkeys_not_the_master_key(key, tokenizer):
    """What Ray pickles into actor arguments holds no byte of the master secret, and detects alike."""
    from helpers import marked_text

    for name, cls in SCHEMES.items():
        if getattr(cls, "key_kind", "wmkit") != "wmkit" or cls.capabilities.needs_model:
            continue
        scheme = make_scheme(name, key)
        scoped = scheme.scoped()
        blob = pickle.dumps(scoped)
        assert key.secret not in blob and key.secret.hex().encode() not in blob, name
        assert isinstance(scoped.key, ScopedKey) and scoped == scheme, name
        with pytest.raises(InvalidKeyError):
            scoped.key.commitment()
        with pytest.raises(InvalidKeyError):
            scoped.key.prf_key("text/some-other-scheme")
        text = marked_text(make_scheme("kgw", key), tokenizer, n=60)
        if getattr(cls, "sentence_level", False):  # scored by sentences: at least three
            text = "Rain fell on the coast. Markets opened lower. The match was delayed by an hour."
        a = scheme.detector(tokenizer).detect(text)
        b = scoped.detector(tokenizer).detect(text)
        assert (a.statistic, a.p_value, a.n_scored) == (b.statistic, b.p_value, b.n_scored), name


def test_ray_engine_ships_the_scoped_scheme(monkeypatch, tmp_path, key):
    import wmkit.scan as scan

    shipped = {}

    def fake_ray(shards, args, workers, address):
        shipped["args"] = pickle.dumps(args)
        return iter(())

    monkeypatch.setattr(scan, "_ray_scored", fake_ray)
    (tmp_path / "a.txt").write_text("hello world")
    scan.run_scan(scan.InputSpec((str(tmp_path / "a.txt"),)), make_scheme("kgw", key), tmp_path / "out",
                  {"scheme": "kgw"}, engine="ray")
    assert shipped and key.secret not in shipped["args"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_key_file_modes(tmp_path, key):
    p = write_key_file(tmp_path / "private.key", key)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_key_file(p) == key  # 0600: no warning
    os.chmod(p, 0o644)
    with pytest.warns(KeyFileWarning, match="chmod 600"):
        read_key_file(p)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    planted = write_key_file(shared / "k", key)
    link = tmp_path / "link.key"
    link.symlink_to(planted)
    with pytest.raises(InvalidKeyError, match="world-writable"):
        read_key_file(link)
    two = tmp_path / "two.key"
    two.write_text(key.to_hex() + "\n" + SecretKey.generate().to_hex() + "\n")
    os.chmod(two, 0o600)
    with pytest.raises(InvalidKeyError, match="more than one key line"):
        read_key_file(two)


def test_key_file_warning_is_one_line_on_the_cli(tmp_path, key):
    p = write_key_file(tmp_path / "open.key", key)
    os.chmod(p, 0o644)
    (tmp_path / "t.txt").write_text("The lighthouse keeper climbed the stairs each evening, lit the lamp, and "
                                    "wrote the weather into a book that nobody read until the harbour closed.")
    r = runner.invoke(app, ["detect", str(tmp_path / "t.txt"), "-k", str(p)])
    assert r.exit_code == 0, r.output
    assert "wm: warning: key file" in r.output and "Traceback" not in r.output


def test_scheme_equality_sees_the_key(key):
    """Configs with another key are not equal (the round-trip tests would pass with a lost key)."""
    other = SecretKey.generate()
    for name, cls in SCHEMES.items():
        if getattr(cls, "key_kind", "wmkit") == "vllm":
            assert make_scheme(name, 1) == make_scheme(name, 1) and make_scheme(name, 1) != make_scheme(name, 2)
            continue
        a, b = make_scheme(name, key), make_scheme(name, key)
        assert a == b and a != make_scheme(name, other), name
        assert a == cls.from_config(a.config(), key) and a != cls.from_config(a.config(), other), name
    assert key == SecretKey(key.secret) and hash(key) == hash(SecretKey(key.secret))


def test_terminal_output_escapes_control_characters(tmp_path, key, tokenizer):
    """A crafted file cannot clear the screen or rewrite what the user sees: ESC, C1, bidi controls in
    the text (--highlight) and in the file name are shown as escapes, never sent to the terminal."""
    from helpers import marked_text

    keyfile = write_key_file(tmp_path / "wm.key", key)
    text = marked_text(make_scheme("kgw", key), tokenizer, n=60)
    crafted = tmp_path / "evil\x1b[2J\u202e.txt"
    crafted.write_text(text[:40] + "\x1b[2J\x1b]0;owned\x07\x9b31m\u202e" + text[40:])
    r = runner.invoke(app, ["detect", str(crafted), "-k", str(keyfile), "--highlight"])
    assert r.exit_code == 0, r.output
    for raw in ("\x1b[2J", "\x1b]0;", "\x07", "\x9b", "\u202e"):
        assert raw not in r.output
    flat = r.output.replace("\n", "")  # the console wraps long lines (a worker's tmp path is long)
    assert "\\x1b[2J" in flat and "\\u202e" in flat
    missing = tmp_path / "gone\x1b[31m.txt"
    r = runner.invoke(app, ["detect", str(missing), "-k", str(keyfile)])
    assert r.exit_code == 2 and "\x1b[31m" not in r.output and "\\x1b[31m" in r.output.replace("\n", "")
