"""Green-list kernels and their dispatch: Triton on CUDA tensors, torch elsewhere.

Generation: :func:`green_bias` adds ``delta`` to the green logits of every row, one call for the
whole batch. Detection: :func:`green_positions` flags the green tokens of a padded batch of
sequences (which repeats count once is :mod:`wmkit.dedup`'s business). They know
no scheme: they take tensors, a PRF key and the PRF's parameters (:mod:`wmkit.prf` is the spec).

On CUDA the fused Triton kernels of :mod:`wmkit.kernels.triton_green` run. On the CPU, float32
generation runs the C kernel of :mod:`wmkit.kernels.native` (built on first use with the system
compiler; ``WMKIT_NATIVE=0`` turns it off); other dtypes, and machines without a compiler, go
through ``torch.compile`` (inductor fuses PRF, comparison and add into one loop); where
compilation is unavailable, or ``WMKIT_COMPILE=0``, the eager reference runs. Detection batches
of ``COMPILE_MIN_TOKENS`` or more go through ``torch.compile`` too. All paths give the same bits;
``tests/test_kernels.py`` checks it (Triton under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

from .. import prf
from . import native

__all__ = [
    "green_bias",
    "green_bias_reference",
    "green_positions",
    "green_positions_reference",
    "compile_enabled",
    "triton_available",
]


def _bias(scores: torch.Tensor, window: torch.Tensor, key: torch.Tensor, groups: torch.Tensor, active: torch.Tensor | None,
          thr: int, delta: float, selfhash: bool) -> torch.Tensor:
    k = (key[0], key[1], key[2], key[3])
    v = scores.shape[-1]
    vocab_words = prf.selfhash_vocab_words if selfhash else prf.lefthash_vocab_words
    words = vocab_words(window, v, k, groups)
    green = words < thr
    if active is not None:
        green = green & active.unsqueeze(-1)
    return torch.where(green, scores + delta, scores)


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}
_COMPILE_FAILED: set[tuple] = set()  # (graph name, *variant) that failed to compile
RECOMPILE_LIMIT = 64  # one graph per (h, seeding, mask or not); set only around our own calls


def compile_enabled() -> bool:
    """Whether the CPU path may use ``torch.compile`` (``WMKIT_COMPILE=0`` turns it off)."""
    return os.environ.get("WMKIT_COMPILE", "1") != "0"


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (they run on CUDA, or anywhere when interpreted)."""
    try:
        from . import triton_green  # noqa: F401
    except Exception:  # no triton, or a triton that cannot load here
        return False
    return True


def _checked(scores: torch.Tensor, input_ids: torch.Tensor, key: prf.Key, h: int, seeding: str,
             row_mask: torch.Tensor | None) -> None:
    prf.check_key(key)
    if seeding not in prf.SEEDING_SCHEMES:
        raise ValueError(f"unknown seeding scheme {seeding!r}; expected one of {prf.SEEDING_SCHEMES}")
    if scores.dim() != 2 or input_ids.dim() != 2 or scores.shape[0] != input_ids.shape[0]:
        raise ValueError(f"expected scores [B, V] and input_ids [B, L], got {tuple(scores.shape)} and {tuple(input_ids.shape)}")
    if input_ids.shape[1] < h:
        raise ValueError(f"input_ids has {input_ids.shape[1]} columns; the context width is {h}")
    if row_mask is not None and row_mask.shape != (scores.shape[0],):
        raise ValueError(f"row_mask must have shape [{scores.shape[0]}], got {tuple(row_mask.shape)}")


