"""Radioactivity: the open and closed tests against models that did and did not learn from marked text.

The language model here is a stated distribution (a Zipf unigram law over a small vocabulary) marked
by each scheme's real processor, so hundreds of keys run in seconds; the suspects are n-gram
models, trained (counted) on marked or unmarked samples, and a clean model that copies from its
context (what an LM's induction heads do), the case a naive test gets wrong.
"""

import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from wmkit.errors import InputError
from wmkit.forensics.radioactivity import closed_pairs, open_pairs, pair_scorer, radioactivity_test
from wmkit.keys import SecretKey
from wmkit.stats import ks_2samp
from wmkit.watermark.text import make_scheme

VOCAB = 600
_ZIPF = torch.log(1.0 / torch.arange(1, VOCAB + 1, dtype=torch.float32) ** 1.1)
LOGP = _ZIPF - torch.logsumexp(_ZIPF, 0)  # the law of the first token
# the next-token law after token c: the Zipf law over a permutation of the vocabulary of its own
BIGRAM = torch.stack([LOGP[torch.randperm(VOCAB, generator=torch.Generator().manual_seed(c))] for c in range(VOCAB)])
BASE = BIGRAM.argmax(1)  # a clean model's greedy choice after each token
SCHEMES = {"kgw": {}, "kgw-selfhash": {"context_width": 4, "seeding": "selfhash"}, "unigram": {}, "gumbel": {}, "synthid": {}}


def _key(i):
    return SecretKey((1000 + i).to_bytes(32, "little"))


def _scheme(name, i):
    return make_scheme(name.split("-")[0], _key(i), **SCHEMES[name])


def sample(scheme, n, length, seed, bigram=True):
    """``n`` texts of ``length`` tokens from the bigram law (or the Zipf law alone: many repeated
    n-grams), marked by ``scheme``'s processor (None: unmarked)."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.multinomial(LOGP.exp().expand(n, -1), 4, replacement=True, generator=g)
    proc = scheme.processor() if scheme is not None else None
    ids = prompt
    for _ in range(length):
        scores = BIGRAM[ids[:, -1]].clone() if bigram else LOGP.expand(n, -1).clone()
        if proc is not None:
            scores = proc(ids, scores)
        ids = torch.cat([ids, torch.multinomial(torch.softmax(scores, -1), 1, generator=g)], 1)
    return list(ids[:, 4:])


class NgramSuspect:
    """The most frequent next token after the longest context (up to ``order - 1`` tokens) seen at
    least twice in training (or, for ``order - 1 >= 2``, once: memorised), else the base model's
    choice: a model 'fine-tuned' on ``texts``."""

    def __init__(self, texts, order):
        self.order = order
        self.counts = [defaultdict(Counter) for _ in range(order)]
        for t in texts:
            t = t.tolist()
            for i in range(len(t)):
                for k in range(order):
                    if i - k >= 0:
                        self.counts[k][tuple(t[i - k:i])][t[i]] += 1

    def predict(self, ids):
        ids, out = ids.tolist(), []
        for i in range(len(ids)):
            guess = int(BASE[ids[i]])
            for k in range(self.order - 1, 0, -1):
                c = self.counts[k].get(tuple(ids[i - k + 1:i + 1])) if i - k + 1 >= 0 else None
                if c and (k >= 2 or sum(c.values()) >= 2):
                    guess = c.most_common(1)[0][0]
                    break
            out.append(guess)
        return torch.tensor(out)


def copy_predict(ids):
    """A clean model that copies: after a token seen before, the token that followed it last time."""
    ids, last, out = ids.tolist(), {}, []
    for i, t in enumerate(ids):
        if i:
            last[ids[i - 1]] = t
        out.append(last.get(t, int(BASE[t])))
    return torch.tensor(out)


def open_p(scheme, texts, predict, naive=False, human=()):
    """The open test's p-value: ``texts`` (marked by ``scheme``) and ``human`` (never marked) read by ``predict``."""
    scorer = pair_scorer(scheme)
    preds = [predict(t) for t in texts]
    if not naive:
        every = list(texts) + list(human)
        pairs = open_pairs(scorer, every, preds + [predict(t) for t in human], marked=[True] * len(texts) + [False] * len(human))
        return radioactivity_test(pairs, 0.01, "open").p_value
    pairs = open_pairs(scorer, texts, preds, marked=[False] * len(texts))  # the tape alone: every pair, each coin once
    return radioactivity_test(pairs, 0.01, "open").p_value


