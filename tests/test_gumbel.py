"""wmkit's Gumbel-max scheme on PRF v2: the spec's uniforms, distortion-freeness, the exact Gamma null."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

import prf_reference as ref
from helpers import VocabOnly
from wmkit.errors import InputError
from wmkit.watermark.text import Gumbel, make_scheme


def test_uniforms_follow_the_spec(key):
    s = Gumbel(key, context_width=3)
    k = s.prf_key()
    ctx = torch.tensor([[-1, -1, 7], [1, 2, 3]])
    toks = torch.tensor([0, 5, 49151, 262143])
    got = s.uniforms(ctx, toks)
    for r, c in enumerate(ctx.tolist()):
        st = ref.state([x & 0xFFFFFFFF for x in c], k, 0)
        want = [(ref.word(st, ref.TOK, t, k) + 0.5) / 2**32 for t in toks.tolist()]
        assert got[r].tolist() == want


def test_choice_is_distortion_free(key):
    """Over fresh contexts the keyed choice is a sample of softmax(logits): chi-square test."""
    s = Gumbel(key, context_width=2)
    logits = torch.log(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])).expand(4000, 5)
    ctx = torch.stack([torch.arange(4000), torch.arange(4000) * 7 + 1], 1)  # 4,000 distinct contexts
    counts = np.bincount(s.choose(logits, ctx).numpy(), minlength=5)
    assert sps.chisquare(counts, 4000 * np.array([0.4, 0.3, 0.15, 0.1, 0.05])).pvalue > 1e-3


def _run(scheme, steps=60, batch=2, vocab=49152, seed=0):
    g = torch.Generator().manual_seed(seed)
    proc, ids = scheme.processor(VocabOnly()), torch.randint(0, vocab, (batch, 4), generator=g)
    for _ in range(steps):
        out = proc(ids, torch.randn(batch, vocab, generator=g) * 3)
        ids = torch.cat([ids, torch.multinomial(out.softmax(-1), 1, generator=g)], 1)
    return ids[:, 4:]


def test_marked_detected_and_null_exact(key):
    s = Gumbel(key)
    det = s.detector(VocabOnly(), min_tokens=1)
    for row in _run(s):
        d = det.detect(row)
        assert d.decision and d.p_value < 1e-10 and d.method == "gumbel"
    p = np.array([det.detect(torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(i))).p_value
                  for i in range(300)])
    assert sps.kstest(p, "uniform").pvalue > 1e-3  # exact null: uniform p-values
    wrong = Gumbel(make_scheme("kgw", key).key.generate()).detector(VocabOnly())
    assert not wrong.detect(_run(s)[0]).decision


def test_repeated_context_sampled_normally_and_scored_once(key):
    s = Gumbel(key, context_width=1)
    proc = s.processor(VocabOnly())
    scores = torch.randn(1, 49152)
    assert torch.equal(proc(torch.tensor([[1, 2]]), scores), scores)  # completion (): padding context, not marked
    assert torch.isfinite(proc(torch.tensor([[1, 2, 9]]), torch.randn(1, 49152))).sum() == 1  # context (9,): marked
    assert torch.isfinite(proc(torch.tensor([[1, 2, 9, 5]]), torch.randn(1, 49152))).sum() == 1  # context (5,)
    assert torch.equal(proc(torch.tensor([[1, 2, 9, 5, 9]]), scores), scores)  # context (9,) seen before
    det = s.detector(VocabOnly(), min_tokens=1)
    assert det.detect([9, 9, 9, 9, 5]).n_scored == 1  # contexts (-1,) skipped; (9,) four times: scored once


def test_parameters_validated(key):
    for params, msg in (({"context_width": 0}, "context_width"), ({"deduplicate_contexts": "all"}, "deduplicate"),
                        ({"prf_version": 1}, "PRF spec v1")):
        with pytest.raises(InputError, match=msg):
            Gumbel(key, **params)
    with pytest.raises(InputError, match="key file"):
        Gumbel(42)
    assert math.isclose(Gumbel(key).detector(VocabOnly(), min_tokens=1).detect(list(range(20))).details["null_shape"], 16)  # first 4 not scored
