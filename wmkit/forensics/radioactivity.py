"""Radioactivity (Sander et al. 2024, arXiv 2402.14904): was a suspect model trained on our marked text?

A model fine-tuned on text that carries a token-level mark learns, a little, to prefer the tokens
the key favoured after the contexts it saw. The test scores the suspect's own token choices with
the key -- never its log-probabilities -- as pairs ``(context window, token)``:

- **open setting** (the suspect's weights): our marked texts are read through the suspect (teacher
  forcing) and its greedy next token at each position is scored after the window of the *input*;
- **closed setting** (an API): the suspect writes text from prompts and its tokens are scored after
  its own windows, optionally only the windows our marked texts hold (the paper's filter: the
  contexts a fine-tune on our text could have learned).

What makes the p-value exact (each scored unit is a fresh keyed coin, independent of the others,
when the suspect never saw our text):

1. **The tape**: each coin -- what the scheme's PRF colours: the ``(window, token)`` n-gram, for
   selfhash the ``(anchor, token)`` pair -- is scored once over the whole run.
2. **No coin our texts chose before (open setting, ours)**: the texts are read in order, and a
   pair is not scored when its coin is the coin of a token our generator chose earlier -- in an
   earlier text, or earlier in this one. What the suspect read (or, through the earlier texts, what
   the test already conditions on) may carry that colour: a clean model that copies a marked n-gram
   from its context would otherwise look radioactive. Every other coin was at most *consulted* and
   passed over by our generator, which makes green (a high Gumbel or SynthID score) no more likely
   than its null rate: the likelihood of what the generator chose only falls as a passed-over
   coin's score rises. So each scored unit is, given all before it, at most as likely to be green
   as under the null, and the binomial (Gamma) tail is exact or conservative. The paper's per-text
   window dedup is the stricter form of this rule for lefthash seeding; ours keeps the pairs a
   model trained on the text would predict at the position the text first chose them.

The score of the scored pairs is the scheme's own exact test: binomial (green-list), Gamma
(Gumbel family), binomial over g-values (SynthID).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from ..errors import InputError
from ..stats import Detection, check_fpr
from .pairs import RADIOACTIVE_SCHEMES, PairScorer, pair_scorer, pair_windows

__all__ = ["RADIOACTIVE_SCHEMES", "PairScorer", "PairSet", "pair_scorer", "open_pairs", "closed_pairs", "window_filter",
           "radioactivity_test", "greedy_predictions"]

@dataclass
class PairSet:
    """Scored pairs gathered through the tape (each coin once), and how many candidates each rule left out."""

    scorer: PairScorer
    windows: list[list[int]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    candidates: int = 0
    not_fresh: int = 0
    filtered: int = 0

    def detect(self, fpr: float, setting: str) -> Detection:
        """The scheme's exact test over the scored pairs, with the counts in ``details``."""
        w = torch.tensor(self.windows, dtype=torch.long).reshape(len(self.tokens), self.scorer.width)
        det = self.scorer.detect(w, torch.tensor(self.tokens, dtype=torch.long), fpr)
        det.details.update({"setting": setting, "scored": len(self.tokens), "candidates": self.candidates,
                            "not_fresh": self.not_fresh, "filtered": self.filtered, "deduplicated": self.candidates
                            - self.not_fresh - self.filtered - len(self.tokens)})
        return det


def window_filter(texts: Iterable[torch.Tensor], width: int) -> set[tuple[int, ...]]:
    """The windows our marked texts hold (the contexts a fine-tune on them could have learned)."""
    out: set[tuple[int, ...]] = set()
    for ids in texts:
        out.update(map(tuple, pair_windows(ids, width)[0].tolist()))
    return out