@pytest.mark.parametrize("name", ["kgw", "unigram"])
def test_the_open_test_holds_its_level_for_a_clean_model_that_copies_from_its_context(name):
    """120 keys, each marking 4 texts of 64 tokens (the Zipf law alone) that a clean copying model reads: our rule (no coin
    our texts chose before) keeps P(p <= 0.05) within the binomial noise of 0.05; the tape alone
    (each coin once) flags the clean model far more often -- copied marked n-grams look learned."""
    ours, naive = [], []
    for i in range(120):
        s = _scheme(name, i)
        texts = sample(s, 4, 64, seed=i, bigram=False)
        ours.append(open_p(s, texts, copy_predict))
        naive.append(open_p(s, texts, copy_predict, naive=True))
    ours, naive = np.array(ours), np.array(naive)
    assert np.mean(ours <= 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 120), np.mean(ours <= 0.05)
    assert np.mean(naive <= 0.05) > 0.3, np.mean(naive <= 0.05)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_a_model_trained_on_marked_text_is_radioactive_and_its_controls_are_not(name):
    """An n-gram model trained only on 160 marked texts reads them back: p <= 1e-6 for every scheme
    (unigram: reading unmarked text, as its one list makes every marked coin a chosen one). Where the
    window is 4 tokens the model memorises what followed each window, and 20% marked data is enough.
    Controls -- trained on unmarked samples of the same law, reading marked text of 20 other keys --
    give p-values a KS test cannot tell from uniform."""
    s = _scheme(name, 0)
    order = max(pair_scorer(s).width, 1) + 1
    unmarked, human = sample(None, 192, 32, seed=1), sample(None, 60, 32, seed=7)
    marked = sample(s, 160, 32, seed=2)
    read = ([], human) if name == "unigram" else (marked, ())
    assert open_p(s, read[0], NgramSuspect(marked, order).predict, human=read[1]) <= 1e-6
    if order == 5:
        assert open_p(s, marked[:48], NgramSuspect(marked[:48] + unmarked, order).predict) <= 1e-6
    control, ps = NgramSuspect(unmarked, order), []
    for k in range(20):
        other = _scheme(name, 10 + k)
        texts = sample(other, 20, 32, seed=3 + k)
        ps.append(open_p(other, [], control.predict, human=human) if name == "unigram" else open_p(other, texts, control.predict))
    assert ks_2samp(ps, np.linspace(0.025, 0.975, 20))[1] > 0.01, sorted(ps)


def test_the_closed_test_scores_what_the_suspect_writes_after_the_windows_our_texts_hold():
    """Closed setting, kgw h=1: an n-gram model trained on 20% marked text writes 60 texts of 48
    tokens by its own sampling; its pairs after windows our texts hold give p <= 1e-3, the control's
    do not."""
    from wmkit.forensics.radioactivity import window_filter

    s = _scheme("kgw", 0)
    scorer = pair_scorer(s)
    marked, unmarked = sample(s, 400, 48, seed=2), sample(None, 1600, 48, seed=1)
    allowed = window_filter(marked, scorer.width)

    def write(model, seed):
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(60):
            ids = [int(torch.multinomial(LOGP.exp(), 1, generator=g))]
            for _ in range(48):
                c = model.counts[1].get((ids[-1],))
                if c and torch.rand(1, generator=g) < 0.9:  # the learned next-token law (sampled), else the base law
                    toks, n = zip(*c.items())
                    ids.append(toks[int(torch.multinomial(torch.tensor(n, dtype=torch.float), 1, generator=g))])
                else:
                    ids.append(int(torch.multinomial(BIGRAM[ids[-1]].exp(), 1, generator=g)))
            out.append(torch.tensor(ids))
        return out

    trained = NgramSuspect(marked + unmarked, order=2)
    clean = NgramSuspect(unmarked + sample(None, 400, 48, seed=9), order=2)
    det = radioactivity_test(closed_pairs(scorer, write(trained, 5), allowed), 1e-3, "closed+filter")
    ctl = radioactivity_test(closed_pairs(scorer, write(clean, 5), allowed), 1e-3, "closed+filter")
    assert det.p_value <= 1e-3 and ctl.p_value > 1e-3, (det.p_value, ctl.p_value)
    assert det.details["setting"] == "closed+filter" and det.n_scored == det.details["scored"] > 100


