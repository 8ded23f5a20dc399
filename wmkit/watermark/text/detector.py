"""The one detector contract of every text scheme, and the one base (:class:`Detector`) every text detector builds on.

A detector (``scheme.detector(tokenizer, fpr=..., ...)``) has

- ``detect(text_or_ids, prompt=None) -> Detection`` (an :class:`~wmkit.errors.InputError` if the
  item cannot be scored), ``detect_many(items, prompts=None) -> list[Detection | InputError]``
  (one item's failure never costs another's result) and ``detect_windowed(item, prompt=None, windows=...)``;
- ``capabilities``: what it can do and needs, which callers (``wm detect``) ask instead of
  matching scheme names.

``prompt`` is the prompt the text continues. Schemes whose context includes the prompt (the
entropy-aware ones) score the text's first tokens in its context; the others strip it if the text
starts with it, so a text given with or without its prompt scores the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import torch

from ...errors import InputError
from ...stats import DEFAULT_WINDOWS, TEXT_FPR, Detection, check_fpr
from .normalize import normalize_text

__all__ = ["Capabilities", "TextDetector", "Detector", "normalize_text", "DEFAULT_FPR",
           "DEFAULT_MIN_TOKENS", "DEFAULT_NULL", "resolve_null", "verdict_detector"]

DEFAULT_FPR = TEXT_FPR  # every text detector and `wm detect` (see the FPR policy in wmkit.stats)
DEFAULT_MIN_TOKENS = 16
DEFAULT_NULL = "reference"  # the null of every verdict a green-list scheme gives (wm detect, scan, evidence, profiles)

Item = str | Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class Capabilities:
    """What a detector needs and supports.

    Attributes:
        needs_model: detection runs the generating model (``detector(..., model=lm)``).
        windowed: ``detect_windowed`` finds and locates a marked passage in a longer text.
        device: ``detect_many(..., device="cuda")`` scores a batch on a GPU.
        streams: ``detect_stream(pieces, windowed=...)`` scores a text of any length in bounded
            memory (:mod:`wmkit.watermark.text.stream`), with the result ``detect`` gives.
        reference_null: ``detector(..., null="reference")`` tests against the key's own green rate
            on the shipped reference corpora (:mod:`wmkit.watermark.text.reference`).
    """

    needs_model: bool = False
    windowed: bool = False
    device: bool = False
    streams: bool = False
    reference_null: bool = False


def resolve_null(capabilities: Capabilities, null: str | None) -> str:
    """The null a verdict uses: ``null`` checked against what the detector offers, or by default
    :data:`DEFAULT_NULL` for the green-list schemes (the key's own green rate: a fixed key's plain
    test can flag several times its nominal FPR on natural text) and ``"exact"`` for the others
    (their p-value is exact for the key's pseudorandom draws and has no per-key choice)."""
    if capabilities.reference_null:
        if null is None:
            return DEFAULT_NULL
        if null not in ("gamma", "reference"):
            raise InputError(f"--null must be gamma or reference, got {null!r}")
        return null
    if null not in (None, "exact"):
        raise InputError(f"--null {null} applies to the green-list schemes (kgw, unigram); this scheme's null is its exact test")
    return "exact"


def verdict_detector(scheme: Any, tokenizer: Any, null: str | None = None, **options: Any) -> Any:
    """``scheme.detector(tokenizer, **options)`` with the null a verdict uses (:func:`resolve_null`):
    the one way every command that gives a verdict builds its detector. Its ``null`` attribute names it."""
    name = resolve_null(scheme.capabilities, null)
    if scheme.capabilities.reference_null:
        options["null"] = name
    return scheme.detector(tokenizer, **options)


@runtime_checkable
class TextDetector(Protocol):
    """The protocol every text scheme's detector satisfies."""

    capabilities: ClassVar[Capabilities]

    def detect(self, text: Item, prompt: str | None = None) -> Detection: ...

    def detect_many(self, texts: Sequence[Item], prompts: Sequence[str | None] | None = None) -> list[Detection | InputError]: ...

    def detect_windowed(self, text: Item, prompt: str | None = None,
                        windows: Sequence[int] = DEFAULT_WINDOWS) -> Detection: ...


def _tensors(items: Sequence[Sequence[int] | torch.Tensor]) -> list[torch.Tensor]:
    """Each item as a 1-D int64 tensor; lists of ints are converted in one call (views of one tensor),
    which costs a fraction of one conversion per item on batches of many short texts."""
    if all(isinstance(x, (list, tuple)) for x in items):
        try:
            flat = torch.tensor([t for x in items for t in x], dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):  # nested or odd items: one at a time below
            pass
        else:
            if flat.dim() == 1:
                return list(torch.split(flat, [len(x) for x in items]))
    return [torch.as_tensor(x, dtype=torch.long).flatten() for x in items]


class Detector(ABC):
    """The one base of every text detector: what each validates and shares (the FPR, the fewest
    scorable tokens, token ids checked against the tokenizer, text normalised and tokenized one
    way), and the template of :class:`TextDetector` (after vLLM's detector): tokenize, then
    :meth:`score_ids`, the scoring strategy a scheme's detector supplies -- green-list counting
    (:mod:`~wmkit.watermark.text.green_list`, also under the entropy-aware schemes), the Gumbel
    family's scores (:mod:`~wmkit.watermark.text.gumbel_family`), SynthID's g-values, EXP-edit's
    alignment. Detectors that batch (green-list) override :meth:`detect_many`."""

    capabilities: ClassVar[Capabilities] = Capabilities()
    null: str = "exact"  # what the p-value assumes of unmarked text (green-list detectors: gamma or reference)

    def __init__(self, scheme: Any, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = DEFAULT_MIN_TOKENS):
        self.scheme, self.tokenizer = scheme, tokenizer
        try:
            self.fpr = check_fpr(fpr)
        except ValueError as e:
            raise InputError(str(e)) from None
        if not isinstance(min_tokens, int) or min_tokens < 1:
            raise InputError(f"min_tokens must be an integer >= 1, got {min_tokens!r}")
        self.min_tokens = min_tokens

    def checked_ids(self, item: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """``item`` as a 1-D id tensor; an :class:`InputError` if an id is outside the tokenizer."""
        ids = torch.as_tensor(item, dtype=torch.long).flatten()
        vocab = len(self.tokenizer) if self.tokenizer is not None else None
        if ids.numel() and (int(ids.min()) < 0 or (vocab is not None and int(ids.max()) >= vocab)):
            raise InputError(f"token ids out of range for a {vocab}-token tokenizer (mismatched tokenizer?)")
        return ids

    def token_ids(self, text: str, prompt: str | None = None) -> torch.Tensor:
        """Normalize ``text``, strip ``prompt`` if the text starts with it, and tokenize."""
        text = normalize_text(text)
        return self.tokenize(text, prompt)

    def tokenize(self, text: str, prompt: str | None = None) -> torch.Tensor:
        """Token ids of an already normalised ``text`` (``prompt`` stripped, normalised here)."""
        if prompt:
            p = normalize_text(prompt)
            if text.startswith(p):
                text = text[len(p):]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def ids_of(self, item: Item, prompt: str | None = None) -> torch.Tensor:
        """Token ids of a text (see :meth:`token_ids`) or checked ids."""
        return self.token_ids(item, prompt) if isinstance(item, str) else self.checked_ids(item)

    def ids_of_many(self, items: Sequence[Item], prompts: Sequence[str | None]) -> list[torch.Tensor | InputError]:
        """:meth:`ids_of` for many items, an item that cannot be read yielding its :class:`InputError`.
        Texts without a prompt go through one batch call of the tokenizer (a fast tokenizer encodes
        the batch in parallel, in Rust); token-id items are range-checked in one pass."""
        out: list[torch.Tensor | InputError | None] = [None] * len(items)
        batch = [i for i, (x, p) in enumerate(zip(items, prompts, strict=True)) if isinstance(x, str) and not p]
        if len(batch) > 1:
            enc = self.tokenizer([normalize_text(items[i]) for i in batch], add_special_tokens=False)["input_ids"]
            for i, ids in zip(batch, _tensors(enc)):
                out[i] = ids
        given = [i for i, x in enumerate(items) if not isinstance(x, str)]
        if given:
            seqs = _tensors([items[i] for i in given])
            vocab = len(self.tokenizer) if self.tokenizer is not None else None
            flat = torch.cat(seqs)
            bad = flat < 0 if vocab is None else (flat < 0) | (flat >= vocab)
            doc = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor([len(x) for x in seqs]))
            wrong = set(doc[bad].tolist())
            for j, i in enumerate(given):
                out[i] = (InputError(f"token ids out of range for a {vocab}-token tokenizer (mismatched tokenizer?)")
                          if j in wrong else seqs[j])
        for i, x in enumerate(out):
            if x is None:
                try:
                    out[i] = self.ids_of(items[i], prompts[i])
                except InputError as e:
                    out[i] = e
        return out  # type: ignore[return-value]

    def too_short(self, n: int) -> InputError:
        """The error for a text with fewer than ``min_tokens`` scorable tokens."""
        return InputError(f"only {n} token(s) can be scored; at least {self.min_tokens} are needed")

    def detect_windowed(self, text: Item, prompt: str | None = None,
                        windows: Sequence[int] = DEFAULT_WINDOWS) -> Detection:
        """Locate a marked passage; only detectors whose ``capabilities.windowed`` is set implement it."""
        raise InputError(f"windowed detection is not available for {getattr(self.scheme, 'name', 'this scheme')}")

    @abstractmethod
    def score_ids(self, ids: torch.Tensor) -> Detection:
        """The scheme's statistic over one item's token ids (raises :meth:`too_short` errors)."""

    def detect(self, text: Item, prompt: str | None = None) -> Detection:
        """Detect the mark in one text (or token ids); an :class:`InputError` if it cannot be scored."""
        return self.score_ids(self.ids_of(text, prompt))

    def detect_many(self, texts: Sequence[Item], prompts: Sequence[str | None] | None = None) -> list[Detection | InputError]:
        """Detect each item; an item that cannot be scored yields its :class:`InputError`."""
        return each(self.detect, texts, prompts)


def each(fn: Any, texts: Sequence[Item], prompts: Sequence[str | None] | None = None) -> list[Detection | InputError]:
    """``fn(text, prompt)`` for each item (``detect``, ``detect_windowed``): an item that cannot be
    scored yields its :class:`InputError`, never costing another item its result."""
    prompts = list(prompts) if prompts is not None else [None] * len(texts)
    out: list[Detection | InputError] = []
    for t, p in zip(texts, prompts, strict=True):
        try:
            out.append(fn(t, p))
        except InputError as e:
            out.append(e)
    return out
