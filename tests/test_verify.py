"""The library's verification call (:class:`wmkit.verify.Verifier`) gives the rows ``wm detect``
prints, and every text detector is called through its protocol alone."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers import marked_text
from wmkit.cli.main import app
from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.stats import Detection
from wmkit.verify import Verifier
from wmkit.watermark.text import KGW, SCHEMES
from wmkit.watermark.text.detector import Detector, TextDetector

KEY = SecretKey(bytes(range(32)))


@pytest.fixture
def files(tmp_path, tokenizer):
    key_file = tmp_path / "k.key"
    key_file.write_text(KEY.to_hex() + "\n")
    key_file.chmod(0o600)
    marked, plain = tmp_path / "m.txt", tmp_path / "p.txt"
    marked.write_text(marked_text(KGW(KEY), tokenizer, 150, seed=1), encoding="utf-8")
    plain.write_text(marked_text(KGW(SecretKey(bytes(32))), tokenizer, 150, seed=2), encoding="utf-8")
    return key_file, marked, plain


def test_verifier_rows_are_wm_detects_rows(files, tokenizer):
    key_file, marked, plain = files
    for extra in ([], ["--windowed"]):
        r = CliRunner().invoke(app, ["detect", str(marked), str(plain), "-k", str(key_file), "--null", "gamma", "--json",
                                     *extra])
        assert r.exit_code == 0, r.stderr
        cli = [json.loads(line) for line in r.stdout.splitlines()]
        v = Verifier(KGW(KEY), tokenizer, null="gamma")
        lib = v.check([marked.read_text(), plain.read_text()], [str(marked), str(plain)], windowed=bool(extra))
        assert lib == cli
        assert [row["verdict"] for row in lib] == ["watermarked", "not watermarked"]
        assert {row["key_id"] for row in lib} == {KEY.fingerprint()} and {row["null"] for row in lib} == {"gamma"}
    short = v.check(["two words"])[0]
    assert set(short) == {"file", "error"} and "token" in short["error"]


def test_verifier_from_a_record_refuses_another_key(tmp_path, tokenizer):
    record = tmp_path / "r.jsonl"
    record.write_text(json.dumps({"config": KGW(KEY, gamma=0.5).config(), "key_id": KEY.fingerprint(), "completion": "x"}) + "\n")
    key_file, other = tmp_path / "k.key", tmp_path / "o.key"
    for path, k in ((key_file, KEY), (other, SecretKey(bytes(32)))):
        path.write_text(k.to_hex() + "\n")
        path.chmod(0o600)
    v = Verifier.from_record(record, tokenizer, key_file, null="gamma")
    assert v.scheme.gamma == 0.5 and v.key_id == KEY.fingerprint()
    with pytest.raises(InputError, match="key id"):
        Verifier.from_record(record, tokenizer, other)


def test_every_key_only_scheme_through_the_protocol_only(tokenizer):
    """Keyword calls with the protocol's names only (text, prompt, windows; texts, prompts)."""
    marked = marked_text(KGW(KEY), tokenizer, 160, seed=3)
    for name, cls in SCHEMES.items():
        text = marked
        if cls.capabilities.needs_model:
            continue
        det = cls(key=42 if name.startswith("vllm") else KEY).detector(tokenizer)
        assert isinstance(det, TextDetector) and isinstance(det, Detector), name  # one protocol, one base
        if getattr(cls, "sentence_level", False):  # scored by sentences: at least three
            text = "Rain fell on the coast. Markets opened lower. The match was delayed. Fans waited in the stands."
        one = det.detect(text=text, prompt=None)
        (many,) = det.detect_many(texts=[text], prompts=[None])
        assert isinstance(one, Detection) and one.p_value == many.p_value, name
        if getattr(cls, "sentence_level", False):  # sentence windows
            w = det.detect_windowed(text=text, prompt=None, windows=(50, 100))
            assert 1 <= w.details["start_sentence"] < w.details["end_sentence"] <= w.details["sentences"], name
        elif det.capabilities.windowed:
            w = det.detect_windowed(text=text, prompt=None, windows=(50, 100))
            assert 0 <= w.details["token_start"] < w.details["token_end"] <= len(tokenizer(text).input_ids), name
        else:
            with pytest.raises(InputError, match="windowed"):
                det.detect_windowed(text=text, prompt=None, windows=(50,))