def _inputs(input_ids: torch.Tensor, key: prf.Key, h: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    window = input_ids[:, input_ids.shape[1] - h :] if h else input_ids[:, :0]
    dev = input_ids.device
    return window.to(torch.int64), torch.tensor(key, dtype=torch.int64, device=dev), prf.vocab_groups(vocab, dev)


def green_bias_reference(
    scores: torch.Tensor, input_ids: torch.Tensor, key: prf.Key, h: int, seeding: str, gamma: float,
    delta: float, row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The eager torch reference of :func:`green_bias` (returns a new tensor)."""
    _checked(scores, input_ids, key, h, seeding, row_mask)
    active = row_mask.bool() if row_mask is not None else None
    return _bias(scores, *_inputs(input_ids, key, h, scores.shape[-1]), active, prf.threshold(gamma), float(delta),
                 seeding == "selfhash")


def green_bias(
    scores: torch.Tensor, input_ids: torch.Tensor, key: prf.Key, h: int, seeding: str, gamma: float,
    delta: float, row_mask: torch.Tensor | None = None, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Add ``delta`` to the green logits of each row of ``scores[B, V]`` given ``input_ids[B, L]``.

    Args:
        scores: logits, float32/16 or bfloat16, contiguous along the vocabulary.
        input_ids: the tokens so far; the last ``h`` of each row are its context (``L >= h``).
        key: the PRF v2 key ``(k0, k1, d0, d1)``.
        h, seeding, gamma: the PRF's context width, seeding scheme and green fraction.
        delta: the bias.
        row_mask: optional ``[B]`` bool; rows where it is False are left unchanged.
        out: where to write; ``out=scores`` works in place. Default: a new tensor.
    """
    _checked(scores, input_ids, key, h, seeding, row_mask)
    if scores.is_cuda and scores.dtype == torch.float32 and triton_available():
        from .triton_green import green_bias_triton

        return green_bias_triton(scores, input_ids, key, h, seeding, gamma, delta, row_mask, out)
    if native.accepts(scores, out, h, seeding) and native.available():
        return native.green_bias_native(scores, input_ids, key, h, seeding, gamma, delta, row_mask, out)
    window, k, groups = _inputs(input_ids, key, h, scores.shape[-1])
    active = row_mask.bool() if row_mask is not None else None
    args = (scores, window, k, groups, active, prf.threshold(gamma), float(delta), seeding == "selfhash")
    result = _maybe_compiled("bias", _bias, (h, seeding == "selfhash", active is not None), scores.device, *args)
    if out is not None:
        return out.copy_(result)
    return result


def _maybe_compiled(name: str, fn: Callable[..., torch.Tensor], variant: tuple, device: torch.device,
                    *args: object) -> torch.Tensor:
    """``fn(*args)``, through ``torch.compile`` on the CPU (one graph per ``variant``: context width,
    seeding, ...); eager when compilation is off, or failed once for this variant (the eager path is
    exact too)."""
    if compile_enabled() and device.type == "cpu" and (name, *variant) not in _COMPILE_FAILED:
        compiled = _COMPILED.get(name)
        if compiled is None:
            compiled = _COMPILED[name] = torch.compile(fn, dynamic=True)
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return compiled(*args)
        except Exception as e:  # no compiler, unsupported platform
            _COMPILE_FAILED.add((name, *variant))
            warnings.warn(f"torch.compile unavailable for {name} {variant} ({type(e).__name__}); using eager torch",
                          stacklevel=3)
    return fn(*args)


def _positions(ids: torch.Tensor, key: torch.Tensor, thr: torch.Tensor, h: int, selfhash: bool) -> torch.Tensor:
    """Green flags of positions ``h..`` of ``ids [S, N]`` (the key and threshold as tensors: one graph for every key)."""
    return prf.position_u32(ids, (key[0], key[1], key[2], key[3]), h, "selfhash" if selfhash else "lefthash") < thr


COMPILE_MIN_TOKENS = 1 << 16  # detection compiles its PRF only for batches this large (compiling takes ~15 s once)


def green_positions_reference(
    ids: torch.Tensor, lengths: torch.Tensor, key: prf.Key, h: int, seeding: str, gamma: float
) -> torch.Tensor:
    """Torch reference of :func:`green_positions`."""
    s, n = ids.shape
    green = torch.zeros((s, n), dtype=torch.bool, device=ids.device)
    if n > h:
        k = torch.tensor(key, dtype=torch.int64, device=ids.device)
        thr = torch.tensor(prf.threshold(gamma), dtype=torch.int64, device=ids.device)
        args = (ids.to(torch.int64), k, thr, h, seeding == "selfhash")
        green[:, h:] = (_maybe_compiled("positions", _positions, (h, seeding == "selfhash"), ids.device, *args)
                        if ids.numel() >= COMPILE_MIN_TOKENS else _positions(*args))
    return green & (torch.arange(n, device=ids.device) < lengths.unsqueeze(1))


def green_positions(
    ids: torch.Tensor, lengths: torch.Tensor, key: prf.Key, h: int, seeding: str, gamma: float
) -> torch.Tensor:
    """``[S, N]`` bool: is token ``ids[s, i]`` green after its ``h`` predecessors?

    ``ids`` is a right-padded batch of sequences with ``lengths[s]`` real tokens each; positions
    ``i < h`` and padding are False.
    """
    if seeding not in prf.SEEDING_SCHEMES:
        raise ValueError(f"unknown seeding scheme {seeding!r}; expected one of {prf.SEEDING_SCHEMES}")
    if ids.is_cuda and triton_available():
        from .triton_green import green_positions_triton

        return green_positions_triton(ids, lengths.to(torch.int64), key, h, seeding, gamma)
    return green_positions_reference(ids, lengths, key, h, seeding, gamma)
