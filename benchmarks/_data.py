"""Data the benchmark scripts share (everything ships in benchmarks/data)."""

from __future__ import annotations

import gzip
from pathlib import Path

DATA = Path(__file__).parent / "data"


def agnews_prompts(n: int, words: int = 20, name: str = "agnews_3000.tsv.gz") -> list[str]:
    """The first ``words`` words of the first ``n`` AG News articles: the benchmarks' prompts."""
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        return [" ".join(line.split("\t")[0].split()[:words]) for _, line in zip(range(n), f)]
