"""SWEET, EWD and Invisible Entropy on tiny models: closed-form entropies, a second (per-prefix)
implementation of the gates, null calibration, the navigator and the tagger's training."""

import math

import numpy as np
import pytest
import torch

from helpers import V, green_ref
from wmkit.errors import InputError
from wmkit.keys import SecretKey
from wmkit.stats import binomial_pvalue
from wmkit.watermark.text import EWD, IE, KGW, SWEET
from wmkit.stats import weighted_z_detection as weighted_detection
from wmkit.watermark.text.entropy_aware import shannon_entropy, spike_entropy
from wmkit.watermark.text.ie import CausalTagger, navigate, train_tagger
from wmkit.watermark.text.ie.corpus import EntropyCorpus, split_files, stdlib_files
from wmkit.watermark.text.ie.tagger import TAUS, evaluate_tagger, load_tagger, tokenizer_fingerprint


def tiny_lm(seed=0, vocab=V):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


# --- entropies: closed forms ---------------------------------------------------------------

def test_shannon_and_spike_entropy_closed_forms():
    v, g, d = 1000, 0.25, 2.0
    z = (1 - g) * (math.exp(d) - 1) / (1 - g + math.exp(d) * g)
    uniform, onehot = torch.zeros(v), torch.full((v,), -1e9)
    onehot[3] = 0.0
    assert shannon_entropy(uniform).item() == pytest.approx(math.log(v), rel=1e-5)
    assert shannon_entropy(onehot).item() == pytest.approx(0.0, abs=1e-5)
    assert spike_entropy(uniform, g, d).item() == pytest.approx(1 / (1 + z / v), rel=1e-5)
    assert spike_entropy(onehot, g, d).item() == pytest.approx(1 / (1 + z), rel=1e-5)
    two = torch.full((v,), -1e9)
    two[:2] = 0.0  # a fair coin: ln 2 nats
    assert shannon_entropy(two).item() == pytest.approx(math.log(2), rel=1e-5)


def test_weighted_z_matches_formula_and_reduces_to_binomial_z():
    g = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    w = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.4, 0.6])
    det = weighted_detection("ewd", g, w, 0.25, 1e-3)
    num = float((w * g).sum() - 0.25 * w.sum())
    assert det.statistic == pytest.approx(num / math.sqrt(0.25 * 0.75 * float((w * w).sum())))
    ones = weighted_detection("ewd", g, torch.ones(8), 0.25, 1e-3)
    assert ones.statistic == pytest.approx((4 - 2) / math.sqrt(8 * 0.25 * 0.75))


# --- processors: gated rows only -----------------------------------------------------------

def test_gated_processor_biases_exactly_the_gated_rows(key):
    kgw = KGW(key, gamma=0.25, delta=2.0)
    ids = torch.randint(0, V, (4, 6))
    scores = torch.randn(4, V)
    gate = torch.tensor([True, False, True, False])
    out = kgw.gated_processor(None, lambda i, s: gate)(ids, scores.clone())
    full = kgw.processor()(ids, scores.clone())
    assert torch.equal(out[gate], full[gate]) and torch.equal(out[~gate], scores[~gate])


def test_sweet_processor_gates_on_the_entropy_of_the_logits(key):
    scheme = SWEET(key, entropy_threshold=0.9)
    ids = torch.randint(0, V, (2, 5))
    scores = torch.zeros(2, V)
    scores[0, 7] = 50.0  # row 0: one-hot (entropy ~0): left alone; row 1: uniform: biased
    out = scheme.processor()(ids, scores.clone())
    assert torch.equal(out[0], scores[0])
    plain = super(SWEET, scheme).processor()  # KGW's processor under SWEET's subkey
    assert torch.equal(out[1], plain(ids[1:], scores[1:].clone())[0]) and not torch.equal(out[1], scores[1])


# --- SWEET / EWD detection against a per-prefix second implementation ----------------------

@pytest.fixture(scope="module")
def lm_and_text(tokenizer):
    lm = tiny_lm(0)
    key = SecretKey.from_hex("11" * 32)
    scheme = SWEET(key, delta=4.0, entropy_threshold=2.0)
    prompt = torch.tensor(tokenizer("def add(a, b):\n    ", add_special_tokens=False)["input_ids"])
    torch.manual_seed(1)
    out = lm.generate(prompt.unsqueeze(0), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      logits_processor=[scheme.processor(tokenizer)], do_sample=True, top_k=0, max_new_tokens=60,
                      min_new_tokens=60, pad_token_id=0)
    return lm, scheme, prompt, out[0, len(prompt):]


