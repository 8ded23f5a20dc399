"""Sentences, the unit of the sentence-level marks: one splitting rule, used alike when a mark is
generated (where a candidate sentence ends) and when it is detected (how a text is cut).

A sentence ends after ``.``, ``!`` or ``?`` followed by a space, or at a line break. The rule is
deliberately simple: what matters is that generation and detection cut a text the same way, and
a generated sentence is cut where this rule cuts it.

>>> split_sentences("It rained. Then it stopped!\\nThe end")
['It rained.', 'Then it stopped!', 'The end']
>>> first_sentence_end("Hello there. And more")
12
"""

from __future__ import annotations

import re

__all__ = ["split_sentences", "first_sentence_end"]

_BOUNDARY = re.compile(r"(?<=[.!?]) +|\n+")



def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (stripped, empty ones dropped)."""
    return [s.strip() for s in _BOUNDARY.split(text) if s.strip()]


def first_sentence_end(text: str) -> int | None:
    """Where the first sentence of ``text`` ends (the index just after its ``.!?`` or its line
    break), or ``None`` if no sentence ends in it."""
    m = _BOUNDARY.search(text)
    if m is None:
        return None
    return m.start() + (1 if text[m.start()] == "\n" else 0)
