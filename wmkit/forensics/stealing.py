"""Watermark stealing (Jovanovic et al. 2024, arXiv 2402.19361): learn a mark from its output, then spoof or scrub.

The attacker never sees the key. It reads ``N`` tokens the marked model wrote (its queries) and
text of its own unmarked model (the base), and counts, for every context it saw, which token came
next. A token that follows a context more often in marked text than in the base -- its mass
ratio -- is probably green there. Counts are kept under three views of the ``h`` tokens before a
position, as the paper does:

- **full**: the context as an unordered set (the paper's ``{ABC} -> D``): precise, sparse;
- **single**: each context token on its own (``{S} -> D``, for ``h >= 2``): a selfhash colour is a
  function of one (anchor, token) pair, so a single token carries most of it. The paper keeps the
  single token whose boosts agree best with the pair views; this attacker averages the singles
  (one rule, no pair counts), which boosts the anchor's greens at ``1 / h`` of their weight;
- **empty**: the token alone (``{} -> D``): a context-free list (all of Unigram's mark).

Per view and context, the boost of token ``D`` is its mass ratio where it has enough marked
counts (at least ``min_count`` after a context; ``min_mass_empty`` of the base's tokens for the
empty view), 0 below a ratio of 1, clipped at ``clip`` and scaled so the largest is 1. The
boosts of the views are averaged with weights ``(2, 1, 0.5)`` (the paper's spoofing configs),
and the attacker adds ``strength`` times that to its model's logits: ``+6.5`` writes text that
carries the mark without the key (spoofing), a negative strength steers a paraphrase away from
the learned greens (scrubbing, :class:`~wmkit.watermark.text.attacks.Paraphrase` ``steer``).

:class:`StolenMark` works on token ids, so the same attacker runs on a real model (through
:func:`wmkit.engine.generate_completions`, as a scheme whose processor adds the boosts) and on
the stated-distribution simulation in :mod:`wmkit.watermark.text.stealing`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from ..errors import InputError

__all__ = ["StolenMark", "Steering", "WEIGHTS"]

WEIGHTS = (2.0, 1.0, 0.5)  # full, single, empty: the paper's spoofing configs (w_abcd, w_partials, w_empty)
SPOOF_STRENGTH = 6.5  # the paper's spoofer_strength


@dataclass
class StolenMark:
    """What the attacker learned: per context view, next-token counts in marked and in base text.

    Args:
        h: the context width the attacker assumes (it knows the scheme's, not the key).
        vocab_size: the tokenizer's vocabulary size (the width of the boost vector).
        clip: mass ratios above this count as this (the paper's ``clip_at``).
        min_count: marked counts a (context, token) needs before it is boosted (non-empty views).
        min_mass_empty: the empty view's threshold, as a share of the base's token count.
        weights: the views' weights (full, single, empty).
    """

    h: int
    vocab_size: int
    clip: float = 2.0
    min_count: int = 2
    min_mass_empty: float = 7e-5
    weights: tuple[float, float, float] = WEIGHTS
    observed: dict[bool, int] = field(init=False, default_factory=lambda: {True: 0, False: 0})

    def __post_init__(self) -> None:
        if self.h < 0 or self.vocab_size < 1 or self.clip <= 1 or self.min_count < 1:
            raise InputError("stolen mark: h >= 0, vocab_size >= 1, clip > 1 and min_count >= 1 are needed")
        self._counts: dict[bool, dict[tuple, Counter]] = {True: defaultdict(Counter), False: defaultdict(Counter)}
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def views(self, context: Sequence[int]) -> list[tuple[int, tuple]]:
        """``(view index, key)`` of every view of the last ``h`` tokens of ``context`` that carries weight."""
        ctx = tuple(context[len(context) - self.h:]) if self.h else ()
        out: list[tuple[int, tuple]] = []
        if self.h and len(ctx) == self.h:
            out.append((0, ("full", *sorted(ctx))))
            if self.h >= 2:
                out.extend((1, ("single", t)) for t in ctx)
        out.append((2, ("empty",)))
        return out

    def observe(self, token_lists: Iterable[Sequence[int]], marked: bool = True) -> None:
        """Count the tokens of each list after its contexts: marked text (the queries) or base text."""
        counts = self._counts[marked]
        for toks in token_lists:
            toks = list(toks)
            for i in range(len(toks)):
                if i < self.h:
                    counts[("empty",)][toks[i]] += 1
                    continue
                for _, key in self.views(toks[i - self.h: i]):
                    counts[key][toks[i]] += 1
            self.observed[marked] += len(toks)
        self._cache.clear()

    def boost(self, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token ids, boosts in (0, 1])`` of one view key (cached until the next :meth:`observe`)."""
        if key in self._cache:
            return self._cache[key]
        wm, base = self._counts[True].get(key), self._counts[False].get(key)
        ids, vals = [], []
        if wm:
            tw, tb = sum(wm.values()), (sum(base.values()) if base else 0)
            need = max(1, round(self.min_mass_empty * tb)) if key == ("empty",) else self.min_count
            ratios = {t: ((c / tw) / (base[t] / tb) if base and base.get(t) else float("inf"))
                      for t, c in wm.items() if c >= need}
            finite = [r for r in ratios.values() if r != float("inf")]
            top = max([1.0, *finite]) + 1e-3
            for t, r in ratios.items():
                r = top if r == float("inf") else r
                if r >= 1:
                    ids.append(t)
                    vals.append(min(r, self.clip) / self.clip)
        v = torch.tensor(vals, dtype=torch.float32)
        got = (torch.tensor(ids, dtype=torch.long), v / v.max() if len(v) else v)
        self._cache[key] = got
        return got

    def boosts(self, context: Sequence[int]) -> torch.Tensor:
        """``[vocab_size]`` float: the weighted mean of the views' boosts after ``context``."""
        out = torch.zeros(self.vocab_size)
        views = self.views(context)
        singles = sum(1 for v, _ in views if v == 1)
        total = 0.0
        for v, key in views:
            w = self.weights[v] / (singles if v == 1 else 1)
            ids, vals = self.boost(key)
            if len(ids):
                out.index_add_(0, ids, vals * w)
            total += w
        return out / total if total else out

    def bias(self, ids: torch.Tensor, scores: torch.Tensor, strength: float) -> torch.Tensor:
        """``scores [B, V] + strength * boosts`` after each row of ``ids [B, n]``."""
        out = scores.clone()
        for r, row in enumerate(ids.tolist()):
            out[r, : self.vocab_size] += strength * self.boosts(row)[: out.shape[1]].to(out.dtype)
        return out

    def steering(self, strength: float = SPOOF_STRENGTH) -> "Steering":
        """A scheme-like object for :func:`wmkit.engine.generate_completions`: its processor adds
        ``strength`` times the boosts (positive: spoof, negative: scrub)."""
        return Steering(self, strength)

    def stats(self) -> dict[str, Any]:
        """How much was learned: tokens observed, contexts counted, contexts with a boost."""
        keys = list(self._counts[True])
        return {"observed_marked": self.observed[True], "observed_base": self.observed[False],
                "contexts": len(keys), "boosted_contexts": sum(1 for k in keys if len(self.boost(k)[0]))}


@dataclass
class Steering:
    """The attacker as a text scheme the generation engine accepts (no key: it only steers).

    A spoofer (``strength > 0``) also applies the paper's n-gram repetition penalty: a token that
    would repeat an ``(h + 1)``-gram already in the row (``n = 2`` for ``h = 0``) has its logit
    divided by ``repetition`` (multiplied, if negative), so the boosts do not lock it in a loop."""

    stolen: StolenMark
    strength: float
    repetition: float = 1.6
    name: str = "stolen"

    def processor(self, tokenizer: Any = None, **sampling: Any) -> Any:
        """A logits processor ``(ids [B, n], scores [B, V]) -> scores`` adding the steering."""
        def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            out = self.stolen.bias(ids, scores, self.strength)
            if self.strength > 0 and self.repetition != 1:
                for r, row in enumerate(ids.tolist()):
                    seen = repeats(row, max(self.stolen.h, 1))
                    if seen:
                        idx = torch.tensor(sorted(seen))
                        v = out[r, idx]
                        out[r, idx] = torch.where(v > 0, v / self.repetition, v * self.repetition)
            return out
        return apply


def repeats(row: Sequence[int], h: int) -> set[int]:
    """The tokens that would repeat an ``(h + 1)``-gram of ``row`` after its last ``h`` tokens."""
    if len(row) <= h:
        return set()
    tail = row[len(row) - h:]
    return {row[j] for j in range(h, len(row)) if row[j - h: j] == tail}
