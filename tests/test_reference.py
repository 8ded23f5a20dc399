"""The reference null (wmkit.watermark.text.reference): one key's green rate on natural text, the
per-key miscalibration it explains, and the detector that tests against it."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import prf_reference as ref
from wmkit.cli.main import app
from wmkit.errors import InputError
from wmkit.keys import SecretKey, write_key_file
from wmkit.stats import binomial_pvalue
from wmkit.watermark.text import SCHEMES
from wmkit.watermark.text.normalize import normalize_text
from wmkit.watermark.text.reference import BUCKETS, COMMON, GENRES, ReferenceNull, reference_texts

AGNEWS = Path(__file__).parent.parent / "benchmarks" / "data" / "agnews_10k.tsv.gz"


@pytest.fixture(scope="module")
def held_out_news(tokenizer):
    """AG News articles 5,000-9,999 (the shipped reference holds the first 5,000), as 200-token documents."""
    with gzip.open(AGNEWS, "rt", encoding="utf-8") as f:
        texts = [line.split("\t")[0] for line in f][5000:]
    enc = tokenizer([normalize_text(t) for t in texts], add_special_tokens=False)["input_ids"]
    stream = torch.tensor([t for e in enc for t in e])
    n = len(stream) // 200
    return list(stream[: n * 200].view(n, 200))


def test_the_shipped_references_are_not_the_evaluation_text():
    with gzip.open(AGNEWS, "rt", encoding="utf-8") as f:
        rows = [line.split("\t")[0].strip() for line in f]
    assert reference_texts("news") == rows[:5000]  # the benchmarks and tests evaluate on rows 5,000-9,999
    assert all(len(reference_texts(g)) > 100 for g in GENRES)


def test_unigram_rate_is_the_document_frequency_weighted_green_mass(tokenizer, key):
    """Second implementation: per 256-token news document, every distinct token counts once; the rate is
    the green share of those counts, with green from the pure-Python PRF."""
    scheme = SCHEMES["unigram"](key=key, gamma=0.25)
    rates = ReferenceNull.load(tokenizer, 0).rates(scheme.prf_key(), 0, "lefthash", 0.25)
    enc = tokenizer([normalize_text(t) for t in reference_texts("news")], add_special_tokens=False)["input_ids"]
    stream = [t for e in enc for t in e]
    counts: dict[int, int] = {}
    for d in range(len(stream) // 256):
        for t in set(stream[d * 256 : (d + 1) * 256]):
            counts[t] = counts.get(t, 0) + 1
    green = sum(c for t, c in counts.items() if ref.is_green([], t, scheme.prf_key(), 0.25, "lefthash"))
    assert rates[GENRES.index("news"), BUCKETS.index(256)] == pytest.approx(green / sum(counts.values()), abs=1e-6)


def _shares(streams, pairs_of, lengths):
    """Second implementation of the common-coin ranking: each coin's share of a genre's scored coins
    (counted once per text of each length), summed over genres and lengths, in plain Python."""
    share: dict = {}
    for stream in streams:
        s = stream.tolist()
        for length in lengths:
            counts: dict = {}
            for d in range(len(s) // length):
                for c in pairs_of(s[d * length : (d + 1) * length]):
                    counts[c] = counts.get(c, 0) + 1
            total = sum(counts.values())
            for c, k in counts.items():
                share[c] = share.get(c, 0.0) + k / total
    return share


def _assert_top(share, got, count):
    ranked = sorted(share.values(), reverse=True)
    cut = ranked[count - 1]
    assert len(got) == count
    assert all(share.get(c, 0.0) >= cut - 1e-6 for c in got)  # equal shares at the cut may go either way
    assert {c for c, v in share.items() if v > cut + 1e-6} <= got


def test_common_coins_are_the_references_most_scored_coins(tokenizer):
    """Lefthash h1: the 300 bigrams with the largest summed share of scored bigrams over every genre and
    length bucket; selfhash h4: the 300 (anchor, token) pairs at distance 1..4 with the largest summed
    share, per 256-token text. Both against plain-Python counts of the same token streams."""
    bits = (len(tokenizer) - 1).bit_length()
    ref1 = ReferenceNull.load(tokenizer, 1)
    got = {(int(k) >> bits, int(k) & ((1 << bits) - 1)) for k in ref1.common_coins("lefthash", len(tokenizer))}
    share = _shares(ref1.streams, lambda t: {(t[i - 1], t[i]) for i in range(1, len(t))}, BUCKETS)
    _assert_top(share, got, COMMON)
    ref4 = ReferenceNull.load(tokenizer, 4)
    got = {(int(k) >> 31, int(k) & (2**31 - 1)) for k in ref4.common_coins("selfhash", len(tokenizer))}
    share = _shares(ref4.streams, lambda t: {(t[i - j], t[i]) for i in range(4, len(t)) for j in range(1, 5)}, (256,))
    _assert_top(share, got, COMMON)


def test_the_reference_null_is_the_detectors_p_value(tokenizer, key, held_out_news):
    """Scored: the distinct bigrams that are not common coins (counted here in plain Python); the
    p-value is the binomial tail at the key's reference rate over the coins that are scored."""
    scheme = SCHEMES["kgw"](key=key, gamma=0.25)
    plain, refd = scheme.detector(tokenizer), scheme.detector(tokenizer, null="reference")
    bits = (len(tokenizer) - 1).bit_length()
    common = {(int(k) >> bits, int(k) & ((1 << bits) - 1)) for k in refd._common}
    for doc in held_out_news[:5]:
        a, b = plain.detect(doc), refd.detect(doc)
        rate = refd.null_rate(len(doc))
        assert rate >= 0.25 and b.details["gamma"] == rate and b.details["null"] == "reference"
        assert b.p_value == pytest.approx(binomial_pvalue(b.details["green"], b.n_scored, rate), rel=1e-9)
        t = doc.tolist()
        bigrams = {(t[i - 1], t[i]) for i in range(1, len(t))}
        assert a.n_scored == len(bigrams) and b.n_scored == len(bigrams - common) < a.n_scored
        assert b.details["common_coins_excluded"] == COMMON
    with pytest.raises(InputError, match="null must be one of"):
        scheme.detector(tokenizer, null="empirical")


