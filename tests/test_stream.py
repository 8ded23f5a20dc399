"""Streaming detection (wmkit.watermark.text.stream): a text scored chunk by chunk gives exactly the
whole-text result, and `wm detect` streams a large file."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import marked_text
from typer.testing import CliRunner

import wmkit.cli.detect as cli_detect
from wmkit.cli.main import app
from wmkit.errors import InputError
from wmkit.keys import write_key_file
from wmkit.watermark.text import SCHEMES
from wmkit.dedup import SeenKeys
from wmkit.watermark.text.stream import ngram_keys, text_chunks

AGNEWS = Path(__file__).parent.parent / "benchmarks" / "data" / "agnews_3000.tsv.gz"
runner = CliRunner()


@pytest.fixture(scope="module")
def human() -> str:
    with gzip.open(AGNEWS, "rt", encoding="utf-8") as f:
        docs = [line.split("\t")[0] for _, line in zip(range(250), f)]
    return " ".join(docs) + " " + " ".join(docs[:40])  # the repeated tail tests n-grams seen chunks ago


def pieces(text: str, size: int = 997) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_text_chunks_cut_only_before_a_word_and_lose_nothing():
    rng = np.random.default_rng(0)
    words = ["a", "bb", "c c", "d\n\ne", "ééé", "x  y", "\t"]
    text = " ".join(words[i] for i in rng.integers(len(words), size=5000))
    chunks = list(text_chunks(pieces(text, 37), 100))
    assert "".join(chunks) == text and len(chunks) > 100
    assert all(50 <= len(c) <= 100 for c in chunks[:-1])
    assert all(b[0] == " " and not a[-1].isspace() and not b[1].isspace() for a, b in zip(chunks, chunks[1:]))
    assert [len(c) for c in text_chunks(["x" * 450], 100)] == [200, 200, 50]  # no word boundary: cut, nothing lost
    with pytest.raises(ValueError):
        list(text_chunks(["abc"], 1))


def test_seen_ngrams_agrees_with_a_python_set():
    rng, seen, ref = np.random.default_rng(1), SeenKeys(), set()
    for _ in range(60):
        keys = rng.integers(0, 5000, size=int(rng.integers(1, 400))).astype(np.uint64)
        expected = []
        for k in keys.tolist():
            expected.append(k not in ref)
            ref.add(k)
        assert seen.first(keys).tolist() == expected
    assert len(seen) == len(ref) and len(seen.runs) <= 13  # merged like a binary counter


def test_ngram_keys_pack_exactly_when_they_fit_and_hash_otherwise():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 49152, size=20000)
    for h in (0, 1, 3):  # 16-bit ids: up to 4 pack into 64 bits, one-to-one
        keys = ngram_keys(ids, h, 49152)
        grams = {tuple(ids[i - h : i + 1]) for i in range(h, len(ids))}
        assert len(keys) == len(ids) - h and len(set(keys.tolist())) == len(grams)
        assert keys[0] == sum(int(x) << (16 * (h - j)) for j, x in enumerate(ids[: h + 1]))
    keys = ngram_keys(ids, 4, 49152)  # 80 bits: hashed
    assert len(set(keys.tolist())) == len({tuple(ids[i - 4 : i + 1]) for i in range(4, len(ids))})
    assert ngram_keys(ids[:3], 4, 49152).size == 0


CONFIGS = [("kgw", {}), ("kgw", {"seeding": "selfhash", "context_width": 4}), ("unigram", {}), ("ie", {})]


@pytest.mark.parametrize("name,extra", CONFIGS, ids=["kgw-h1", "kgw-selfhash-h4", "unigram", "ie"])
@pytest.mark.parametrize("ignore_repeated", [True, False])
def test_a_streamed_text_scores_exactly_as_the_whole_text(tokenizer, key, human, name, extra, ignore_repeated):
    scheme = SCHEMES[name](key=key, **extra)
    marked = marked_text(SCHEMES["kgw"](key=key), tokenizer, 150, seed=3) if name == "kgw" and not extra else ""
    text = human[: len(human) // 2] + marked + human[len(human) // 2 :]
    det = scheme.detector(tokenizer, ignore_repeated_ngrams=ignore_repeated)
    whole = det.detect(text)
    streamed = det.detect_stream(pieces(text), chunk_chars=3000)  # about 40 seams
    assert (streamed.n_scored, streamed.p_value, streamed.statistic) == (whole.n_scored, whole.p_value, whole.statistic)
    assert streamed.details["tokens_total"] == whole.details["tokens_total"]
    if name == "ie":
        assert streamed.details["per_tau"] == whole.details["per_tau"] and streamed.details["tau"] == whole.details["tau"]
        return
    a, b = det.detect_windowed(text), det.detect_stream(pieces(text), windowed=True, chunk_chars=3000)
    assert (b.details["token_start"], b.details["token_end"], b.p_value) == (a.details["token_start"], a.details["token_end"], a.p_value)
    assert b.details["window_ids"] == a.details["window_ids"]
    if marked:  # the marked passage is found inside 40k tokens of news
        passage = tokenizer.decode(a.details["window_ids"]).strip()
        assert a.decision and len(passage) > 200 and passage in marked


def test_chunks_tokenize_as_the_whole_text(tokenizer, human):
    whole = tokenizer(human, add_special_tokens=False)["input_ids"]
    joined = [t for c in text_chunks(pieces(human), 2000) for t in tokenizer(c, add_special_tokens=False)["input_ids"]]
    assert joined == whole


def test_a_stream_too_short_or_empty_is_an_input_error(tokenizer, key):
    det = SCHEMES["kgw"](key=key).detector(tokenizer)
    with pytest.raises(InputError, match="can be scored"):
        det.detect_stream(["just a few words"])
    with pytest.raises(InputError, match="can be scored"):
        SCHEMES["ie"](key=key).detector(tokenizer).detect_stream([])


def test_wm_detect_streams_a_large_file_with_the_whole_file_result(tmp_path, tokenizer, key, human, monkeypatch):
    keyfile = tmp_path / "k"
    write_key_file(keyfile, key)
    marked = marked_text(SCHEMES["kgw"](key=key), tokenizer, 150, seed=3)
    big = tmp_path / "big.txt"
    big.write_text(human + marked, encoding="utf-8")
    small = tmp_path / "small.txt"
    small.write_text(marked, encoding="utf-8")
    args = ["detect", str(big), str(small), "-k", str(keyfile), "--json"]
    whole = [json.loads(x) for x in runner.invoke(app, args).stdout.splitlines()]
    whole_windowed = runner.invoke(app, args + ["--windowed"]).stdout
    monkeypatch.setattr(cli_detect, "STREAM_CHARS", 20_000)  # big.txt is now streamed, small.txt is not
    r = runner.invoke(app, args + ["--highlight"])
    assert r.exit_code == 0, r.stderr
    streamed = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["file"] for x in streamed] == [str(big), str(small)]  # in the order given
    assert streamed == whole and not streamed[0]["watermarked"] and streamed[1]["watermarked"]
    windowed = runner.invoke(app, args + ["--windowed"]).stdout  # the marked passage inside big.txt, located
    assert windowed == whole_windowed and json.loads(windowed.splitlines()[0])["watermarked"]
    assert "big.txt: streamed (over 19k characters)" in r.stderr and "no per-token highlight" in r.stderr
    r = runner.invoke(app, args + ["--prompt", "Hello"])  # a prompt needs the text whole: that file's error only
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 2 and "--prompt applies to texts read whole" in rows[0]["error"] and rows[1]["watermarked"]
    r = runner.invoke(app, ["detect", str(big), "-k", str(keyfile), "--json", "--max-input-mb", "0.01"])
    assert r.exit_code == 2 and "larger than 0.01 MiB" in r.stderr
    bad = tmp_path / "bad.txt"  # a decoding error deep inside a streamed file is that file's error only
    bad.write_bytes(human.encode() + b"\xff" + b" more" * 10)
    r = runner.invoke(app, ["detect", str(bad), str(small), "-k", str(keyfile), "--json"])
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 2 and "not UTF-8 text (invalid byte 0xff at offset" in rows[0]["error"] and rows[1]["watermarked"]


def test_wm_schemes_says_which_detectors_stream():
    r = runner.invoke(app, ["schemes", "--json"])
    rows = {row["scheme"]: row["detector"]["streams"] for row in json.loads(r.stdout)}
    assert rows["kgw"] and rows["unigram"] and rows["ie"] and not rows["sweet"] and not rows["synthid"]

