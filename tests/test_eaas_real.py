"""EaaS watermarks on the real provider model (all-MiniLM-L6-v2) and real AG News text.

Pins the benchmark's no-attack and no-watermark cases on a small subset: a stealer trained on
EmbMarker's or ESpeW's embeddings is flagged (p < 1e-6), one trained on clean embeddings is not.
"""

import gzip
from pathlib import Path

import numpy as np
import pytest

from wmkit.watermark.embedding import BagOfWordsStealer, EmbMarker, ESpeW, SentenceEncoder, verify_ownership

DATA = Path(__file__).parent.parent / "benchmarks" / "data" / "agnews_10k.tsv.gz"
N = 2000


@pytest.fixture(scope="module")
def corpus():
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        texts = [ln.split("\t")[0] for ln in f.read().splitlines()[:N]]
    enc = SentenceEncoder()
    return texts, enc, enc.encode(texts)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [EmbMarker, ESpeW, None])
def test_stealer_of_the_real_provider(cls, corpus, key):
    texts, enc, clean = corpus
    s = cls(key) if cls else ESpeW(key)
    target = enc.encode([s.target_text()])[0]
    provided = s.mark(texts, clean, target) if cls else clean
    q = s.weights(texts)
    assert 0.05 < (q > 0).mean() < 0.6  # the band's words occur in AG News
    cos = np.einsum("ij,ij->i", provided, clean)
    assert cos.mean() > 0.97 and (cos[q == 0] > 1 - 1e-6).all()
    stealer = BagOfWordsStealer.fit(texts, provided, epochs=15)
    rep = verify_ownership(stealer, s, target, "target")
    if cls is None:
        assert rep.p_value > 0.05 and not rep.detection.decision
    else:
        assert rep.p_value < 1e-6 and rep.delta_cos > 0.05 and rep.delta_l2 < 0


@pytest.mark.slow
def test_batched_passes_equal_each_text_alone(corpus):
    """The encoder's length-sorted, token-budgeted passes (padding inside) give each text's own
    embedding: the same text encoded alone has no padding at all."""
    texts, enc, clean = corpus
    some = texts[:48] + ["word " * 400]  # one past max_length: truncated, and alone in its pass
    alone = np.stack([enc.encode([t])[0] for t in some])
    np.testing.assert_allclose(enc.encode(some), alone, atol=2e-6)
    np.testing.assert_allclose(clean[:48], alone[:48], atol=2e-6)
    assert enc.token_counts(["word " * 400]) == [enc.max_length - 2]


@pytest.mark.slow
def test_encoder_equals_sentence_transformers(corpus):
    """The provider encoder is all-MiniLM-L6-v2 as sentence-transformers runs it (its own code, from
    the wheel `make install` downloads), with its defaults: both truncate at the model's 256 tokens,
    so a 200-token text (past the 128 our encoder once cut at) and a 400-token one embed alike."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _peers import sentence_transformers

    from wmkit.models import default_embedder_path

    texts, enc, clean = corpus
    st = sentence_transformers().SentenceTransformer(str(default_embedder_path()), device="cpu")
    assert enc.max_length == st.max_seq_length == 256
    some = texts[:64] + ["word " * 200, "word " * 400]
    np.testing.assert_allclose(enc.encode(some), st.encode(some, convert_to_numpy=True), atol=2e-6)
