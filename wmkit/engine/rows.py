"""The rows a decoder runs in lockstep: a left-padded batch in flight with its KV cache.

Between two forward passes a batch is its rows' next input ids ``inp`` ``[B, 1]``, their positions
``pos`` ``[B, 1]``, the attention ``mask`` ``[B, S + 1]`` over the ``S`` cached positions and the
input, and the KV cache (``S`` positions, padding on the left). Rows may leave it
(:meth:`Rows.select`) and a second batch, prefilled on its own, may join it (:meth:`Rows.merge`):
the narrower of the two is padded on the left -- masked cache entries, so each row attends to
exactly its own tokens -- and the rows are stacked. Columns that have become padding in every row
are dropped (:meth:`Rows.trim`), so the cache is never wider than its longest live row.

Only transformers' plain :class:`~transformers.cache_utils.DynamicCache` layers (``keys`` and
``values`` of shape ``[B, heads, S, head_dim]``) can be merged; for any other cache
:func:`mergeable` is False and a server lets new rows wait for the batch to end instead.

>>> import torch
>>> a = Rows(["a"], torch.tensor([[7]]), torch.tensor([[2]]), torch.tensor([[1, 1, 1]]), None)
>>> b = Rows(["b"], torch.tensor([[8]]), torch.tensor([[0]]), torch.tensor([[1]]), None)
>>> a.merge(b); a.mask.tolist()
[[1, 1, 1], [0, 0, 1]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def mergeable(cache: Any) -> bool:
    """Whether :meth:`Rows.merge` can stack ``cache`` with another (every layer a plain ``DynamicLayer``)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # an older transformers: no layer objects to pad
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


@dataclass(eq=False)
class Rows:
    """A batch in flight (see the module docstring): ``jobs[r]`` is row ``r``."""

    jobs: list[Any]
    inp: torch.Tensor
    pos: torch.Tensor
    mask: torch.Tensor
    cache: Any

    def select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (in that order), in the cache too; then :meth:`trim`."""
        if keep == list(range(len(self.jobs))):
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        if self.cache is not None:
            self.cache.batch_select_indices(idx)
        self.jobs = [self.jobs[r] for r in keep]
        self.inp, self.pos, self.mask = self.inp[idx], self.pos[idx], self.mask[idx]
        self.trim()

    def trim(self) -> None:
        """Drop the leading columns that are padding in every row (from the mask and the cache)."""
        if not mergeable(self.cache):
            return
        first = int(self.mask.any(0).to(torch.int8).argmax())  # the input column is never padding
        if first == 0:
            return
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _widen(self, width: int) -> None:
        extra = width - self.mask.shape[1]
        if extra <= 0:
            return
        self.mask = F.pad(self.mask, (extra, 0))
        if self.cache is not None:
            for layer in self.cache.layers:
                layer.keys, layer.values = F.pad(layer.keys, (0, 0, extra, 0)), F.pad(layer.values, (0, 0, extra, 0))

    def merge(self, other: "Rows") -> None:
        """Append ``other``'s rows (their cache is stacked onto this one; ``other`` is used up)."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        self._widen(width)
        other._widen(width)
        self.jobs = self.jobs + other.jobs
        self.inp, self.pos = torch.cat([self.inp, other.inp]), torch.cat([self.pos, other.pos])
        self.mask = torch.cat([self.mask, other.mask])
        if self.cache is not None:
            for mine, theirs in zip(self.cache.layers, other.cache.layers):
                mine.keys, mine.values = torch.cat([mine.keys, theirs.keys]), torch.cat([mine.values, theirs.values])
