"""Every "first seen" rule in one place: which repeated contexts, coins, n-grams or windows a detector
scores once and a processor leaves unmarked. A detector's exactness rests on these: a repeated
(context, token) pair is not a fresh coin, so counting it again would inflate the statistic.

- :func:`first_seen`: the first valid position of each key within its group (a packed batch of sequences).
- :func:`first_row`: the first occurrence of each row of a ``[n, w]`` tensor (vLLM's context dedup).
- :func:`first_ngram`: per row of a batch, the first occurrence of each ``(h + 1)``-gram, exactly
  (no hashing; for n-grams too wide to pack into one key).
- :func:`previous_occurrence` and :func:`new_within`: a key seen among the last ``history`` positions
  (SynthID's context history).
- :func:`seen_recently`: at generation time, whether the current context is among the last
  ``max_history`` contexts (vLLM's ``single_turn``, SynthID's history).
- :class:`SeenKeys`: the keys a stream has shown so far, across chunks.

``tests/test_dedup.py`` checks each of them, and the scored positions of every detector that
uses them, against one table of sequences and a brute-force reading of each rule.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["first_seen", "first_row", "first_ngram", "previous_occurrence", "new_within", "seen_recently", "SeenKeys"]


def first_seen(keys: torch.Tensor, groups: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """1-D bool: position ``i`` is valid and the first valid position holding ``keys[i]`` within its
    group ``groups[i]`` (a sequence of a packed batch; default one group). Two stable sorts of the
    valid positions (by key, then by group), so equal (group, key) pairs end up adjacent, earliest
    first; any device."""
    groups = torch.zeros_like(keys) if groups is None else groups
    valid = torch.ones(len(keys), dtype=torch.bool, device=keys.device) if valid is None else valid
    idx = torch.nonzero(valid).flatten()
    k, g = keys[idx], groups[idx]
    order = torch.argsort(k, stable=True)
    order = order[torch.argsort(g[order], stable=True)]
    ks, gs = k[order], g[order]
    new = torch.ones(len(order), dtype=torch.bool, device=keys.device)
    new[1:] = (ks[1:] != ks[:-1]) | (gs[1:] != gs[:-1])
    out = torch.zeros(len(keys), dtype=torch.bool, device=keys.device)
    out[idx[order]] = new
    return out


def first_row(rows: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: row ``i`` of ``rows [n, w]`` has not occurred before position ``i``."""
    if rows.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=rows.device)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    return first_seen(inverse)


def first_ngram(ids: torch.Tensor, lengths: torch.Tensor, h: int) -> torch.Tensor:
    """``[S, N]`` bool: position ``i >= h`` of row ``s`` (below its length) holds the first occurrence in
    its row of the n-gram ``ids[s, i-h : i+1]`` (context and token). Exact (no hashing), batched, any
    device: rows are sorted lexicographically by their n-grams with ``h + 2`` stable sorts (validity
    first, then columns most significant first, applied least significant first), so equal n-grams
    end up adjacent with the earliest position first."""
    s, n = ids.shape
    pos = torch.arange(n, device=ids.device)
    valid = (pos >= h) & (pos < lengths.unsqueeze(1))
    if n <= h:
        return valid
    grams = torch.zeros((s, n, h + 1), dtype=torch.int64, device=ids.device)
    grams[:, h:, :] = ids.to(torch.int64).unfold(1, h + 1, 1)
    keys = [(~valid).to(torch.int64)] + [grams[..., j] for j in range(h + 1)]
    order = pos.expand(s, n).contiguous()
    for k in reversed(keys):
        idx = torch.argsort(torch.gather(k, 1, order), dim=1, stable=True)
        order = torch.gather(order, 1, idx)
    sorted_keys = torch.stack([torch.gather(k, 1, order) for k in keys], dim=-1)
    new = torch.ones((s, n), dtype=torch.bool, device=ids.device)
    new[:, 1:] = (sorted_keys[:, 1:] != sorted_keys[:, :-1]).any(-1)
    first = torch.empty_like(new).scatter_(1, order, new)
    return first & valid


def previous_occurrence(values: torch.Tensor) -> torch.Tensor:
    """``[n]``: for each position, the last earlier position holding the same value (-1 if none)."""
    n = len(values)
    order = torch.sort(values, stable=True).indices  # equal values: in position order
    same = torch.zeros(n, dtype=torch.bool)
    same[1:] = values[order[1:]] == values[order[:-1]]
    prev_in_order = torch.full((n,), -1, dtype=torch.int64)
    prev_in_order[1:] = torch.where(same[1:], order[:-1], torch.tensor(-1))
    return torch.full((n,), -1, dtype=torch.int64).scatter(0, order, prev_in_order)


def new_within(keys: torch.Tensor, history: int | None) -> torch.Tensor:
    """``[n]`` bool: ``keys[i]`` did not occur among the ``history`` positions before ``i`` (``None``:
    any earlier position, as :func:`first_seen`)."""
    if history is None:
        return first_seen(keys)
    prev = previous_occurrence(keys)
    return (prev < 0) | (torch.arange(len(keys)) - prev > history)


def seen_recently(past: torch.Tensor, current: torch.Tensor, max_history: int | None) -> torch.Tensor:
    """``[B]`` bool: ``current [B, w]`` equals one of the last ``max_history`` rows of ``past [B, n, w]``
    (``None``: any of them) -- the generation-time side of :func:`new_within`."""
    n = past.shape[1]
    if n == 0:
        return torch.zeros(past.shape[0], dtype=torch.bool, device=past.device)
    lo = 0 if max_history is None else max(0, n - max_history)
    return (past[:, lo:, :] == current.unsqueeze(1)).all(-1).any(-1)


class SeenKeys:
    """The uint64 keys a stream has shown: sorted runs, merged like a binary counter (a run is merged
    into the one before it when it is at least as long), so a lookup costs ``O(log^2 n)`` and memory
    is 8 bytes per distinct key (twice that during a merge). :meth:`first` over the chunks of a
    stream gives what :func:`first_seen` gives over the whole."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def _contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for run in self.runs:
            i = np.minimum(np.searchsorted(run, keys), len(run) - 1)
            found |= run[i] == keys
        return found

    def first(self, keys: np.ndarray) -> np.ndarray:
        """Bool mask over ``keys``: the first occurrence of a key never seen before; records them."""
        uniq, index = np.unique(keys, return_index=True)
        new = ~self._contains(uniq)
        mask = np.zeros(len(keys), dtype=bool)
        mask[index[new]] = True
        run = uniq[new]
        while self.runs and len(self.runs[-1]) <= len(run):
            run = np.concatenate([self.runs.pop(), run])
            run.sort(kind="stable")
        if len(run):
            self.runs.append(run)
        return mask
