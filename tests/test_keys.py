"""Keys: parsing, sources, generation, file safety, subkey derivation."""

import hashlib
import hmac
import os
import stat

import pytest

from wmkit.errors import InvalidKeyError, WmkitError
from wmkit.keys import SecretKey, load_key, read_key_file, write_key_file

HEX = "000102030405060708090a0b0c0d0e0f"


def test_parse_and_minimum_size():
    assert SecretKey.from_hex(HEX).secret == bytes(range(16))
    assert SecretKey.from_hex("# comment\n0x" + HEX + "\n").secret == bytes(range(16))
    with pytest.raises(InvalidKeyError, match="120 bits"):
        SecretKey.from_hex(HEX[:-2])
    with pytest.raises(InvalidKeyError, match="not a hexadecimal"):
        SecretKey.from_hex("correct horse battery staple!!!!")
    with pytest.raises(InvalidKeyError, match="empty"):
        SecretKey.from_hex("  \n")


def test_repr_hides_secret():
    k = SecretKey.from_hex(HEX)
    assert HEX not in repr(k) and "0102" not in str(k)


def test_sources_and_missing_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WMKIT_KEY", raising=False)
    with pytest.raises(InvalidKeyError, match="no key given"):
        load_key()
    monkeypatch.setenv("WMKIT_KEY", HEX)
    assert load_key().secret == bytes(range(16))
    f = tmp_path / "k"
    f.write_text("ff" * 16)
    assert load_key(key_file=f).secret == b"\xff" * 16  # a file beats the environment
    assert load_key(key="ee" * 16, key_file=f).secret == b"\xee" * 16  # an argument beats both
    with pytest.raises(InvalidKeyError, match="does not exist"):
        load_key(key_file=tmp_path / "missing")
    with pytest.raises(InvalidKeyError, match="directory"):
        read_key_file(tmp_path)
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidKeyError, match="not readable"):
        read_key_file(tmp_path / "bin")


def test_write_key_file_mode_and_no_overwrite(tmp_path):
    k = SecretKey.generate()
    p = write_key_file(tmp_path / "key", k)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert read_key_file(p) == k
    before = p.read_bytes()
    with pytest.raises(InvalidKeyError, match="refusing to overwrite"):
        write_key_file(p, SecretKey.generate())
    assert p.read_bytes() == before


def test_generate_is_random_and_sized():
    a, b = SecretKey.generate(), SecretKey.generate(128)
    assert len(a.secret) == 32 and len(b.secret) == 16 and a != SecretKey.generate()
    with pytest.raises(InvalidKeyError):
        SecretKey.generate(64)


def test_subkeys_are_hmac_sha256_and_separate():
    k = SecretKey.from_hex(HEX)
    assert k.subkey("text/kgw") == hmac.new(bytes(range(16)), b"wmkit/v1/text/kgw", hashlib.sha256).digest()
    v2 = hmac.new(bytes(range(16)), b"wmkit/v2/text/kgw", hashlib.sha256).digest()  # PRF spec v2: 4 words, 128 bits
    assert k.prf_key("text/kgw") == tuple(int.from_bytes(v2[i : i + 4], "little") for i in (0, 4, 8, 12))
    assert k.prf_key("text/kgw") != k.prf_key("text/unigram")


def test_keygen_writes_a_commitment_that_the_key_opens(tmp_path):
    import hashlib

    from typer.testing import CliRunner

    from wmkit.cli.main import app
    from wmkit.keys import read_key_file

    r = CliRunner().invoke(app, ["keygen", "-o", str(tmp_path / "k")])
    assert r.exit_code == 0, r.stderr
    key = read_key_file(tmp_path / "k")
    published = (tmp_path / "k.commitment").read_text().strip()
    assert published == hashlib.sha256(b"wmkit/key-commitment/v1\x00" + key.secret).hexdigest() == key.commitment()
    assert published in r.stderr and key.to_hex() not in published
    assert SecretKey.generate().commitment() != published
    (tmp_path / "k2.commitment").write_text("x")  # the commitment's path is taken: no key is written
    r = CliRunner().invoke(app, ["keygen", "-o", str(tmp_path / "k2")])
    assert r.exit_code == 2 and not (tmp_path / "k2").exists()


def test_one_resolver_for_every_kind_and_form(tmp_path, monkeypatch):
    """keys.resolve: values, files, {"file"}/{"env"} references and the environment defaults, for
    wmkit keys, vLLM integers and SynthID key lists; errors never show the value."""
    from wmkit.keys import resolve

    k = SecretKey.generate()
    f = tmp_path / "k.key"
    f.write_text(k.to_hex() + "\n")
    f.chmod(0o600)
    monkeypatch.setenv("MY_KEY", k.to_hex())
    monkeypatch.setenv("WMKIT_KEY", k.to_hex())
    for ref in (k, k.to_hex(), k.secret, f, {"file": "k.key"}, {"env": "MY_KEY"}, None):
        assert resolve(ref, base=tmp_path) == k
    v = tmp_path / "v.key"
    v.write_text("12345\n")
    v.chmod(0o600)
    monkeypatch.setenv("WMKIT_VLLM_KEY", "0x3039")
    for ref in (12345, "12345", v, {"file": str(v)}, None):
        assert resolve(ref, "vllm") == 12345
    assert resolve("654,400,836", "synthid") == (654, 400, 836) == resolve([654, 400, 836], "synthid")
    assert resolve(k.to_hex(), "synthid") == k
    monkeypatch.setenv("SECRET", "hunter2-not-a-key")
    for ref, kind in (({"env": "SECRET"}, "wmkit"), ({"env": "SECRET"}, "vllm"), ({"env": "SECRET"}, "synthid"),
                      ({"inline": "x"}, "wmkit"), (k, "vllm"), ({"env": "UNSET_VAR_X"}, "wmkit")):
        with pytest.raises(WmkitError) as e:
            resolve(ref, kind)
        assert "hunter2" not in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv("WMKIT_VLLM_KEY")
    with pytest.raises(WmkitError, match="no vLLM key given"):
        resolve(None, "vllm")