def test_an_unlucky_unigram_key_is_miscalibrated_and_the_reference_null_restores_it(tokenizer, held_out_news):
    """The cause, shown: among 40 keys take the one whose list holds the most reference mass; on held-out
    news its green fraction sits at its reference rate, not at gamma, so at p <= 1e-2 it flags several
    percent of human documents (more than 2x nominal). Tested against its own rate, it is within 2x."""
    null = ReferenceNull.load(tokenizer, 0)
    schemes = [SCHEMES["unigram"](key=SecretKey(bytes([i]) * 32), gamma=0.25) for i in range(40)]
    news_rate = [null.rates(s.prf_key(), 0, "lefthash", 0.25)[GENRES.index("news"), BUCKETS.index(256)] for s in schemes]
    worst = schemes[int(np.argmax(news_rate))]
    before = worst.detector(tokenizer).detect_many(held_out_news, evidence=False)
    after = worst.detector(tokenizer, null="reference").detect_many(held_out_news, evidence=False)
    mean_green = np.mean([d.details["green_fraction"] for d in before])
    assert max(news_rate) > 0.27 and abs(mean_green - max(news_rate)) < abs(mean_green - 0.25) / 2
    fpr_before = np.mean([d.p_value <= 1e-2 for d in before])
    fpr_after = np.mean([d.p_value <= 1e-2 for d in after])
    assert fpr_before > 0.02 and fpr_after <= 0.02, (fpr_before, fpr_after)  # 2.5% -> 0.27% (deterministic keys)


def test_an_unlucky_kgw_key_on_code_is_restored_by_dropping_common_coins(tokenizer):
    """kgw h1 on held-out CPython code (the top-level modules the code reference leaves out, 200-token
    documents, 1,350): of the 20 keys bytes([i]) * 32, key 12 flags 2.8% at p <= 1e-2 with the plain test --
    its colours of code's commonest bigrams (``self .``, ``) :``, indentation) are green-heavy, and the
    reference code's rate does not show it. Without the common coins it is within 2x of nominal."""
    from wmkit.watermark.text.ie.corpus import split_files, stdlib_files

    texts = [p.read_text(encoding="utf-8", errors="replace") for p in split_files(stdlib_files())[1]]
    enc = tokenizer([normalize_text(t) for t in texts], add_special_tokens=False)["input_ids"]
    stream = torch.tensor([t for e in enc for t in e])
    n = len(stream) // 200
    assert n > 1000
    docs = list(stream[: n * 200].view(n, 200))
    scheme = SCHEMES["kgw"](key=SecretKey(bytes([12]) * 32), gamma=0.25)
    before = np.mean([d.p_value <= 1e-2 for d in scheme.detector(tokenizer).detect_many(docs, evidence=False)])
    after = np.mean([d.p_value <= 1e-2 for d in scheme.detector(tokenizer, null="reference").detect_many(docs, evidence=False)])
    assert before > 0.02 and after <= 0.02, (before, after)


def test_wm_detect_null_reference(tmp_path, tokenizer, key, held_out_news):
    keyfile = tmp_path / "k"
    write_key_file(keyfile, key)
    doc = tmp_path / "news.txt"
    doc.write_text(tokenizer.decode(held_out_news[0]), encoding="utf-8")
    runner = CliRunner()
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "-s", "unigram", "--gamma", "0.25", "--null",
                            "reference", "--json"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["null"] == "reference" and row["null_rate"] >= 0.25
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "-s", "ie", "--null", "reference"])
    assert r.exit_code == 2 and "--null reference applies to the green-list schemes" in r.stderr
    r = runner.invoke(app, ["detect", str(doc), "-k", str(keyfile), "--null", "empirical"])
    assert r.exit_code == 2 and "--null must be gamma or reference" in r.stderr
