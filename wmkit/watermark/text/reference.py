"""One key's null green rate on natural text, from reference corpora that ship with wmkit.

Why a fixed key needs it: a green-list detector's p-value assumes each scored token is green with
probability ``gamma``. Averaged over keys that holds, but a deployment holds one key, and its
green list is fixed: the n-grams natural text scores most often (for Unigram, "the", ",", " of" --
each counted once per text, so present in nearly every text) keep their colour in every document.
The key's green rate on natural text is ``rate = sum_x pi(x) * green(x)``, where ``pi(x)`` is the
share of scored n-grams (context + token, first occurrences) that are ``x``; its spread over keys
is ``sqrt(gamma (1 - gamma) sum_x pi(x)^2)``, which for Unigram (``pi`` concentrated on frequent
tokens) is a few points of green fraction -- enough to turn a nominal 1% FPR into several percent
for an unlucky key (issue 14).

The fix, in the statistic: :meth:`ReferenceNull.rate` estimates ``rate`` for the key from reference
text of three genres that ship in ``wmkit/data/reference/`` -- news (AG News, the first 5,000
articles of ``benchmarks/data/agnews_10k.tsv.gz``), reviews (SST-2 phrases, the first 30,000 of
``sst2_train.tsv.gz``) and code (CPython 3.11's standard library, four files in five, the first
8 KB of each) -- cut into texts of the length of the text under test (buckets of 64 to 1,024
tokens: shorter texts score common tokens more often). The detector then tests against
``max(gamma, rate of each genre)``: a null rate never below the key-averaged test's, and
calibrated for a key whose list happens to hold frequent n-grams in any of the genres. Text of
another genre is protected only as far as its frequent n-grams are also frequent in one of these.

Common coins (context width ``h >= 1``). Text of a genre the references do not cover keeps
the problem: measured on held-out CPython code, most of an unlucky kgw h1 key's excess green comes
from the 100 bigrams code repeats most (indentation, ``self .``, ``) :``), and the key's rate on
the reference code need not show it. The detector therefore does not score the ``COMMON`` coins
that the references score most often (:meth:`ReferenceNull.common_coins`: n-grams for lefthash,
(anchor, token) pairs at any distance ``1..h`` for selfhash, ranked by their share of scored coins
summed over genres and length buckets). The list is fixed before any key is drawn, so a coin's
colour stays a fair coin for the p-value; what it removes is the few coins every document of a
genre shares, whose colours a fixed key freezes for all of them. Unigram (``h = 0``) keeps every
token: its coins are single tokens, and its common ones are most of what it scores (its rate
correction alone brings it within 2x of nominal).

The key-independent part (the reference n-grams and their weights per genre and length bucket,
and the token streams) is computed once per tokenizer and context width and cached under the
wmkit cache folder. For selfhash, whose coins are (anchor, token) pairs that the key chooses, the
rate is measured directly: the detector scores the reference texts with the key
(:meth:`ReferenceNull.scored_rates`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from importlib import resources
from typing import Any

import numpy as np
import torch

from ... import kernels
from ...files import write_file
from ...models import cache_dir
from .normalize import normalize_text
from .stream import ngram_keys

__all__ = ["BUCKETS", "GENRES", "ReferenceNull", "reference_texts"]

GENRES = ("news", "reviews", "code")
BUCKETS = (64, 128, 256, 512, 1024)
VERSION = 2
# Common coins never scored (h >= 1). A sweep for kgw h1 over 20 keys on 10,000 held-out code documents
# (100 / 300 / 1,000 / 3,000 coins): worst key at 1e-2 1.8 / 1.5 / 1.3 / 0.9% (2.6% with all), at 5 / 11 /
# 17 / 24% fewer tokens scored (news: 7 / 12 / 19 / 25%). 300 keeps the power cost near a tenth.
COMMON = 300


def reference_texts(genre: str) -> list[str]:
    """The shipped reference documents of ``genre`` (``data/reference/GENRE.jsonl.gz``: one JSON string a line)."""
    data = resources.files("wmkit").joinpath("data", "reference", f"{genre}.jsonl.gz").read_bytes()
    return [json.loads(ln) for ln in gzip.decompress(data).decode("utf-8").splitlines() if ln.strip()]


def _tokenizer_id(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def _weights(stream: np.ndarray, h: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, counts)``: how often each n-gram key is scored (first occurrence, full context) in
    the texts of ``length`` tokens that ``stream`` is cut into."""
    keys = [np.unique(ngram_keys(stream[d * length : (d + 1) * length], h, vocab)) for d in range(len(stream) // length)]
    allk = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
    return np.unique(allk, return_counts=True)


class ReferenceNull:
    """The reference n-grams of one tokenizer and context width ``h``, with their scoring weights
    per genre and length bucket; :meth:`rate` gives a key's null green rate at a text length."""

    def __init__(self, grams: np.ndarray, weights: np.ndarray, streams: list[np.ndarray]):
        self.grams = grams  # [M, h + 1] int64: distinct reference n-grams (context..., token)
        self.weights = weights  # [len(GENRES), len(BUCKETS), M] float32, each row sums to 1
        self.streams = streams  # per genre: the reference's token ids, one stream

    @classmethod
    def build(cls, tokenizer: Any, h: int) -> "ReferenceNull":
        """Tokenize the shipped references and count their n-grams (key-independent, ~10 s)."""
        vocab = len(tokenizer)
        per_genre: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []
        first: dict[int, np.ndarray] = {}  # key -> the n-gram's ids
        streams = []
        for genre in GENRES:
            texts = [normalize_text(t) for t in reference_texts(genre)]
            enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
            stream = np.concatenate([np.asarray(e, dtype=np.int64) for e in enc if e])
            streams.append(stream)
            keys_all = ngram_keys(stream, h, vocab)
            uniq, idx = np.unique(keys_all, return_index=True)
            for k, i in zip(uniq.tolist(), idx.tolist()):
                first.setdefault(k, stream[i : i + h + 1])
            per_genre.append({b: _weights(stream, h, b, vocab) for b in BUCKETS})
        all_keys = np.array(sorted(first), dtype=np.uint64)
        grams = np.stack([first[k] for k in all_keys.tolist()]) if len(all_keys) else np.zeros((0, h + 1), np.int64)
        weights = np.zeros((len(GENRES), len(BUCKETS), len(all_keys)), dtype=np.float32)
        for g, buckets in enumerate(per_genre):
            for b, size in enumerate(BUCKETS):
                keys, counts = buckets[size]
                weights[g, b, np.searchsorted(all_keys, keys)] = counts / max(1, counts.sum())
        return cls(grams, weights, streams)

    @classmethod
    def load(cls, tokenizer: Any, h: int) -> "ReferenceNull":
        """:meth:`build`, cached on disk per tokenizer and ``h`` (and in memory)."""
        return _load(tokenizer, h)

    def gram_keys(self, vocab: int) -> np.ndarray:
        """uint64 ``[M]``: each reference n-gram's key (:func:`~wmkit.watermark.text.stream.ngram_keys`)."""
        h1 = self.grams.shape[1]
        return ngram_keys(self.grams.ravel(), h1 - 1, vocab)[::h1]

    def common_coins(self, seeding: str, vocab: int, count: int = COMMON) -> np.ndarray:
        """Sorted uint64 keys of the ``count`` coins the references score most often (their share of
        each genre's scored coins, summed over genres and length buckets; key-independent): n-grams
        (``ngram_keys``) for lefthash, (anchor, token) pairs (``anchor * 2**31 + token``, as
        :func:`wmkit.prf.repeat_keys`) at any distance ``1..h`` for selfhash, each counted once per
        256-token text."""
        h = self.grams.shape[1] - 1
        if seeding != "selfhash":
            keys, share = self.gram_keys(vocab), self.weights.sum(axis=(0, 1))
        else:
            per_genre = []
            for stream in self.streams:
                n = len(stream) // 256
                docs = stream[: n * 256].astype(np.int64).reshape(n, 256)
                pairs = np.concatenate([(docs[:, h - j : 256 - j] << 31) + docs[:, h:] for j in range(1, h + 1)], axis=1)
                uniq = np.concatenate([np.unique(row) for row in pairs])
                k, c = np.unique(uniq, return_counts=True)
                per_genre.append((k, c / max(1, c.sum())))
            keys, inverse = np.unique(np.concatenate([k for k, _ in per_genre]), return_inverse=True)
            share = np.bincount(inverse, weights=np.concatenate([c for _, c in per_genre]))
            keys = keys.astype(np.uint64)
        top = np.argsort(-share, kind="stable")[:count]
        return np.sort(keys[top])

    def rates(self, prf_key: tuple[int, ...], h: int, seeding: str, gamma: float, common: np.ndarray | None = None,
              vocab: int = 0) -> np.ndarray:
        """``[len(GENRES), len(BUCKETS)]``: the key's green rate over each genre's scored n-grams
        (without the ``common`` coin keys of a ``vocab``-token tokenizer, when given: the rate over
        the coins the detector scores)."""
        ids = torch.from_numpy(self.grams)
        green = kernels.green_positions(ids, torch.full((len(ids),), h + 1), prf_key, h, seeding, gamma)[:, h]
        weights = self.weights
        if common is not None:
            weights = weights * ~np.isin(self.gram_keys(vocab), common)
            weights = weights / np.maximum(weights.sum(axis=-1, keepdims=True), 1e-12)
        return weights @ green.numpy().astype(np.float32)

    def scored_rates(self, score: Any, max_tokens: int = 200_000) -> np.ndarray:
        """``[len(GENRES), len(BUCKETS)]``: the green rate the detector's own scoring finds on each
        genre's reference cut into texts of each bucket's length (the first ``max_tokens`` tokens).

        ``score(list of id tensors) -> (green & scored, scored)`` bool ``[S, N]``. For selfhash, whose
        coins are (anchor, token) pairs chosen by the key, no key-independent n-gram weighting
        exists; this is the direct estimate (a few seconds)."""
        out = np.zeros((len(GENRES), len(BUCKETS)))
        for g, stream in enumerate(self.streams):
            for b, size in enumerate(BUCKETS):
                n = min(len(stream), max_tokens) // size
                docs = list(torch.from_numpy(stream[: n * size].astype(np.int64)).view(n, size))
                green, scored = score(docs)
                out[g, b] = float(green.sum()) / max(1, int(scored.sum()))
        return out

    @staticmethod
    def bucket(n_tokens: int) -> int:
        """The index of the length bucket nearest ``n_tokens`` (on a log scale)."""
        return int(np.argmin([abs(np.log(max(n_tokens, 1) / b)) for b in BUCKETS]))


_LOADED: dict[tuple[str, int], ReferenceNull] = {}


def _load(tokenizer: Any, h: int) -> ReferenceNull:
    key = (_tokenizer_id(tokenizer), h)
    if key not in _LOADED:
        path = cache_dir() / "reference" / f"v{VERSION}-{key[0]}-h{h}.npz"
        if path.exists():
            with np.load(path) as z:
                _LOADED[key] = ReferenceNull(z["grams"], z["weights"], [z[f"stream_{g}"] for g in GENRES])
        else:
            ref = ReferenceNull.build(tokenizer, h)
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez_compressed(buf, grams=ref.grams, weights=ref.weights,
                                **{f"stream_{g}": st.astype(np.int32) for g, st in zip(GENRES, ref.streams)})
            write_file(path, buf.getvalue(), overwrite=True)
            _LOADED[key] = ref
    return _LOADED[key]