def _per_prefix_entropy(lm, ids):
    with torch.no_grad():
        return [float(shannon_entropy(lm(ids[:t].unsqueeze(0)).logits[0, -1])) for t in range(1, len(ids) + 1)]


def test_sweet_detector_matches_a_per_prefix_reimplementation(lm_and_text, tokenizer):
    lm, scheme, prompt, text = lm_and_text
    det = scheme.detector(tokenizer, model=lm, ignore_repeated_ngrams=False, min_tokens=1).detect(text, prompt=prompt)
    ids = torch.cat([prompt, text])
    ent = _per_prefix_entropy(lm, ids)  # ent[t - 1]: entropy of token t's step
    n = green = 0
    for t in range(len(prompt), len(ids)):
        if ent[t - 1] > scheme.entropy_threshold:
            n += 1
            green += green_ref(scheme, ids[:t].tolist(), int(ids[t]))
    assert (det.n_scored, det.details["green"]) == (n, green)
    assert det.p_value == pytest.approx(binomial_pvalue(green, n, scheme.gamma))
    assert n > 10 and det.decision  # every high-entropy step was biased by delta 4


def test_sweet_and_ewd_refuse_to_detect_without_the_model(key, tokenizer):
    for scheme in (SWEET(key), EWD(key)):
        with pytest.raises(InputError, match="needs the generating model"):
            scheme.detector(tokenizer)


def test_ewd_weights_are_spike_entropies_above_the_floor(lm_and_text, tokenizer):
    lm, sweet, prompt, text = lm_and_text
    scheme = EWD(sweet.key, gamma=0.25, delta=2.0)
    det = scheme.detector(tokenizer, model=lm, ignore_repeated_ngrams=False, min_tokens=1).detect(text, prompt=prompt)
    ids = torch.cat([prompt, text])
    z = 0.75 * (math.exp(2) - 1) / (0.75 + math.exp(2) * 0.25)
    with torch.no_grad():
        logits = lm(ids.unsqueeze(0)).logits[0]
    w, g = [], []
    for t in range(len(prompt), len(ids)):
        p = torch.softmax(logits[t - 1].double(), -1)
        w.append(float((p / (1 + z * p)).sum()) - 1 / (1 + z))
        g.append(green_ref(scheme, ids[:t].tolist(), int(ids[t])))
    w, g = np.array(w), np.array(g, dtype=float)
    want = (w @ g - 0.25 * w.sum()) / math.sqrt(0.25 * 0.75 * (w @ w))
    assert det.statistic == pytest.approx(want, rel=1e-4)


def test_ewd_null_z_is_standard_normal(tokenizer):
    lm = tiny_lm(3)
    scheme = EWD(SecretKey.from_hex("22" * 32))
    rng = np.random.default_rng(0)
    texts = [torch.tensor(rng.integers(0, V, 80)) for _ in range(200)]
    dets = scheme.detector(tokenizer, model=lm, min_tokens=1).detect_many(texts)
    z = np.array([d.statistic for d in dets])
    assert abs(z.mean()) < 0.25 and 0.75 < z.std() < 1.25


# --- navigator -----------------------------------------------------------------------------

def test_navigator_rule():
    taus = [0.3, 0.6, 0.9, 1.2, 1.5]
    # green fraction rises at every step up: the first step from the top (1.2 -> 1.5) qualifies
    assert navigate(taus, [50, 40, 30, 20, 12], [100, 70, 45, 25, 14]) == (4, taus[1:])
    # fractions fall as tau rises except between 0.6 and 0.9: select 0.9
    assert navigate(taus, [40, 30, 25, 10, 5], [100, 80, 50, 30, 20])[0] == 2
    # no qualifying step: keep the second-highest tau (the paper's default)
    assert navigate(taus, [50, 40, 25, 12, 5], [100, 85, 60, 32, 16])[0] == 3


def test_ie_p_value_is_bonferroni_corrected_and_calibrated(key, tokenizer, tmp_path):
    tagger = CausalTagger({"vocab_size": len(tokenizer), "tokenizer": tokenizer_fingerprint(tokenizer)})
    torch.nn.init.normal_(tagger.head[-1].bias, std=0.5)
    path = tagger.save(tmp_path / "t.safetensors")
    scheme = IE(key, tagger=str(path))
    rng = np.random.default_rng(0)
    dets = scheme.detector(tokenizer, min_tokens=1).detect_many([torch.tensor(rng.integers(0, V, 120)) for _ in range(300)])
    p = np.array([d.p_value for d in dets])
    for d in dets:
        assert d.p_value == pytest.approx(min(1.0, d.details["p_uncorrected"] * len(d.details["candidates"])))
    assert (p <= 0.05).mean() <= 0.05 + 0.03  # valid (conservative) under the null


