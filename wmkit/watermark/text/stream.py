"""Streaming detection: one text of any length, scored in bounded memory.

A detector that streams (``capabilities.streams``) scores a text given as an iterable of pieces
(:func:`wmkit.files.iter_text` yields them) with ``detect_stream(pieces)``; the result equals
``detect`` on the whole text (``tests/test_stream.py`` checks it) while memory holds one chunk:

- :func:`text_chunks` re-cuts the pieces into chunks of about ``chunk_chars`` characters, each
  ending just before a space that starts a word. Byte-level BPE tokenizers (GPT-2, Llama 3,
  SmolLM2) pre-split text there, so the chunks' token ids, concatenated, are the whole text's.
  Normalisation (:func:`~wmkit.watermark.text.normalize.normalize_text`) is word-local except for
  its text-wide decisions (script, evasion characters, flip rate), which read additive counts: a
  re-readable stream takes them from a first pass over the whole text, so each chunk is
  normalised as the whole text is.
- each chunk is scored with the last tokens of the previous one as context (the PRF's ``h``; for
  IE also the tagger's receptive field), so every token sees the context it has in the whole text;
- repeated (context, token) n-grams count once over the whole text: :class:`wmkit.dedup.SeenKeys` keeps one
  64-bit key per distinct n-gram (exact when the n-gram's ids pack into 64 bits, as for SmolLM2's
  49,152-token vocabulary up to ``h = 3``; otherwise a 64-bit hash, whose chance of any collision
  among ``n`` distinct n-grams is below ``n**2 / 2**65``: 2e-5 for 25 million).

Memory: one chunk's tensors (a 256k-character chunk is about 64k tokens) plus 8 bytes per distinct
n-gram, plus, for windowed detection, 13 bytes per scored token (flag, position, id).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

__all__ = ["CHUNK_CHARS", "ngram_keys", "text_chunks"]

CHUNK_CHARS = 1 << 18


def _cut(buf: str, lo: int) -> int:
    """The last index ``i > lo`` with ``buf[i] == " "`` between two non-space characters, or -1."""
    i = buf.rfind(" ", lo + 1, len(buf) - 1)
    while i > lo:
        if not buf[i - 1].isspace() and not buf[i + 1].isspace():
            return i
        i = buf.rfind(" ", lo + 1, i)
    return -1


def text_chunks(pieces: Iterable[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Re-cut ``pieces`` into chunks of ``chunk_chars // 2`` to ``chunk_chars`` characters (the last
    may be shorter), each but the last ending before a space that starts a word. Where no such
    space lies in that range, the chunk ends at the last one within ``2 * chunk_chars``, or is cut
    there if there is none (one token at that seam may then differ from the whole text's)."""
    if chunk_chars < 2:
        raise ValueError(f"chunk_chars must be >= 2, got {chunk_chars}")
    half, buf = chunk_chars // 2, ""
    for piece in pieces:
        buf += piece
        while len(buf) > chunk_chars:
            i = _cut(buf[: chunk_chars + 1], half)
            if i < 0:
                if len(buf) <= 2 * chunk_chars:
                    break  # no word boundary yet: wait for more text
                i = _cut(buf[: 2 * chunk_chars + 1], half)
                i = i if i >= 0 else 2 * chunk_chars
            yield buf[:i]
            buf = buf[i:]
    if buf:
        yield buf


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def ngram_keys(ids: np.ndarray, h: int, vocab_size: int) -> np.ndarray:
    """One uint64 key per n-gram ``ids[i-h : i+1]`` for ``i = h .. len(ids)-1``: the ids packed
    exactly when ``(h + 1) * bits(vocab_size - 1) <= 64``, else a splitmix64 chain over them."""
    ids = np.asarray(ids, dtype=np.uint64)
    n = len(ids) - h
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    bits = max(1, int(vocab_size - 1).bit_length())
    with np.errstate(over="ignore"):
        if (h + 1) * bits <= 64:
            key = np.zeros(n, dtype=np.uint64)
            for j in range(h + 1):
                key = (key << np.uint64(bits)) | ids[j : j + n]
            return key
        key = np.full(n, _MIX, dtype=np.uint64)
        for j in range(h + 1):
            key = _splitmix(key + ids[j : j + n] + _MIX)
        return key
