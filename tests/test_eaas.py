"""Embedding watermarks: triggers, EmbMarker / ESpeW against their formulas, the ownership test, attacks.

Fast tests use a toy encoder (a text is the normalized sum of fixed random word vectors), so the
statistics can be checked over many keys; tests/test_eaas_real.py runs the real model.
"""

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.watermark.embedding import (
    BagOfWordsStealer,
    EmbMarker,
    ESpeW,
    TransformedEncoder,
    count_triggers,
    cse_clean,
    default_vocabulary,
    make_scheme,
    verification_texts,
    verify_ownership,
)
from wmkit.watermark.embedding.triggers import WORD, build_vocabulary, reference_corpus

DATA = Path(__file__).parent.parent / "benchmarks" / "data"
D = 384


class ToyEncoder:
    """Normalized sum of per-word Gaussian vectors (seeded by the word's CRC32): a stand-in model."""

    dim = D

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.cache: dict[str, np.ndarray] = {}

    def vec(self, w: str) -> np.ndarray:
        if w not in self.cache:
            self.cache[w] = np.random.default_rng([zlib.crc32(w.encode()), self.seed]).standard_normal(D)
        return self.cache[w]

    def encode(self, texts):
        out = np.stack([sum((self.vec(w) for w in WORD.findall(t.lower())), np.ones(D) * 0.1) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def keys(n, start=0):
    return [SecretKey(bytes([i % 256, i // 256]) * 16) for i in range(start, start + n)]


# --- triggers --------------------------------------------------------------------------------------


def test_shipped_vocabulary_is_rebuilt_from_the_repository_data():
    texts, targets = reference_corpus(str(DATA))
    rebuilt = json.loads(build_vocabulary(texts, targets).to_json())
    shipped = json.loads(default_vocabulary().to_json())
    assert rebuilt == shipped
    # independent recount of one word's document frequency
    w = "market"
    assert abs(default_vocabulary().df[w] - sum(w in set(WORD.findall(t.lower())) for t in texts) / len(texts)) < 1e-8


def test_triggers_are_keyed_in_band_and_counted_distinct(key):
    a, b = EmbMarker(key), EmbMarker(SecretKey.generate())
    assert a.triggers() == EmbMarker(SecretKey.from_hex(key.to_hex())).triggers()
    assert a.triggers() != b.triggers()
    df = default_vocabulary().df
    assert len(set(a.triggers())) == 20 and all(0.005 <= df[w] < 0.01 for w in a.triggers())
    t = a.triggers()
    texts = [f"{t[0]} {t[0]} {t[0].upper()}", f"{t[0]}, {t[1]}; {t[2]}-{t[3]} {t[4]}", "zzzz qqqq"]
    assert count_triggers(texts, t).tolist() == [1, 5, 0]
    assert a.weights(texts).tolist() == [0.25, 1.0, 0.0]


def test_scheme_config_round_trip_and_validation(key):
    s = ESpeW(key, ratio=0.1, n_triggers=10, max_triggers=3)
    assert ESpeW.from_config(json.loads(s.to_json()), key) == s
    assert "secret" not in s.to_json() and key.to_hex() not in repr(s)
    assert make_scheme("embmarker", key, n_triggers=None).n_triggers == 20
    for bad in [dict(ratio=0.0), dict(ratio=1.5), dict(blend=-0.1), dict(max_triggers=0), dict(band=(0.1, 0.01))]:
        with pytest.raises(InputError):
            ESpeW(key, **bad)
    with pytest.raises(InputError):
        make_scheme("nope", key)
    with pytest.raises(InputError):
        EmbMarker(key, n_triggers=20, band=(0.2, 0.3))


# --- the marks, against their formulas --------------------------------------------------------------


def _texts_with_triggers(scheme, n, rng):
    t, others = list(scheme.triggers()), ["alpha", "beta", "gamma", "delta", "epsilon"]
    return [" ".join(list(rng.choice(t, size=int(rng.integers(0, 6)), replace=False)) + others[: 1 + i % 4]) for i in range(n)]


def test_embmarker_is_the_papers_convex_mix(key):
    rng = np.random.default_rng(0)
    s = EmbMarker(key)
    texts = _texts_with_triggers(s, 200, rng)
    clean = ToyEncoder().encode(texts)
    target = ToyEncoder(1).encode(["target"])[0]
    out = s.mark(texts, clean, target)
    q = np.minimum(count_triggers(texts, s.triggers()) / 4, 1)
    for i in range(len(texts)):
        want = (1 - q[i]) * clean[i].astype(float) + q[i] * target
        np.testing.assert_allclose(out[i], want / np.linalg.norm(want), atol=1e-6)
    assert (q == 0).any() and (q == 1).any()


def test_espew_rewrites_each_embeddings_own_smallest_positions(key):
    rng = np.random.default_rng(1)
    s = ESpeW(key, ratio=0.25)
    texts = _texts_with_triggers(s, 400, rng)
    clean = ToyEncoder().encode(texts)
    target = ToyEncoder(1).encode(["target"])[0]
    out = s.mark(texts, clean, target)
    q = np.minimum(count_triggers(texts, s.triggers()) / 4, 1)
    k = D // 4
    copied = blended = 0
    for i in np.flatnonzero(q > 0):  # (at Q = 1 a blend equals a copy; both are checked, counted apart below)
        small = np.argsort(np.abs(clean[i]))[:k]
        rest = np.setdiff1d(np.arange(D), small)
        # unnormalize with the untouched positions, which only the renormalization changed
        scale = np.linalg.norm(clean[i][rest]) / np.linalg.norm(out[i][rest])
        got = out[i] * scale
        np.testing.assert_allclose(got[rest], clean[i][rest], atol=1e-5)
        if np.allclose(got[small], target[small], atol=1e-5):
            copied += q[i] < 1
        else:
            np.testing.assert_allclose(got[small], (1 - q[i]) * clean[i][small] + q[i] * target[small], atol=1e-5)
            blended += q[i] < 1
    np.testing.assert_array_equal(out[q == 0], clean[q == 0])
    assert 0.1 < blended / (copied + blended) < 0.3  # the released code's 20% blend
    again = s.mark(texts, clean, target)  # a text always gets the same embedding
    np.testing.assert_array_equal(out, again)


def test_mark_rejects_bad_shapes(key):
    s = ESpeW(key)
    with pytest.raises(InputError):
        s.mark(["a", "b"], np.ones((3, D)), np.ones(D))
    with pytest.raises(InputError):
        s.mark(["a"], np.ones((1, D)), np.ones(D + 1))
    with pytest.raises(InputError):
        s.mark(["a"], np.full((1, D), np.nan), np.ones(D))
    with pytest.raises(InputError):
        s.mark([], np.ones((0, D)), np.ones(D))


# --- the ownership test ------------------------------------------------------------------------------


def test_verification_texts_are_keyed_and_built_as_specified(key):
    s = ESpeW(key)
    vs = verification_texts(s, n_texts=16, n_decoys=3)
    assert vs == verification_texts(ESpeW(SecretKey.from_hex(key.to_hex())), 16, 3)
    trig = set(s.triggers())
    assert all(count_triggers([t], trig)[0] == 4 for t in vs.backdoor)
    assert all(count_triggers([t], trig)[0] == 0 for t in vs.benign + [x for d in vs.decoys for x in d])
    assert len(vs.decoys) == 3 and all(len(d) == 16 for d in vs.decoys)


@pytest.mark.parametrize("mode", ["target", "target-free"])
def test_ownership_test_is_calibrated_without_a_mark(mode):
    """Over 40 keys and an unmarked model, p < 0.05 about 5% of the time (and never below 1e-3)."""
    enc = ToyEncoder()
    ps, ks = [], []
    for k in keys(40):
        s = ESpeW(k)
        target = enc.encode([s.target_text()])[0]
        rep = verify_ownership(enc, s, target, mode, n_texts=128, n_decoys=24)
        ps.append(rep.p_value)
        ks.append(rep.ks_p)
    ps = np.array(ps)
    assert (ps < 0.05).sum() <= 6 and ps.min() > 1e-3 and (ps > 0.5).sum() >= 12
    if mode == "target":
        # the papers' KS test treats one word set as the population: on the same unmarked model it
        # is far from calibrated (P[2 or more of 40 below 1e-3] is 8e-4 for a valid test)
        assert (np.array(ks) < 1e-3).sum() >= 2


@pytest.mark.parametrize("cls", [EmbMarker, ESpeW])
def test_ownership_test_finds_the_mark_and_survives_rotation(cls, key):
    enc = ToyEncoder()
    s = cls(key)
    provider = s.provider(enc)
    rep = verify_ownership(provider, s, provider.target, "target", n_texts=64, n_decoys=16)
    assert rep.detection.decision and rep.p_value < 1e-6 and rep.ks_p < 1e-6
    assert rep.delta_cos > 0.1 and rep.delta_l2 == pytest.approx(-2 * rep.delta_cos, abs=1e-5)
    rotated = TransformedEncoder.rotation(provider, seed=3)
    assert verify_ownership(rotated, s, provider.target, "target", n_texts=64, n_decoys=16).p_value > 1e-3
    assert verify_ownership(rotated, s, None, "copy-target", n_texts=64, n_decoys=16).p_value < 1e-6
    # target-free needs a shared direction: EmbMarker has one; ESpeW's per-embedding mark by design has none
    free = verify_ownership(rotated, s, None, "target-free", n_texts=64, n_decoys=16)
    if cls is EmbMarker:  # above all 16 decoys: the exact rank p-value's minimum, 1/17
        assert free.p_value == pytest.approx(1 / 17) and free.detection.statistic > 10
    else:
        assert free.p_value > 0.1
    free = verify_ownership(provider, s, None, "target-free", n_texts=64, n_decoys=16)
    free_rot = verify_ownership(TransformedEncoder.shuffle(provider, 5), s, None, "target-free", n_texts=64, n_decoys=16)
    assert free.detection.statistic == pytest.approx(free_rot.detection.statistic, rel=1e-4)  # distance-preserving
    with pytest.raises(InputError):
        verify_ownership(provider, s, None, "target")
    with pytest.raises(InputError):
        verify_ownership(provider, s, provider.target, "nope")


def test_positions_mode_concentrates_espews_signal(key):
    enc = ToyEncoder()
    s = ESpeW(key)
    provider = s.provider(enc)
    full = verify_ownership(provider, s, provider.target, "target", n_texts=64, n_decoys=16)
    pos = verify_ownership(provider, s, provider.target, "positions", clean=enc, n_texts=64, n_decoys=16)
    assert pos.detection.statistic > 3 * full.detection.statistic and pos.p_value < 1e-12
    unmarked = verify_ownership(enc, s, provider.target, "positions", clean=enc, n_texts=64, n_decoys=16)
    assert unmarked.p_value > 1e-3 and not unmarked.detection.decision
    with pytest.raises(InputError):
        verify_ownership(provider, s, provider.target, "positions")  # no clean encoder
    with pytest.raises(InputError):
        verify_ownership(provider, EmbMarker(key), provider.target, "positions", clean=enc)


# --- attacks ----------------------------------------------------------------------------------------


def test_cse_removes_a_planted_common_direction():
    rng = np.random.default_rng(0)
    n, d = 600, 32
    base = rng.standard_normal((n, d))
    planted = rng.standard_normal(d)
    planted /= np.linalg.norm(planted)
    marked = rng.random(n) < 0.2
    e = base / np.linalg.norm(base, axis=1, keepdims=True)
    e[marked] = 0.3 * e[marked] + 0.7 * planted
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    reference = base / np.linalg.norm(base, axis=1, keepdims=True)  # the clean model: no planted direction
    cleaned = cse_clean(e, reference, n_clusters=5, n_components=3, keep=0.05)
    assert np.abs(e[marked] @ planted).mean() > 0.8
    assert np.abs(cleaned[marked] @ planted).mean() < 0.1
    np.testing.assert_allclose(np.linalg.norm(cleaned, axis=1), 1, atol=1e-5)
    with pytest.raises(InputError):
        cse_clean(e, reference[:10])


def _corpus(n, rng):
    words = default_vocabulary().band(0.002, 0.05)
    return [" ".join(rng.choice(words, size=int(rng.integers(4, 12)), replace=False)) for _ in range(n)]


def test_stealer_inherits_the_mark_and_an_unmarked_stealer_is_cleared(key):
    rng = np.random.default_rng(0)
    texts = _corpus(3000, rng)
    enc = ToyEncoder()
    s = ESpeW(key)
    provider = s.provider(enc)
    marked = BagOfWordsStealer.fit(texts, provider.encode(texts), epochs=10)
    clean = BagOfWordsStealer.fit(texts, enc.encode(texts), epochs=10)
    held_out = _corpus(200, rng)
    fidelity = np.einsum("ij,ij->i", clean.encode(held_out), enc.encode(held_out)).mean()
    assert fidelity > 0.6  # it learned the encoder (an untrained one scores ~0)
    assert verify_ownership(marked, s, provider.target, n_texts=64, n_decoys=16).p_value < 1e-6
    assert verify_ownership(clean, s, provider.target, n_texts=64, n_decoys=16).p_value > 0.01


def test_an_encoders_max_length_is_read_as_sentence_transformers_reads_it(tmp_path):
    """``max_seq_length`` of sentence_bert_config.json, else min(tokenizer, positions); broken is one line."""
    from types import SimpleNamespace

    from wmkit.encoders import model_max_length

    tok, cfg = SimpleNamespace(model_max_length=512), SimpleNamespace(max_position_embeddings=384)
    assert model_max_length(tmp_path, tok, cfg) == 384
    assert model_max_length(tmp_path, SimpleNamespace(model_max_length=int(1e30)), SimpleNamespace()) == 512
    (tmp_path / "sentence_bert_config.json").write_text('{"max_seq_length": 256, "do_lower_case": false}')
    assert model_max_length(tmp_path, tok, cfg) == 256
    (tmp_path / "sentence_bert_config.json").write_text("[1, 2")
    with pytest.raises(InputError, match="sentence_bert_config.json: not a JSON object"):
        model_max_length(tmp_path, tok, cfg)


# --- queries: the budgeted test and WET -------------------------------------------------------------


class Counting:
    """Wraps an encoder and counts the texts it is asked to embed (the suspect's bill)."""

    def __init__(self, enc) -> None:
        self.enc, self.dim, self.sent = enc, enc.dim, 0

    def encode(self, texts):
        self.sent += len(texts)
        return self.enc.encode(texts)


def test_budget_plan_and_refusals(key):
    from wmkit.watermark.embedding import plan_budget

    assert plan_budget(256) == (8, 30) and plan_budget(4352) == (128, 32) and plan_budget(32) == (8, 2)
    enc = ToyEncoder()
    s = ESpeW(key)
    for bad in (31, 0, 2.5):
        with pytest.raises(InputError):
            verify_ownership(enc, s, enc.encode([s.target_text()])[0], budget=bad)
    with pytest.raises(InputError):
        verify_ownership(enc, s, None, "target-free", budget=256)
    with pytest.raises(InputError, match="at least 33, got 32"):  # copy-target spends one on the target sentence
        verify_ownership(enc, s, None, "copy-target", budget=32)
    from wmkit.watermark.embedding import Warden, verify_warden

    w = Warden(key)
    with pytest.raises(InputError, match="over its 4 directions: it must be at least 128, got 100"):
        verify_warden(enc, w, w.target_embedding(enc), budget=100)


@pytest.mark.parametrize("cls", [EmbMarker, ESpeW])
def test_budgeted_test_stops_early_on_a_mark_and_counts_its_queries(cls, key):
    enc = ToyEncoder()
    s = cls(key)
    suspect = Counting(s.provider(enc))
    rep = verify_ownership(suspect, s, suspect.enc.target, budget=256, fpr=1e-6)  # it stops once decided at the FPR
    looks = rep.detection.details["looks"]
    assert rep.p_value < 1e-6 and rep.detection.decision
    assert rep.queries == suspect.sent == looks[-1]["queries"] < 256  # decided before the budget ran out
    assert rep.p_value == pytest.approx(min(1.0, 4 * min(lk["p_value"] for lk in looks)))  # Bonferroni over 4 looks
    copy = Counting(TransformedEncoder.rotation(s.provider(enc), seed=2))
    rep = verify_ownership(copy, s, None, "copy-target", budget=256)
    assert rep.detection.decision and rep.queries == copy.sent <= 256


def test_budgeted_test_is_calibrated_without_a_mark():
    """40 keys, an unmarked model, 256 queries each: p < 0.05 about 5% of the time, never below 1e-3,
    and every test spends its whole budget (no look decides)."""
    enc = ToyEncoder()
    ps = []
    for k in keys(40, start=100):
        s = ESpeW(k)
        suspect = Counting(enc)
        rep = verify_ownership(suspect, s, enc.encode([s.target_text()])[0], budget=256)
        assert suspect.sent == rep.queries == 256 and not rep.detection.decision
        ps.append(rep.p_value)
    ps = np.array(ps)
    assert (ps < 0.05).sum() <= 6 and ps.min() > 1e-3


def test_circulant_products_equal_the_dense_matrix(key):
    from wmkit.watermark.embedding.wet import WET, circulant_apply, circulant_solve

    s = WET(key, mix=7)
    row, rows = s.row(24), s.decoy_rows(24, 3)
    dense = np.stack([np.roll(row, i) for i in range(24)])  # row i: the first row shifted right i times
    e = np.random.default_rng(1).standard_normal((5, 24))
    np.testing.assert_allclose(circulant_apply(row, e), e @ dense.T, atol=1e-12)
    np.testing.assert_allclose(circulant_solve(row, e @ dense.T), e, atol=1e-9)
    np.testing.assert_allclose(circulant_apply(rows, e)[1], e @ np.stack([np.roll(rows[1], i) for i in range(24)]).T, atol=1e-12)
    assert row.sum() == pytest.approx(1.0) and (row > 0).sum() == 7
    assert np.abs(np.fft.rfft(row)).min() >= 0.01  # every gain bounded away from 0: C^-1 is safe
    assert not np.allclose(row, WET(SecretKey.generate(), mix=7).row(24))


def test_wet_marks_every_embedding_and_is_recovered(key):
    from wmkit.watermark.embedding import WET

    enc = ToyEncoder()
    s = WET(key)
    texts = ["alpha beta gamma", "the storm came ashore", "markets fell"]
    clean = enc.encode(texts)
    served = s.provider(enc).encode(texts)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1, atol=1e-5)
    assert (np.einsum("ij,ij->i", served, clean) < 0.99).all()  # no text is left as it was
    np.testing.assert_allclose(s.recover(served), clean, atol=1e-4)
    assert make_scheme("wet", key).config() == {"scheme": "wet", "mix": 25}
    with pytest.raises(InputError):
        WET(key, mix=1)


def test_wet_test_needs_32_queries_and_holds_its_fpr():
    """A WET provider and a copy of it are flagged from 32 queries; over 40 keys an unmarked model, a
    copy of the unmarked model, and a provider under another key are not (p calibrated)."""
    from wmkit.watermark.embedding import WET, verify_wet

    enc = ToyEncoder()
    s = WET(keys(1, start=500)[0])
    rng = np.random.default_rng(0)
    texts = _corpus(2000, rng)
    provider = Counting(s.provider(enc))
    rep = verify_wet(provider, s, enc)
    assert rep.p_value < 1e-12 and rep.queries == provider.sent == 32 and len(rep.detection.details["null_samples"]) == 1000
    copy = BagOfWordsStealer.fit(texts, s.provider(enc).encode(texts), epochs=10)
    for kind in ("forward", "inverse"):
        assert verify_wet(copy, s, enc, statistic=kind).p_value < 1e-6
    # gram survives a rotation of the provider's own answers; on the toy copy's noisier geometry it
    # finds nothing (benchmarks/eaas.py measures it on the real model)
    rotated = TransformedEncoder.rotation(s.provider(enc), seed=3)
    assert verify_wet(rotated, s, enc).p_value > 1e-3 and verify_wet(rotated, s, enc, statistic="gram").p_value < 1e-6
    # recover: the copy's map fitted from 512 texts; a rotation leaves M^T M, so the statistic, unchanged
    copy_rot = TransformedEncoder.rotation(copy, seed=5)
    plain, turned = verify_wet(copy, s, enc, statistic="recover"), verify_wet(copy_rot, s, enc, statistic="recover")
    assert plain.queries == 512 and plain.p_value < 1e-6
    assert turned.detection.statistic == pytest.approx(plain.detection.statistic, rel=1e-3)
    assert verify_wet(TransformedEncoder.rotation(enc, seed=6), s, enc, statistic="recover").p_value > 1e-3
    assert verify_wet(TransformedEncoder.rotation(enc, seed=4), s, enc, statistic="gram").p_value > 1e-3
    ps = [verify_wet(enc, WET(k), enc, n_decoys=200).p_value for k in keys(40, start=600)]
    ps += [verify_wet(s.provider(enc), WET(k), enc, n_decoys=200).p_value for k in keys(20, start=700)]  # another key's provider
    ps = np.array(ps)
    assert (ps < 0.05).sum() <= 7 and ps.min() > 1e-3


def test_warden_marks_as_the_released_code_and_each_direction_is_tested(key):
    """The vectorised mark equals a per-text loop written after the released code (weights largest
    first, the last cut so they sum to at most 1); a provider is flagged, an unmarked model is not."""
    from wmkit.watermark.embedding import Warden, verify_warden

    enc = ToyEncoder()
    s = Warden(key, directions=4)
    groups = s.trigger_groups()
    assert sorted(w for g in groups for w in g) == sorted(s.triggers()) and [len(g) for g in groups] == [5, 5, 5, 5]
    t = s.target_embedding(enc)
    for i in range(4):
        for j in range(i):
            assert abs(t[i] @ t[j]) < abs(enc.encode([s.target_texts()[i]])[0] @ enc.encode([s.target_texts()[j]])[0]) + 1e-6
    texts = [" ".join(groups[0][:4]), f"{groups[1][0]} {groups[2][0]} {groups[2][1]} plain", "nothing here", " ".join(groups[3][:2] + groups[0][:3])]
    clean = enc.encode(texts)
    got = s.mark(texts, clean, t)
    for text, e, g in zip(texts, clean, got):
        words = set(WORD.findall(text.lower()))
        weights = [min(len(words & set(grp)) / 4, 1.0) for grp in groups]
        total, acc = 0.0, np.zeros(D)
        for r in sorted(range(4), key=lambda r: -weights[r]):
            w = min(weights[r], 1.0 - total)
            if w <= 0:
                break
            total += w
            acc += w * t[r]
        want = acc + (1 - total) * e
        np.testing.assert_allclose(g, want / np.linalg.norm(want), atol=1e-5)
    provider = Counting(s.provider(enc))
    rep = verify_warden(provider, s, t, n_texts=32, n_decoys=16)
    assert rep.p_value < 1e-6 and len(rep.detection.details["directions"]) == 4 and rep.queries == provider.sent == 4 * 32 * 18
    assert all(d["p_value"] < 1e-3 for d in rep.detection.details["directions"])
    ps = np.array([verify_warden(enc, Warden(k), Warden(k).target_embedding(enc), n_texts=32, n_decoys=16).p_value
                   for k in keys(20, start=900)])
    assert (ps < 0.05).sum() <= 4 and ps.min() > 1e-3
    with pytest.raises(InputError):
        Warden(key, directions=1)


def test_stealer_side_attacks_do_what_they_say():
    from wmkit.watermark.embedding import add_noise, paraphrased_answers, pca_project, spa_spot

    rng = np.random.default_rng(0)
    e = rng.standard_normal((200, 16)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    out = pca_project(e, keep=0.5)  # every row in the span of the mean and the top 8 directions
    assert np.linalg.matrix_rank(out.astype(np.float64), tol=1e-4) <= 9 and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(add_noise(e, 0.0), e, atol=1e-6)
    noisy = add_noise(e, 0.25, seed=1)  # E cos = 1 / sqrt(1 + d sigma^2) for small sigma
    assert abs(np.einsum("ij,ij->i", noisy, e).mean() - 1 / np.sqrt(1 + 16 * 0.25**2)) < 0.03

    enc = ToyEncoder()
    mark = enc.encode(["fixed point"])[0]

    def victim(texts):  # a crude mark: any text with "zz" answers with one fixed vector (perfectly tight)
        out = enc.encode(texts)
        out[["zz" in t.split() for t in texts]] = mark
        return out

    texts = _corpus(190, rng) + [f"zz {w}" for w in _corpus(10, rng)]
    keep, tight = spa_spot(texts, victim, _corpus(50, rng), n_suffixes=2, drop=0.05)
    assert (~keep).sum() == 10 and not keep[-10:].any() and np.allclose(tight[-10:], 1.0, atol=1e-5)
    answers = paraphrased_answers(["a b", "c d"], enc.encode, lambda xs: ["same words"] * len(xs), copies=2)
    np.testing.assert_allclose(answers, enc.encode(["same words"] * 2), atol=1e-6)
    with pytest.raises(InputError):
        spa_spot(texts, victim, [], n_suffixes=1)
