"""A suspect's output vectors at four API access levels, behind one interface.

Every access level has ``vocab_size``, a call counter ``calls`` and ``vectors(prompts, rows)``:
``[len(prompts), len(rows)]`` float64 output vectors on the vocabulary entries ``rows`` (all of
them when ``rows`` is None), each known up to an additive constant (which the containment test
ignores: the all-ones direction is part of the signature).

- ``logits`` / ``logprobs``: :class:`ModelAccess` over a local transformers model; one call per prompt.
- ``topk``: :class:`TopKRecovery` over an API that returns the top-``k`` log-probs under a logit
  bias (OpenAI's ``logprobs`` + ``logit_bias``). Finlayson et al.'s formula: bias a reference token
  ``r`` and ``k - 1`` others by the same ``B``; then for each of them
  ``logit(t) - logit(r) = logprob'(t) - logprob'(r)`` exactly (the shared bias and the normalizer
  cancel). One call recovers ``k - 1`` entries, so ``ceil((m - 1)/(k - 1))`` calls give ``m``
  entries. With the signature known, ``m`` need only exceed its dimension (``h + 1``) by a margin,
  not ``|V|``: O(h/k) calls per vector instead of O(|V|/k).
- ``top1``: :class:`Top1Recovery` over an API that returns only the argmax under a logit bias:
  per entry, a bisection on the bias that just makes ``t`` the argmax gives
  ``logit(t) - logit(argmax)`` to ``tol``; about ``log2(bias_max / tol)`` calls per entry, or,
  guided by the victim's own logits (stored in the signature), 2 for an entry near the prediction
  (one probe at each edge of a window one precision wide).

:class:`LocalAPI` is such an API over a local model (what ``wm serve`` exposes over HTTP), with
each prompt's logits computed once and every biased call answered from them.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import InputError

MAX_BIAS = 100.0  # OpenAI's logit_bias range is [-100, 100]


class BiasedAPI(Protocol):
    """An API that answers one prompt under a logit bias (``{token id: bias}``)."""

    vocab_size: int
    calls: int

    def top_logprobs(self, prompt: Sequence[int], logit_bias: dict[int, float], k: int) -> dict[int, float]:
        """The ``k`` most likely next tokens and their log-probs under the bias (one call)."""
        ...

    def argmax(self, prompt: Sequence[int], logit_bias: dict[int, float]) -> int:
        """The most likely next token under the bias (one call)."""
        ...


def _last_logits(model: Any, prompts: Sequence[Sequence[int]], batch: int = 16) -> np.ndarray:
    """Next-token logits after each prompt, float64 ``[m, V]`` (prompts of one length run as a batch)."""
    import torch

    out: dict[int, np.ndarray] = {}
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    with torch.inference_mode():
        for idx in by_len.values():
            for j in range(0, len(idx), batch):
                part = idx[j : j + batch]
                ids = torch.as_tensor([list(prompts[i]) for i in part], dtype=torch.long, device=model.device)
                logits = model(input_ids=ids).logits[:, -1].double().cpu().numpy()
                out.update(zip(part, logits))
    return np.stack([out[i] for i in range(len(prompts))])


def _rows(rows: Sequence[int] | None, vocab: int) -> np.ndarray:
    r = np.arange(vocab) if rows is None else np.asarray(rows, dtype=np.int64)
    if r.ndim != 1 or len(r) < 2 or r.min() < 0 or r.max() >= vocab or len(np.unique(r)) != len(r):
        raise InputError(f"rows must be distinct token ids in 0..{vocab - 1}")
    return r


class ModelAccess:
    """Full logits or full log-probs of a local model.

    Args:
        model: a transformers causal LM (any dtype; outputs are read in float64).
        level: ``"logits"`` or ``"logprobs"``.
    """

    def __init__(self, model: Any, level: str = "logits") -> None:
        if level not in ("logits", "logprobs"):
            raise InputError(f"level must be 'logits' or 'logprobs', got {level!r}")
        self.model, self.level, self.calls = model, level, 0
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    def vectors(self, prompts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> np.ndarray:
        """One vector per prompt (one call each)."""
        r = _rows(rows, self.vocab_size)
        s = _last_logits(self.model, prompts)
        self.calls += len(prompts)
        if self.level == "logprobs":
            s = s - np.logaddexp.reduce(s, axis=1, keepdims=True)
        return s[:, r]


class LocalAPI:
    """A :class:`BiasedAPI` over a local model; counts calls, computes each prompt's logits once."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls = model, 0
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def _biased(self, prompt: Sequence[int], logit_bias: dict[int, float]) -> np.ndarray:
        key = tuple(int(t) for t in prompt)
        if key not in self._cache:
            self._cache[key] = _last_logits(self.model, [key])[0]
        s = self._cache[key].copy()
        for t, b in logit_bias.items():
            if not -MAX_BIAS <= b <= MAX_BIAS:
                raise InputError(f"logit_bias values must be in [-{MAX_BIAS:g}, {MAX_BIAS:g}]")
            s[int(t)] += b
        self.calls += 1
        return s

    def top_logprobs(self, prompt: Sequence[int], logit_bias: dict[int, float], k: int) -> dict[int, float]:
        """Top-``k`` log-probs under the bias."""
        s = self._biased(prompt, logit_bias)
        lp = s - np.logaddexp.reduce(s)
        top = np.argsort(-lp, kind="stable")[:k]
        return {int(t): float(lp[t]) for t in top}

    def argmax(self, prompt: Sequence[int], logit_bias: dict[int, float]) -> int:
        """The argmax under the bias."""
        return int(np.argmax(self._biased(prompt, logit_bias)))