def test_pairs_counts_and_refusals():
    """Each coin counts once; a pair whose coin the text chose earlier is not scored; too few pairs and
    a scheme the test does not cover are one-line errors."""
    s = _scheme("kgw", 0)
    scorer = pair_scorer(s)
    text = torch.tensor([5, 6, 5, 6, 5, 7])
    pred = torch.tensor([6, 5, 6, 9, 9, 9])  # after 5: 6 (chosen at position 1 before the test at 3), ...
    pairs = open_pairs(scorer, [text], [pred])
    # positions 1..5 with windows (5),(6),(5),(6),(5) and predictions 6,5,6,9,9
    # 1: (5,6) fresh -> scored; 2: (6,5) fresh -> scored; 3: (5,6) chosen at 1 -> not; 4: (6,9) scored; 5: (5,9) scored
    assert pairs.tokens == [6, 5, 9, 9] and pairs.not_fresh == 1
    assert pairs.windows == [[5], [6], [6], [5]]
    only = closed_pairs(scorer, [text], allowed={(6,)})  # the filter: only after (6,): (6,5) twice, one coin
    assert only.tokens == [5] and only.filtered == 3 and only.candidates == 5
    with pytest.raises(InputError, match="at least 10"):
        radioactivity_test(pairs, 0.01, "open", min_scored=10)
    with pytest.raises(InputError, match="the pair tests cover"):
        pair_scorer(make_scheme("exp-edit", _key(0)))


def test_wm_radioactivity_open_setting_on_a_tiny_model_and_bad_suspects(tmp_path):
    """The command end to end on a random 1-layer Llama with the default tokenizer (the open setting
    runs; a clean random model is not called radioactive), and a suspect URL that is unreachable or
    answers in the wrong shape is one line and exit 2."""
    from helpers import tiny_llama, wm_cli
    from wmkit.keys import write_key_file
    from wmkit.models import load_tokenizer

    tok = load_tokenizer()
    model_dir = tmp_path / "suspect"
    tiny_llama(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    write_key_file(tmp_path / "k.key", _key(0))
    rows = [{"prompt": "p", "completion": " ".join(["the cat sat on the mat and looked at the dog"] * 3 + [f"word{i}" for i in range(40)])}]
    (tmp_path / "ours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = wm_cli("evidence", "radioactivity", "--suspect", str(model_dir), "-k", "k.key", "--texts", "ours.jsonl", "--human", "20",
               "--min-scored", "10", "--json", "-o", "ev", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["setting"] == "open" and row["scored"] >= 10 and 0 < row["p_value"] <= 1 and row["verdict"] == "not shown"
    assert row["human_texts"] == 20 and row["texts"] == 1
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["family"] == "radioactivity" and report["results"][0]["p_value"] == row["p_value"]
    assert report["results"][0]["distinct_coins"] and "NEW_FOLDER" in report["command"]
    assert "Null distribution" in (tmp_path / "ev" / "report.html").read_text()
    r = wm_cli("evidence", "check", "ev/report.json", "-k", "k.key", cwd=tmp_path)  # a third party recomputes it with the key
    assert r.returncode == 0, r.stderr
    write_key_file(tmp_path / "other.key", _key(1))
    r = wm_cli("evidence", "check", "ev/report.json", "-k", "other.key", cwd=tmp_path)
    assert r.returncode == 1 and "commitment" in r.stderr
    for url, why in (("http://127.0.0.1:9", "request failed"),):
        r = wm_cli("radioactivity", "--suspect", url, "-k", "k.key", "--max-generated", "10", "--json", cwd=tmp_path)
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    r = wm_cli("radioactivity", "--suspect", str(model_dir), "-k", "k.key", cwd=tmp_path)
    assert r.returncode == 2 and "--texts" in r.stderr
