"""Stop strings: found as a completion grows (:class:`StopWatch`) and cut from a finished one (:func:`cut_at_stop`)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["StopWatch", "cut_at_stop"]


class StopWatch:
    """Finds stop strings in a growing completion in O(total length): decodes only a few trailing
    tokens per step (vLLM's incremental detokenization: the text of ``ids[prefix:]`` minus that of
    ``ids[prefix:read]``), and searches only the new text plus ``longest stop - 1`` characters.

    ``text`` is the completion's text so far (whole characters only); it is kept when there are
    stop strings or ``track`` is set (a streamed request).
    """

    def __init__(self, tokenizer: Any, stops: list[str], track: bool = False) -> None:
        self.tok, self.stops, self.track = tokenizer, stops, track
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.prefix = self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> bool:
        """Append ``token``; True once a stop string has appeared."""
        self.ids.append(token)
        if not self.stops and not self.track:
            return False
        before = self._decode(self.ids[self.prefix : self.read])
        now = self._decode(self.ids[self.prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):  # an incomplete character: wait for more
            return False
        start = max(0, len(self.text) - self.keep)
        self.text += now[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        tail = self.text[start:]
        return any(s in tail for s in self.stops)


def cut_at_stop(tokenizer: Any, ids: list[int], stop: Sequence[str]) -> tuple[str, list[int], bool]:
    """Decode ``ids`` and cut at the first of the ``stop`` strings: the text, the tokens that lie
    wholly before the cut, and whether a stop string was found."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    if not cuts:
        return text, ids, False
    text = text[: min(cuts)]
    keep = len(ids)
    while keep and not text.startswith(tokenizer.decode(ids[:keep], skip_special_tokens=True)):
        keep -= 1
    return text, ids[:keep], True