def _gather(scorer: PairScorer, items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
            allowed: set[tuple[int, ...]] | None) -> PairSet:
    """Run the rules over ``items`` -- ``(windows, tokens scored, tokens the text chose or None)``, in
    reading order -- with every coin computed in one batched call: a pair is scored when its window
    passes the filter, its coin is not one a text chose before it, and the tape has not seen it."""
    pairs = PairSet(scorer)
    if not items:
        return pairs
    win = torch.cat([w for w, _, _ in items])
    coins = scorer.coins(win, torch.cat([t for _, t, _ in items]))
    chosen_rows = [(w, c) for w, _, c in items if c is not None]
    chose = iter(scorer.coins(torch.cat([w for w, _ in chosen_rows]), torch.cat([c for _, c in chosen_rows]))
                 if chosen_rows else [])
    chosen, seen, at = set(), set(), 0
    for w, t, c in items:
        rows = w.tolist()
        for i, tok in enumerate(t.tolist()):
            coin = coins[at + i]
            pairs.candidates += 1
            if c is not None:
                fresh = coin not in chosen
                chosen.add(next(chose))  # the token the text chose here comes after the prediction
                if not fresh:
                    pairs.not_fresh += 1
                    continue
            if allowed is not None and tuple(rows[i]) not in allowed:
                pairs.filtered += 1
            elif coin not in seen:
                seen.add(coin)
                pairs.windows.append(rows[i])
                pairs.tokens.append(tok)
        at += len(t)
    return pairs


def open_pairs(scorer: PairScorer, texts: Sequence[torch.Tensor], predictions: Sequence[torch.Tensor],
               allowed: set[tuple[int, ...]] | None = None, marked: Sequence[bool] | None = None) -> PairSet:
    """The open setting: ``predictions[j][i]`` is the suspect's greedy token after ``texts[j][: i + 1]``;
    the pair of position ``p`` is ``(texts[j][p - width : p], predictions[j][p - 1])``. In a text our key
    marked (``marked[j]``, default all), a pair whose coin is the coin of a token our texts chose
    before it (an earlier marked text, or earlier in this one) is not scored: its colour may show in
    what the suspect read (see the module docstring). A text the key never touched (human text) is
    read with the tape alone, before any marked text (so no colour our texts show is yet conditioned on)."""
    flags = [True] * len(texts) if marked is None else list(marked)
    if not len(flags) == len(texts) == len(predictions):
        raise ValueError("texts, predictions and marked must have one entry per text")
    items = []
    for j in sorted(range(len(texts)), key=lambda j: flags[j]):  # the unmarked texts first
        win, pos = pair_windows(texts[j], scorer.width)
        if len(pos):
            items.append((win, predictions[j][pos - 1], texts[j][pos] if flags[j] else None))
    return _gather(scorer, items, allowed)


def closed_pairs(scorer: PairScorer, generations: Sequence[torch.Tensor],
                 allowed: set[tuple[int, ...]] | None = None) -> PairSet:
    """The closed setting: the suspect's own generated tokens after their own windows (the key never
    touched them when the suspect is clean), through the tape and the optional window filter."""
    items = []
    for ids in generations:
        win, pos = pair_windows(ids, scorer.width)
        if len(pos):
            items.append((win, ids[pos], None))
    return _gather(scorer, items, allowed)


def greedy_predictions(model: Any, texts: Sequence[torch.Tensor], batch_size: int = 8,
                       progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """The suspect's greedy next token after every prefix of each text (teacher forcing, right padding)."""
    out: list[torch.Tensor] = []
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    got: dict[int, torch.Tensor] = {}
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        seqs = [texts[i] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)], mask[r, : len(s)] = s, 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        arg = logits.argmax(-1)
        for r, i in enumerate(idx):
            got[i] = arg[r, : len(texts[i])].cpu()
        if progress is not None:
            progress(len(got))
    out = [got[i] for i in range(len(texts))]
    return out


def radioactivity_test(pairs: PairSet, fpr: float, setting: str, min_scored: int = 1) -> Detection:
    """The exact test over the gathered pairs; an :class:`InputError` when fewer than ``min_scored`` are left."""
    check_fpr(fpr)
    if len(pairs.tokens) < min_scored:
        raise InputError(f"only {len(pairs.tokens)} (context, token) pair(s) could be scored; at least {min_scored} are needed "
                         f"(more or longer texts)")
    return pairs.detect(fpr, setting)
