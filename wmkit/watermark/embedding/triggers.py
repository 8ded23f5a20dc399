"""Trigger words: the reference vocabulary, keyed trigger selection, and trigger counting.

A text's words are its lowercase ASCII letter runs (``[a-z]+`` after lowercasing). The reference
vocabulary (``wmkit/data/eaas_vocab.json``, rebuilt by :func:`build_vocabulary`) holds the
document frequency of every word seen in 0.1%..5% of a reference corpus -- the 6,735 SST-2
sentences of ``benchmarks/data/sst2_dev.tsv.gz`` and the first 6,735 AG News texts of
``benchmarks/data/agnews_10k.tsv.gz``, so both tasks' words are represented -- plus a list of
candidate target sentences (AG News texts 9,744..9,999, which no benchmark trains on).

Triggers are ``n`` words drawn, with a generator seeded by the secret key, from the words whose
document frequency lies in a band (EmbMarker's default: [0.005, 0.01)); two keys give two
independent trigger sets.

>>> count_triggers(["The cat sat on the mat", "no match here"], ("cat", "mat", "dog"))
array([2, 0])
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

import numpy as np

from ...errors import InputError
from ...keys import SecretKey, keyed_rng

WORD = re.compile(r"[a-z]+")
VOCAB_FILE = "eaas_vocab.json"
MIN_WORD_LEN = 3
DF_RANGE = (0.001, 0.05)


def words(text: str) -> set[str]:
    """The distinct words of ``text`` (lowercase ``[a-z]+`` runs)."""
    return set(WORD.findall(text.lower()))


def document_frequency(texts: Iterable[str]) -> tuple[dict[str, float], int]:
    """``({word: fraction of texts containing it}, number of texts)``."""
    counts: Counter[str] = Counter()
    n = 0
    for t in texts:
        counts.update(words(t))
        n += 1
    if n == 0:
        raise InputError("document_frequency: no texts")
    return {w: c / n for w, c in counts.items()}, n


@dataclass(frozen=True)
class Vocabulary:
    """Word document frequencies of a reference corpus, and candidate target sentences.

    Attributes:
        df: ``{word: document frequency}`` for words of at least 3 letters in the stored range.
        n_docs: the size of the reference corpus.
        targets: candidate target sentences (the key picks one).
    """

    df: dict[str, float]
    n_docs: int
    targets: tuple[str, ...]

    def band(self, lo: float, hi: float) -> list[str]:
        """Words with document frequency in ``[lo, hi)``, sorted (a deterministic order for keyed sampling)."""
        return sorted(w for w, f in self.df.items() if lo <= f < hi)

    def to_json(self) -> str:
        """The JSON text stored in ``wmkit/data/eaas_vocab.json``."""
        df = {w: round(f, 8) for w, f in sorted(self.df.items())}
        return json.dumps({"n_docs": self.n_docs, "df": df, "targets": list(self.targets)}, indent=0, sort_keys=True)


def build_vocabulary(texts: Sequence[str], targets: Sequence[str]) -> Vocabulary:
    """The reference vocabulary of ``texts``: words of >= 3 letters with document frequency in 0.1%..5%."""
    df, n = document_frequency(texts)
    lo, hi = DF_RANGE
    kept = {w: f for w, f in df.items() if lo <= f < hi and len(w) >= MIN_WORD_LEN}
    return Vocabulary(kept, n, tuple(targets))


def reference_corpus(data_dir: str) -> tuple[list[str], list[str]]:
    """``(texts, targets)`` of the shipped vocabulary, read from the repository's ``benchmarks/data``."""
    from pathlib import Path

    def rows(name: str, header: bool) -> list[str]:
        with gzip.open(Path(data_dir) / name, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        return [ln.split("\t")[0] for ln in lines[1 if header else 0 :] if ln]

    sst = rows("sst2_dev.tsv.gz", True)
    ag = rows("agnews_10k.tsv.gz", False)
    return sst + ag[: len(sst)], ag[-256:]


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """The vocabulary shipped in the package (``wmkit/data/eaas_vocab.json``)."""
    raw = json.loads(resources.files("wmkit").joinpath("data", VOCAB_FILE).read_text(encoding="utf-8"))
    return Vocabulary(raw["df"], int(raw["n_docs"]), tuple(raw["targets"]))


def select_triggers(key: SecretKey, n: int, band: tuple[float, float], vocab: Vocabulary | None = None) -> tuple[str, ...]:
    """``n`` trigger words from the frequency band, chosen by the key (sorted)."""
    vocab = vocab or default_vocabulary()
    candidates = vocab.band(*band)
    if len(candidates) < n:
        raise InputError(f"the frequency band {list(band)} holds {len(candidates)} words; {n} triggers requested")
    picked = keyed_rng(key, "eaas/triggers").choice(len(candidates), size=n, replace=False)
    return tuple(sorted(candidates[i] for i in picked))


def count_triggers(texts: Sequence[str], triggers: Sequence[str]) -> np.ndarray:
    """Number of *distinct* triggers in each text (int array)."""
    trig = set(triggers)
    return np.array([len(words(t) & trig) for t in texts], dtype=np.int64)
