"""One table of sequences, one brute-force reading of each "first seen" rule, and every path that
applies a rule checked against it: the functions of :mod:`wmkit.dedup`, streaming in chunks, and
the scored positions of each detector that deduplicates (green-list lefthash and selfhash, the
Gumbel family, SynthID's history) and of the processors' generation-time rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmkit import dedup, prf
from wmkit.keys import SecretKey
from wmkit.watermark.text import SCHEMES
from wmkit.watermark.text.gumbel_family import repeated_context
from wmkit.watermark.text.stream import ngram_keys

KEY = SecretKey(bytes(range(32)))
V = 49152
TABLE = {
    "distinct": list(range(100, 140)),
    "period-3": [5, 6, 7] * 12,
    "near-period": [5, 6, 7, 5, 6, 7, 5, 6, 8, 9] * 6,
    "one-token": [42] * 30,
    "palindromes": [1, 2, 3, 2, 1, 2, 3, 2, 1, 4, 4, 4, 1, 2, 3] * 3,
    "random-small-vocab": np.random.default_rng(0).integers(0, 6, 80).tolist(),
    "random-wide": np.random.default_rng(1).integers(0, V, 60).tolist(),
    "late-repeat": list(range(200, 230)) + list(range(200, 210)),
}


def brute_first(keys: list) -> list[bool]:
    seen: set = set()
    out = []
    for k in keys:
        out.append(k not in seen)
        seen.add(k)
    return out


def brute_within(keys: list, history: int) -> list[bool]:
    return [all(keys[j] != k for j in range(max(0, i - history), i)) for i, k in enumerate(keys)]


def grams(ids: list[int], h: int) -> list[tuple]:
    return [tuple(ids[i - h : i + 1]) for i in range(h, len(ids))]


def contexts(ids: list[int], w: int, pad: int = -1) -> list[tuple]:
    padded = [pad] * w + ids
    return [tuple(padded[i : i + w]) for i in range(len(ids))]


@pytest.mark.parametrize("name", TABLE)
def test_the_functions_against_brute_force(name):
    ids = TABLE[name]
    t = torch.tensor(ids)
    for h in (0, 1, 2, 4):
        want = brute_first(grams(ids, h))
        got = dedup.first_ngram(t[None], torch.tensor([len(ids)]), h)[0, h:].tolist()
        assert got == want, (name, h)
        keys = torch.from_numpy(ngram_keys(np.array(ids), h, V).view(np.int64))
        assert dedup.first_seen(keys).tolist() == want
        assert dedup.first_row(torch.tensor(grams(ids, h)).reshape(-1, h + 1)).tolist() == want
        for chunk in (1, 7, 64):  # a stream in chunks gives what the whole gives
            seen, mask = dedup.SeenKeys(), []
            for lo in range(0, len(keys), chunk):
                mask += seen.first(keys[lo : lo + chunk].numpy().view(np.uint64)).tolist()
            assert mask == want, (name, h, chunk)
        for history in (1, 3, 10):
            assert dedup.new_within(keys, history).tolist() == brute_within(grams(ids, h), history)
        assert dedup.new_within(keys, None).tolist() == want


def test_first_seen_keeps_groups_apart():
    a, b = TABLE["period-3"], TABLE["near-period"]
    keys = torch.tensor(a + b)
    groups = torch.tensor([0] * len(a) + [1] * len(b))
    assert dedup.first_seen(keys, groups).tolist() == brute_first(a) + brute_first(b)


@pytest.mark.parametrize("name", TABLE)
def test_generation_rule_is_the_detection_rule(name):
    """What a processor leaves unmarked at step i (seen_recently) is what the detector skips at i."""
    ids = TABLE[name]
    for w, history in ((2, None), (3, 5)):
        ctx = contexts(ids, w)
        skipped = [bool(repeated_context(torch.tensor([ids[:i]]), torch.tensor([ctx[i]]), history)[0])
                   for i in range(len(ids))]
        want = brute_first(ctx) if history is None else brute_within(ctx, history)
        assert [not s for s in skipped] == want, (name, w, history)


def scored_count_brute(scheme, ids: list[int], eos: int) -> int:
    """How many positions the scheme's detector scores, read from its rule alone."""
    name = scheme.name
    if name in ("kgw", "unigram"):
        h, seeding = scheme.seeding_params()
        if seeding == "selfhash":
            coins = prf.repeat_keys(torch.tensor(ids), scheme.prf_key(), h, seeding).tolist()
        else:
            coins = grams(ids, h)
        return sum(brute_first(coins))
    if name == "synthid":  # the text ends at its first EOS (transformers' detector mask)
        ids = ids[: ids.index(eos)] if eos in ids else ids
        w = scheme.ngram_len - 1
        return sum(brute_within(contexts(ids, w)[w:], scheme.context_history_size))
    ctx = contexts(ids, scheme.context_width)
    keep = brute_first(ctx)
    if getattr(scheme, "skip_partial_context", False):
        keep = [k and i >= scheme.context_width for i, k in enumerate(keep)]
    return sum(keep)


DEDUPING = [("kgw", {}), ("kgw", {"context_width": 3}), ("kgw", {"context_width": 4, "seeding": "selfhash"}),
            ("unigram", {}), ("gumbel", {}), ("vllm-gumbel", {}), ("vllm-sbw", {}), ("synthid", {"context_history_size": 4})]


@pytest.mark.parametrize("name,params", DEDUPING, ids=[f"{n}-{p}" for n, p in DEDUPING])
def test_every_detectors_scored_positions_follow_the_table(tokenizer, name, params):
    scheme = SCHEMES[name](key=42 if name.startswith("vllm") else KEY, **params)
    extra = {"null": "gamma"} if name in ("kgw", "unigram") else {}
    det = scheme.detector(tokenizer, min_tokens=1, **extra)
    for table_name, ids in TABLE.items():
        want = scored_count_brute(scheme, ids, tokenizer.eos_token_id)
        if want == 0:
            continue
        assert det.detect(ids).n_scored == want, (name, params, table_name)
    # and the streamed path of the green-list detectors agrees with the whole text
    if name in ("kgw", "unigram"):
        text = tokenizer.decode(TABLE["near-period"] * 40 + TABLE["distinct"])
        whole = det.detect(text)
        streamed = det.detect_stream([text[i : i + 1000] for i in range(0, len(text), 1000)])
        assert streamed.n_scored == whole.n_scored