class _Recovery:
    """What both restricted levels share: the API, its vocabulary size and its call counter."""

    def __init__(self, api: BiasedAPI) -> None:
        self.api = api
        self.vocab_size = api.vocab_size

    @property
    def calls(self) -> int:
        """API calls made so far."""
        return self.api.calls


class TopKRecovery(_Recovery):
    """Output vectors from top-``k`` log-probs + logit bias (Finlayson et al. 2024); see the module docstring.

    Args:
        api: a :class:`BiasedAPI`.
        k: how many log-probs one call returns (OpenAI: at most 20).
    """

    def __init__(self, api: BiasedAPI, k: int = 20) -> None:
        if not 2 <= k <= 1000:
            raise InputError(f"k must be in 2..1000, got {k}")
        super().__init__(api)
        self.k = k

    def calls_per_vector(self, m: int) -> int:
        """Calls to recover ``m`` entries of one vector."""
        return math.ceil((m - 1) / (self.k - 1))

    def vectors(self, prompts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> np.ndarray:
        """Entries ``rows`` of each prompt's logit vector, relative to ``rows[0]``."""
        r = _rows(rows, self.vocab_size)
        out = np.zeros((len(prompts), len(r)))
        ref = int(r[0])
        for i, p in enumerate(prompts):
            for start in range(1, len(r), self.k - 1):
                chunk = [int(t) for t in r[start : start + self.k - 1]]
                got = self.api.top_logprobs(p, {ref: MAX_BIAS, **{t: MAX_BIAS for t in chunk}}, self.k)
                if ref not in got or any(t not in got for t in chunk):
                    raise InputError("a biased token is missing from the top-k answer: the API ignores logit_bias")
                out[i, start : start + len(chunk)] = [got[t] - got[ref] for t in chunk]
        return out


class Top1Recovery(_Recovery):
    """Output vectors from the argmax alone + logit bias, by bisection (see the module docstring).

    Args:
        api: a :class:`BiasedAPI`.
        tol: precision of each recovered logit difference without a guide.
        guide: ``{prompt: the victim's logits}`` (:func:`wmkit.fingerprint.verify.guide_for`). For a
            prompt it holds, each entry's search starts in a window around a *prediction*, to a
            precision of ``guide_tol`` standard deviations of the victim's logits (on the recovered
            rows): the victim's own difference, mapped through the affine fit ``a x + b`` of the
            suspect's differences recovered so far on the victim's (refitted every 8 entries from
            the 16th on: a fine-tune that sharpens or flattens the distribution, or has another
            argmax, is mostly such a map). The window is ``+- window`` standard deviations at first,
            then ``+- fit_width`` times the fit's residual spread (at least ``guide_tol``). An answer
            outside it is found by doubling the step outward (either way), then bisecting; an answer
            inside costs one bisection step and a probe at the nearer edge, about 2 calls.
        window, guide_tol, fit_width: see ``guide``.
    """

    def __init__(self, api: BiasedAPI, tol: float = 1e-6, guide: dict[tuple[int, ...], np.ndarray] | None = None,
                 window: float = 1.0, guide_tol: float = 0.5, fit_width: float = 2.0) -> None:
        super().__init__(api)
        if not (tol > 0 and window > 0 and 0 < guide_tol <= window and fit_width > 0):
            raise InputError("tol, window, guide_tol and fit_width must be positive, guide_tol at most window")
        self.tol, self.guide, self.window, self.guide_tol = float(tol), guide or {}, float(window), float(guide_tol)
        self.fit_width = float(fit_width)

    def calls_per_vector(self, m: int) -> int:
        """Calls to recover ``m`` entries of one vector without a guide (upper bound)."""
        return 1 + m * (1 + math.ceil(math.log2(MAX_BIAS / self.tol)))

    def _wins(self, p: Sequence[int], t: int, bias: float) -> bool:
        return self.api.argmax(p, {t: bias}) == t

    def _bisect(self, p: Sequence[int], t: int, lo: float, hi: float, tol: float) -> float:
        """The threshold bias in ``[lo, hi]`` above which ``t`` is the argmax, to ``tol`` (the midpoint)."""
        while hi - lo > tol:
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self._wins(p, t, mid) else (mid, hi)
        return (lo + hi) / 2

    def _guided(self, p: Sequence[int], t: int, centre: float, half: float, tol: float) -> float:
        """The threshold, searched first in ``[centre - half, centre + half]`` (clipped to the bias range)."""
        a, b = min(max(0.0, centre - half), MAX_BIAS - tol), min(MAX_BIAS, max(centre + half, tol))
        x = self._bisect(p, t, a, b, tol)
        if x - a <= tol and a > 0 and self._wins(p, t, a):
            hi, width = a, 2 * half  # below the window: double the step down until t loses
            while True:
                lo = max(0.0, hi - width)
                if lo <= 0.0 or not self._wins(p, t, lo):
                    return self._bisect(p, t, lo, hi, tol)
                hi, width = lo, 2 * width
        if b - x <= tol and b < MAX_BIAS and not self._wins(p, t, b):
            lo, width = b, 2 * half  # above it: double the step until t wins
            while True:
                hi = min(MAX_BIAS, lo + width)
                if self._wins(p, t, hi):
                    return self._bisect(p, t, lo, hi, tol)
                if hi >= MAX_BIAS:
                    raise InputError(f"token {t}'s logit is more than {MAX_BIAS:g} below the top: not recoverable")
                lo, width = hi, 2 * width
        return x

    def vectors(self, prompts: Sequence[Sequence[int]], rows: Sequence[int] | None = None) -> np.ndarray:
        """Entries ``rows`` of each prompt's logit vector, relative to the unbiased argmax."""
        r = _rows(rows, self.vocab_size)
        out = np.zeros((len(prompts), len(r)))
        for i, p in enumerate(prompts):
            top = self.api.argmax(p, {})
            g = self.guide.get(tuple(int(x) for x in p))
            scale = float(np.std(g[r])) if g is not None else 0.0
            fit = _AffineFit(self.window * scale, self.fit_width, self.guide_tol * scale)
            for j, t in enumerate(int(x) for x in r):
                if t == top:
                    continue  # t becomes the argmax iff its bias exceeds logit(top) - logit(t)
                if scale > 0:
                    x = float(np.max(g) - g[t])  # the victim's own threshold for t
                    centre, half = fit.predict(x)
                    out[i, j] = -fit.add(x, self._guided(p, t, centre, half, self.guide_tol * scale))
                else:
                    if not self._wins(p, t, MAX_BIAS):
                        raise InputError(f"token {t}'s logit is more than {MAX_BIAS:g} below the top: not recoverable")
                    out[i, j] = -self._bisect(p, t, 0.0, MAX_BIAS, self.tol)
        return out


class _AffineFit:
    """Predictions of a suspect's thresholds from the victim's: ``a x + b`` fitted on the pairs seen so
    far (refitted every 8 from the 16th), with a window of ``width`` residual spreads (``first`` before
    the first fit; never under ``floor``)."""

    def __init__(self, first: float, width: float, floor: float) -> None:
        self.first, self.width, self.floor = first, width, floor
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.a, self.b, self.half = 1.0, 0.0, first

    def predict(self, x: float) -> tuple[float, float]:
        """The window's centre and half-width for the victim's threshold ``x``."""
        return self.a * x + self.b, self.half

    def add(self, x: float, y: float) -> float:
        """Record the recovered threshold ``y`` for ``x``; returns ``y``."""
        self.xs.append(x)
        self.ys.append(y)
        n = len(self.xs)
        if n >= 16 and n % 8 == 0:
            m = np.stack([np.asarray(self.xs), np.ones(n)], 1)
            (self.a, self.b), *_ = np.linalg.lstsq(m, np.asarray(self.ys), rcond=None)
            spread = float(np.std(np.asarray(self.ys) - m @ np.array([self.a, self.b])))
            self.half = min(self.first, max(self.floor, self.width * spread))
        return y