# --- the causal tagger ---------------------------------------------------------------------

def test_causal_tagger_is_causal_with_a_bounded_receptive_field():
    t = CausalTagger({"vocab_size": 500}).eval()
    ids = torch.randint(0, 500, (3, 80))
    full = t.predict(ids)
    assert torch.allclose(t.predict_last(ids), full[:, -1], atol=1e-5)
    changed = ids.clone()
    changed[:, : 80 - t.receptive_field] = 7  # outside the window of the last position
    changed[:, -1] = ids[:, -1]
    assert torch.allclose(t.predict(changed)[:, -1], full[:, -1], atol=1e-5)
    changed[:, 50] = (ids[:, 50] + 1) % 500  # a future token never changes an earlier prediction
    assert torch.allclose(t.predict(changed)[:, :50], t.predict(torch.cat([changed[:, :50]], 1))[:, :50], atol=1e-5)


def test_left_padded_rows_are_tagged_and_gated_as_if_alone(tokenizer, key, tmp_path):
    """A batch's left padding is not read: a padded short row gets the tagger's (and so the IE gate's)
    answer for that row alone, where the tagger's zero padding stands before the text."""
    torch.manual_seed(0)
    t = CausalTagger({"vocab_size": len(tokenizer), "tokenizer": tokenizer_fingerprint(tokenizer)}).eval()
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        t.embed.weight[pad] *= 20  # a pad id the tagger reacts to strongly, as a trained one may
    short, long = torch.randint(3, V, (12,)), torch.randint(3, V, (60,))
    batch = torch.stack([torch.cat([torch.full((48,), pad), short]), long])
    with torch.no_grad():
        alone = t.predict_last(short.unsqueeze(0))[0]
        padded = t.predict_last(batch, torch.tensor([48, 0]))
        assert torch.allclose(padded[0], alone, atol=1e-5) and torch.allclose(padded[1], t.predict_last(long.unsqueeze(0))[0], atol=1e-5)
        naive = t.predict_last(batch)[0]  # what reading the pads gives
        # move the 0.9 threshold's bias halfway between the two answers: they now gate oppositely
        k = TAUS.index(0.9)
        t.head[-1].bias[k] -= (alone[k] + naive[k]) / 2
        assert abs(alone[k] - naive[k]) > 0.1
    scheme = IE(key, delta=3.0, tau=0.9, tagger=str(t.save(tmp_path / "t.safetensors")))
    proc = scheme.processor(tokenizer)
    scores = torch.randn(2, len(tokenizer))
    rows = [proc(batch[1:, :].clone(), scores[1:].clone())[0], proc(short.unsqueeze(0), scores[:1].clone())[0]]
    both = proc(batch.clone(), scores.clone())
    assert torch.equal(both[0], rows[1]) and torch.equal(both[1], rows[0])


