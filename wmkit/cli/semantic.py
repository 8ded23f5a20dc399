"""``wm semantic fit``: fit the semantic reference (k-means centroids and mean embedding) that
k-SemStamp's regions and PMark's medians come from, on a user's own corpus."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..files import check_new, read_text
from .common import run_guarded, stderr

semantic_app = typer.Typer(help="The sentence-level marks' semantic reference.", no_args_is_help=True)


def _documents(path: Path, first: int | None) -> list[str]:
    """One document per line (a tab-separated line's first field), of a text or .gz file."""
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise InputError(f"{path}: not a readable gzip text file ({e})") from None
    else:
        text = read_text(str(path))
    docs = [ln.split("\t")[0].strip() for ln in text.splitlines() if ln.split("\t")[0].strip()]
    if first is not None:
        docs = docs[:first]
    if not docs:
        raise InputError(f"{path}: no documents")
    return docs


@semantic_app.command("fit")
def fit(
    corpus: Path = typer.Option(..., "--corpus", help="Documents, one per line (text or .gz; a TSV line's first field)."),
    output: Path = typer.Option(..., "--output", "-o", help="The reference file to write (must not exist)."),
    k: int = typer.Option(8, "--k", help="k-means clusters (k-SemStamp's regions)."),
    first: Optional[int] = typer.Option(None, "--first", help="Use only the first N documents.", show_default=False),
    encoder: Optional[Path] = typer.Option(None, "--encoder", help="Sentence encoder folder (default: all-MiniLM-L6-v2).", show_default=False),
    seed: int = typer.Option(0, help="k-means seed."),
) -> None:
    """Fit k-means centroids and the mean sentence embedding of a corpus; use the file with -P reference=FILE."""
    from ..encoders import SentenceEncoder
    from ..watermark.text.semantic.reference import fit_reference

    run_guarded(check_new, output)
    docs = run_guarded(_documents, corpus, first)
    enc = run_guarded(SentenceEncoder, encoder)
    ref = run_guarded(fit_reference, enc, docs, k, seed)
    run_guarded(ref.save, output)
    stderr.print(f"wrote {output}: k = {k} centroids of {ref.sentences} sentences from {len(docs)} documents "
                 f"(corpus sha256 {ref.corpus_sha256[:16]}...), encoder {ref.encoder_name} ({ref.dim}-d)", markup=False)