class _Tok:
    """A tokenizer stand-in with a vocabulary (the tagger fingerprints it)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def get_vocab(self):
        return {f"t{i}": i for i in range(self.n)}


def test_tagger_training_learns_a_context_rule_and_beats_the_constant_predictor():
    # the entropy after a token depends on the token two back: a rule only a causal context model can learn
    rng = np.random.default_rng(0)
    vocab = 200

    def corpus(n):
        ids = [torch.tensor(rng.integers(0, vocab, 96)) for _ in range(n)]
        ent = [torch.tensor(np.where(np.roll(x.numpy(), 1) % 3 == 0, 2.0, 0.1), dtype=torch.float32) for x in ids]
        for e in ent:
            e[0] = 0.1
        return EntropyCorpus(ids, ent, ["f"] * n)

    train, held = corpus(200), corpus(40)
    tagger = train_tagger("causal", train, _Tok(vocab), epochs=15)
    m = evaluate_tagger(tagger, held.ids, held.entropy)["taus"]["0.9"]
    assert m["accuracy"] > m["constant_accuracy"] + 0.2 and m["auroc"] > 0.95


def test_tagger_file_errors(tmp_path, tokenizer, key):
    with pytest.raises(InputError, match="does not exist"):
        load_tagger(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tagger")
    with pytest.raises(InputError, match="not a wmkit entropy tagger"):
        load_tagger(bad)
    other = CausalTagger({"vocab_size": len(tokenizer), "tokenizer": "0" * 16, "tokenizer_name": "other"})
    p = other.save(tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="another tokenizer"):
        IE(key, tagger=str(p)).detector(tokenizer)
    with pytest.raises(InputError, match="tau must be one of"):
        IE(key, tau=0.5)


def test_stdlib_split_is_disjoint_and_stable():
    files = stdlib_files()
    train, held = split_files(files)
    assert not set(train) & set(held) and len(held) == len(files) // 5
    assert all(f.suffix == ".py" for f in files) and "this.py" not in {f.name for f in files}
    assert TAUS == (0.3, 0.6, 0.9, 1.2, 1.5)


def test_ie_generation_is_detected_and_gates_match_per_prefix_tagger_calls(lm_and_text, tokenizer, tmp_path):
    lm, sweet, prompt, _ = lm_and_text
    torch.manual_seed(0)
    tagger = CausalTagger({"vocab_size": len(tokenizer), "tokenizer": tokenizer_fingerprint(tokenizer)}).eval()
    with torch.no_grad():  # centre the random tagger so that about half the steps are "high-entropy"
        tagger.head[-1].bias -= tagger.predict(torch.randint(0, V, (4, 64))).flatten(0, 1).median(0).values
    path = tagger.save(tmp_path / "t.safetensors")
    tagger = load_tagger(path)  # the float16 round trip the scheme sees
    scheme = IE(sweet.key, delta=4.0, tau=0.9, navigate=False, tagger=str(path))
    torch.manual_seed(2)
    out = lm.generate(prompt.unsqueeze(0), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      logits_processor=[scheme.processor(tokenizer)], do_sample=True, top_k=0, max_new_tokens=80,
                      min_new_tokens=80, pad_token_id=0)
    text = out[0, len(prompt):]
    det = scheme.detector(tokenizer, ignore_repeated_ngrams=False, min_tokens=1).detect(text, prompt=prompt)
    ids = torch.cat([prompt, text])
    k = TAUS.index(0.9)
    n = green = 0
    with torch.no_grad():
        for t in range(len(prompt), len(ids)):
            if tagger.predict_last(ids[:t].unsqueeze(0))[0, k] > 0:
                n += 1
                green += green_ref(scheme, ids[:t].tolist(), int(ids[t]))
    assert (det.n_scored, det.details["green"]) == (n, green)
    assert 5 < n < len(text) and det.decision and det.details["candidates"] == [0.9]


def test_paper_tagger_reencodes_decoded_windows_with_minilm(tokenizer):
    from wmkit.watermark.text.ie import PaperTagger

    torch.manual_seed(0)
    t = PaperTagger({"window": 8}, tokenizer).eval()
    ids = torch.tensor([tokenizer("def add(a, b):\n    return a + b\n", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        full = t.predict(ids)
        assert full.shape == (1, ids.shape[1], len(TAUS))
        assert torch.allclose(t.predict_last(ids), full[:, -1], atol=1e-4)  # the same window, encoded alone
        assert t.windows(ids)[-1] == ids[0, -8:].tolist()
        short = ids[:, :4]  # left-padded to the window and beyond: the pads are not decoded
        padded = torch.cat([torch.full((1, 6), tokenizer.pad_token_id), short], 1)
        assert torch.allclose(t.predict_last(padded, torch.tensor([6])), t.predict_last(short), atol=1e-5)
        assert not torch.allclose(t.predict_last(padded), t.predict_last(short), atol=1e-3)
        m = evaluate_tagger(t, [ids[0]], [torch.rand(ids.shape[1]) * 3], max_positions=10)
    assert m["positions"] == 10 and set(m["taus"]) == {str(x) for x in TAUS}
    assert t.n_parameters() > 22_000_000  # MiniLM counts: it runs at detection


def test_ie_batched_tagging_gives_each_texts_own_result(tokenizer, key):
    """detect_many runs the tagger over length-sorted, right-padded batches and scores a packed batch:
    every text's result equals its own detect(), with and without prompts, across batch boundaries."""
    import gzip
    from pathlib import Path

    with gzip.open(Path(__file__).parent.parent / "benchmarks" / "data" / "agnews_3000.tsv.gz", "rt", encoding="utf-8") as f:
        texts = [line.split("\t")[0] for _, line in zip(range(40), f)]
    texts[3] = texts[3] * 6  # one long text among short ones
    prompts = [None] * 20 + [t.split()[0] for t in texts[20:]]
    det = IE(key).detector(tokenizer)
    many = det.detect_many(texts, prompts)
    for t, p, m in zip(texts, prompts, many):
        try:
            one = det.detect(t, p)
        except InputError as e:
            assert isinstance(m, InputError) and str(m) == str(e)
            continue
        assert (m.p_value, m.n_scored, m.details["per_tau"]) == (one.p_value, one.n_scored, one.details["per_tau"])
    small = IE(key).detector(tokenizer)
    batched = small.scored_many([small.prepare(t) for t in texts[:10]], batch_tokens=200)  # many small batches
    assert all(torch.equal(b, small.scored(small.prepare(t))) for b, t in zip(batched, texts[:10]))
