"""The green-list family (KGW, Unigram; the entropy-aware schemes reuse its lists): config, logits
processor and detector.

A scheme is a frozen dataclass: its parameters are validated on construction and round-trip
through JSON (:meth:`GreenListScheme.config` never contains key material). A subclass only says
how the green list is seeded (:meth:`GreenListScheme.seeding_params`): KGW hashes the ``h``
previous tokens, Unigram uses one fixed list (``h = 0``). Everything else -- biasing logits,
scoring tokens, repeated n-grams, statistics -- lives here once.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import numpy as np

import torch
from transformers import LogitsProcessor

from ... import prf
from ...errors import InputError
from ... import dedup, kernels
from ...keys import KeyedConfig, ScopedKey, SecretKey
from ...params import Spec, check_params
from ...stats import DEFAULT_WINDOWS, Detection, binomial_detection, binomial_pvalues, windowed_binomial_detection
from .detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, Capabilities, Detector
from .normalize import normalize_text, profile_text
from .stream import CHUNK_CHARS, ngram_keys, text_chunks

Gate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids [B, L], scores [B, V]) -> [B] bool


def check_wmkit_key(name: str, key: Any, prf_version: Any) -> None:
    """A scheme keyed by a wmkit key file: ``key`` is a :class:`SecretKey` and the config's PRF spec is this one."""
    if not isinstance(key, (SecretKey, ScopedKey)):
        raise InputError(f"{name}: key must be a wmkit.keys.SecretKey (a key file), got {type(key).__name__}")
    check_prf_version(name, prf_version)


def check_prf_version(name: str, version: Any) -> None:
    """Refuse a config made under another PRF spec: text marked under v1 cannot be checked by v2."""
    if version == 1:
        raise InputError(f"{name}: this config uses PRF spec v1, which wmkit withdrew (its 32-bit per-context seed "
                         f"let an attacker recover green lists); text marked under v1 cannot be checked by this version")
    if version != prf.PRF_VERSION:
        raise InputError(f"{name}: unknown prf_version {version!r}; this wmkit implements PRF spec v{prf.PRF_VERSION}")


NULLS = ("gamma", "reference")  # what a green-list detector's p-value assumes (see GreenListScheme.detector)
GAMMA = Spec("green fraction of the vocabulary", low=0.0, high=1.0, open_low=True, open_high=True)
DELTA = Spec("logit bias added to green tokens", low=0.0, high=1e4, open_high=True)
PRF_VERSION = Spec("the PRF spec the config was made under (wmkit.prf; v1 was withdrawn)", choices=(prf.PRF_VERSION,))
SEEDING = Spec("how a context seeds the green list (lefthash: previous tokens; selfhash: min-hash anchored "
               "on the candidate)", choices=prf.SEEDING_SCHEMES)


@dataclass(frozen=True)
class GreenListScheme(KeyedConfig, ABC):
    """Base of the green-list text watermarks (do not instantiate; use a scheme).

    Args:
        key: the secret (never serialized).
        gamma: fraction of the vocabulary that is green, in (0, 1).
        delta: logit bias added to green tokens, >= 0.
    """

    key: SecretKey = field(repr=False)
    gamma: float = GAMMA.field(0.25)
    delta: float = DELTA.field(2.0)
    prf_version: int = PRF_VERSION.field(prf.PRF_VERSION)
    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities] = Capabilities(windowed=True, device=True, streams=True, reference_null=True)  # of its detector

    def __post_init__(self) -> None:
        check_wmkit_key(self.name, self.key, self.prf_version)
        check_params(self)
        h, seeding = self.seeding_params()
        if seeding == "selfhash" and h < 1:
            raise InputError(f"{self.name}: selfhash needs a context width >= 1")

    @abstractmethod
    def seeding_params(self) -> tuple[int, str]:
        """``(h, seeding)``: context width and seeding scheme of the PRF (see :mod:`wmkit.prf`)."""

    def prf_key(self) -> tuple[int, int, int, int]:
        """This scheme's PRF v2 key ``(k0, k1, d0, d1)``, derived from the secret with the scheme's name as label."""
        return self.key.prf_key(f"text/{self.name}")

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> "GreenListProcessor":
        """A batched ``transformers.LogitsProcessor`` that adds ``delta`` to green logits.

        Every text scheme's processor takes the sampler's ``temperature``, ``top_p``, ``top_k`` and
        ``min_p`` (:class:`~wmkit.engine.sampling.Sampling`): a bias is applied before them
        (it ignores them); a scheme that picks the token itself (Gumbel-max) needs them.
        """
        return self.gated_processor(tokenizer, None)

    def gated_processor(self, tokenizer: Any, gate: "Gate | None") -> "GreenListProcessor":
        """The processor, biasing only the rows ``gate(input_ids, scores) -> [B] bool`` lets through
        (the entropy-aware schemes' generation; ``None``: every row)."""
        h, seeding = self.seeding_params()
        vocab = len(tokenizer) if tokenizer is not None else None
        return GreenListProcessor(self.prf_key(), h, seeding, self.gamma, self.delta, vocab, gate)

    def detector(
        self,
        tokenizer: Any,
        fpr: float = DEFAULT_FPR,
        ignore_repeated_ngrams: bool = True,
        min_tokens: int = DEFAULT_MIN_TOKENS,
        null: str = "gamma",
    ) -> "GreenListDetector":
        """A detector that needs only this scheme's key and the tokenizer (never the model).

        ``null="reference"`` (:mod:`wmkit.watermark.text.reference`): per-key calibration -- the
        reference corpora's common coins are not scored (context width >= 1), and the test is against
        this key's own green rate on the rest of the shipped reference corpora where it exceeds ``gamma``.
        """
        return GreenListDetector(self, tokenizer, fpr, ignore_repeated_ngrams, min_tokens, null)


class GreenListProcessor(LogitsProcessor):
    """Adds ``delta`` to the logits of the green tokens of every row, batched (no per-row loop).

    Rows whose context is shorter than the context width are returned unchanged; with a ``gate``,
    so are the rows it returns False for (one row mask into the same kernel).
    """

    def __init__(self, prf_key: tuple[int, ...], h: int, seeding: str, gamma: float, delta: float, vocab_size: int | None = None,
                 gate: "Gate | None" = None):
        self.prf_key, self.h, self.seeding = prf_key, h, seeding
        self.gamma, self.delta, self.vocab_size, self.gate = gamma, delta, vocab_size, gate

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.dim() != 2 or input_ids.dim() != 2 or scores.shape[0] != input_ids.shape[0]:
            raise InputError(
                f"expected input_ids [batch, len] and scores [batch, vocab], got {tuple(input_ids.shape)} and {tuple(scores.shape)}"
            )
        if self.vocab_size is not None and scores.shape[1] < self.vocab_size:
            raise InputError(f"scores have {scores.shape[1]} columns but the tokenizer has {self.vocab_size} tokens (mismatched tokenizer?)")
        if input_ids.shape[1] < self.h:
            return scores
        rows = self.gate(input_ids, scores).to(scores.device) if self.gate is not None else None
        return kernels.green_bias(scores, input_ids, self.prf_key, self.h, self.seeding, self.gamma, self.delta, row_mask=rows)


@dataclass
class ScoredText:
    """One text (or one chunk of a streamed text) prepared for a green-list detector.

    ``ids`` = context tokens + text tokens; ``start`` = index of the first text token; ``green[t]``
    and ``candidate[t]`` (whether token ``t`` may be scored: in the text, with a full context,
    first occurrence of its n-gram) cover every position of ``ids``; ``green`` implies ``candidate``.
    """

    ids: torch.Tensor
    start: int
    green: torch.Tensor
    candidate: torch.Tensor


class GreenCountingDetector(Detector):
    """The scoring strategy of the detectors that count green tokens (green-list and entropy-aware),
    on the one :class:`~wmkit.watermark.text.detector.Detector` base: the PRF's context width and
    seeding, whether repeated coins count once, texts scored as one packed batch, and a text streamed
    in chunks. :meth:`score_ids` is :meth:`detect` on ids (the subclasses batch ``detect_many``)."""

    def __init__(self, scheme: GreenListScheme, tokenizer: Any, fpr: float = DEFAULT_FPR, ignore_repeated_ngrams: bool = True,
                 min_tokens: int = DEFAULT_MIN_TOKENS):
        super().__init__(scheme, tokenizer, fpr, min_tokens)
        self.ignore_repeated_ngrams = ignore_repeated_ngrams
        self.h, self.seeding = scheme.seeding_params()
        self._common: np.ndarray | None = None  # sorted coin keys never scored (the reference null's common coins)

    def score_ids(self, ids: torch.Tensor) -> Detection:
        """The statistic over one item's token ids (:meth:`detect`, which the subclasses batch)."""
        return self.detect(ids)

    @staticmethod
    def pack(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(flat, doc, col, lengths)``: the sequences concatenated (CPU int64), each position's
        sequence index and its index within the sequence -- a batch with no padding to score."""
        lengths = torch.tensor([len(x) for x in seqs], dtype=torch.long)
        flat = (torch.cat([torch.as_tensor(x, dtype=torch.long).cpu() for x in seqs]) if len(seqs)
                else torch.zeros(0, dtype=torch.long))
        doc = torch.repeat_interleave(torch.arange(len(seqs)), lengths)
        col = torch.arange(len(flat)) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        return flat, doc, col, lengths

    def coin_keys(self, ids: torch.Tensor, vocab: int) -> np.ndarray:
        """uint64 ``[len(ids) - h]``: the coin of each position ``h..`` of the 1-D ``ids`` -- the (anchor,
        token) pair for selfhash (:func:`wmkit.prf.repeat_keys`), else the (context, token) n-gram
        (:func:`~wmkit.watermark.text.stream.ngram_keys`: packed, or hashed when it needs more than 64 bits)."""
        pairs = prf.repeat_keys(ids[None], self.scheme.prf_key(), self.h, self.seeding)
        return ngram_keys(ids.numpy(), self.h, vocab) if pairs is None else pairs[0].numpy().astype(np.uint64)

    def coins(self, seqs: Sequence[torch.Tensor], flat: torch.Tensor, doc: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Bool over the packed positions (:meth:`pack`): the position has a full context and is the
        first of its coin in its sequence. A coin is what the PRF colours: the (context, token) n-gram
        for lefthash, the (anchor, token) pair for selfhash (:func:`wmkit.prf.repeat_keys`), so a pair
        repeated under different contexts counts once. Without ``ignore_repeated_ngrams``: every
        position with a full context. One sort of (sequence, coin) keys over the packed batch
        (:func:`wmkit.dedup.first_seen`). With the reference null, a common coin
        (:meth:`ReferenceNull.common_coins`) is never scored."""
        valid = col >= self.h
        vocab = len(self.tokenizer) if self.tokenizer is not None else int(flat.max(initial=0)) + 1 if len(flat) else 1
        wide = self.seeding != "selfhash" and (self.h + 1) * max(1, (vocab - 1).bit_length()) > 64  # n-grams need a sort
        keys = torch.zeros(len(flat), dtype=torch.int64)
        if len(flat) > self.h and (self._common is not None or (self.ignore_repeated_ngrams and not wide)):
            keys[self.h :] = torch.from_numpy(self.coin_keys(flat, vocab).view(np.int64))
        if self._common is not None and len(flat) > self.h:
            valid[self.h :] &= torch.from_numpy(~np.isin(keys[self.h :].numpy().view(np.uint64), self._common))
        if not self.ignore_repeated_ngrams:
            return valid
        if wide:
            ids = torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True)
            lengths = torch.tensor([len(x) for x in seqs])
            return dedup.first_ngram(ids, lengths, self.h)[doc, col] & valid
        return dedup.first_seen(keys, doc, valid)

    def stream_items(self, pieces: Iterable[str] | Callable[[], Iterable[str]], context: int = 0,
                     chunk_chars: int = CHUNK_CHARS) -> Iterator[ScoredText]:
        """The text of ``pieces``, chunk by chunk (:mod:`wmkit.watermark.text.stream`): each item's
        ``ids`` are the last ``max(h, context)`` tokens before the chunk, then the chunk's tokens.
        Candidates are the tokens with a full context whose n-gram the text has not shown before
        (with ``ignore_repeated_ngrams=False``: every token with a full context).

        ``pieces`` may be a function that returns them afresh (a file re-read): a first pass then
        takes the whole text's normalisation profile (:func:`~wmkit.watermark.text.normalize.profile_text`),
        so every chunk is normalised as the whole text is. Pieces read once are normalised chunk by
        chunk, each with its own profile (the same result unless the text's script, flip rate or
        evasion characters change between chunks)."""
        keep, seen = max(self.h, context), dedup.SeenKeys()
        tail = torch.zeros(0, dtype=torch.long)
        vocab = len(self.tokenizer)
        profile = None
        if callable(pieces):
            profile = profile_text(text_chunks(pieces(), chunk_chars))
            pieces = pieces()
        before = ""
        for chunk in text_chunks(pieces, chunk_chars):
            norm = normalize_text(chunk, profile, before)
            before = norm[-64:]
            new = self.tokenize(norm)
            if not len(new):
                continue
            ids, start = torch.cat([tail, new]), len(tail)
            green = kernels.green_positions(ids[None], torch.tensor([len(ids)]), self.scheme.prf_key(), self.h,
                                            self.seeding, self.scheme.gamma)[0]
            lo = max(start, self.h)  # a short first tail holds every token so far: local h is global h
            cand = torch.zeros(len(ids), dtype=torch.bool)
            if lo < len(ids):
                need_keys = self.ignore_repeated_ngrams or self._common is not None
                keys = self.coin_keys(ids[lo - self.h :], vocab) if need_keys else None
                cand[lo:] = torch.from_numpy(seen.first(keys)) if self.ignore_repeated_ngrams else True
                if self._common is not None:
                    cand[lo:] &= torch.from_numpy(~np.isin(keys, self._common))
            yield ScoredText(ids, start, green & cand, cand)
            tail = ids[len(ids) - keep :] if keep else tail


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


class GreenListDetector(GreenCountingDetector):
    """Scores a text's tokens against a scheme's green lists: z and exact binomial p-value.

    Only tokens with a full context are scored (the first ``h`` are not). With
    ``ignore_repeated_ngrams`` each distinct (context, token) n-gram counts once, as in
    Kirchenbauer et al.'s detector: repeated phrases would otherwise inflate z.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(windowed=True, device=True, streams=True, reference_null=True)

    def __init__(self, scheme: GreenListScheme, tokenizer: Any, fpr: float = DEFAULT_FPR, ignore_repeated_ngrams: bool = True,
                 min_tokens: int = DEFAULT_MIN_TOKENS, null: str = "gamma"):
        super().__init__(scheme, tokenizer, fpr, ignore_repeated_ngrams, min_tokens)
        self._key, self._thr = scheme.prf_key(), prf.threshold(scheme.gamma)
        if null not in NULLS:
            raise InputError(f"null must be one of {', '.join(NULLS)}, got {null!r}")
        self.null, self._rates = null, None
        if null == "reference":
            if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
                raise InputError("null='reference' needs the scheme's tokenizer (to tokenize the reference corpora)")
            from .reference import ReferenceNull

            ref = ReferenceNull.load(tokenizer, self.h)
            if self.h >= 1:
                self._common = ref.common_coins(self.seeding, len(tokenizer))
            self._rates = (ref.scored_rates(lambda docs: self._score(docs, "cpu")) if self.seeding == "selfhash"
                           else ref.rates(self._key, self.h, self.seeding, scheme.gamma, self._common, len(tokenizer)))

    def null_rate(self, n_tokens: int | None = None) -> float:
        """The green rate the test assumes: ``gamma``, or with ``null="reference"`` the larger of
        ``gamma`` and this key's rate on each reference genre at the length bucket of ``n_tokens``
        (every bucket when ``None``)."""
        if self._rates is None:
            return self.scheme.gamma
        from .reference import ReferenceNull

        rates = self._rates if n_tokens is None else self._rates[:, ReferenceNull.bucket(n_tokens)]
        return max(self.scheme.gamma, float(rates.max()))

    def _ids(self, item: str | Sequence[int] | torch.Tensor, prompt: str | None) -> torch.Tensor:
        return self.ids_of(item, prompt)

    def detect(self, text: str | Sequence[int] | torch.Tensor, prompt: str | None = None) -> Detection:
        """Detect the mark in a text (or in token ids of the scheme's tokenizer).

        Raises :class:`~wmkit.errors.InputError` if fewer than ``min_tokens`` tokens can be scored.
        """
        (result,) = self.detect_many([text], prompts=[prompt])
        if isinstance(result, InputError):
            raise result
        return result

    def _score_packed(self, seqs: list[torch.Tensor], device: str | torch.device) -> tuple[torch.Tensor, ...]:
        """``(green & scored, scored, doc, col, lengths)`` over the packed batch (:meth:`pack`): the PRF
        runs on real tokens only (one launch on CUDA), never on padding."""
        flat, doc, col, lengths = self.pack(seqs)
        on = flat[None].to(device)
        green = kernels.green_positions(on, torch.tensor([len(flat)], device=on.device), self._key, self.h, self.seeding,
                                        self.scheme.gamma)[0].cpu()
        scored = self.coins(seqs, flat, doc, col)
        return green & scored, scored, doc, col, lengths

    def _score(self, seqs: list[torch.Tensor], device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(green & scored, scored)`` as right-padded ``[S, N]`` bool CPU tensors."""
        green, scored, doc, col, lengths = self._score_packed(seqs, device)
        shape = (len(seqs), int(lengths.max()) if len(seqs) else 0)
        g, s = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
        g[doc, col], s[doc, col] = green, scored
        return g, s

    def _windowed(self, flags: np.ndarray, positions: np.ndarray, ids: np.ndarray, windows: Sequence[int],
                  evidence: dict[str, list] | None = None) -> Detection:
        if len(flags) < self.min_tokens:
            raise self.too_short(len(flags))
        det = windowed_binomial_detection(self.scheme.name, flags, self.null_rate(), self.fpr, windows,
                                          min_window=self.min_tokens)
        d = det.details
        d["token_start"] = int(positions[d["start"]])
        d["token_end"] = int(positions[d["end"] - 1]) + 1
        d["window_ids"] = ids[d["token_start"] : d["token_end"]].tolist()
        d.update(self._null_details())
        return dataclasses.replace(det, evidence=evidence)

    def detect_windowed(self, text: str | Sequence[int] | torch.Tensor, prompt: str | None = None,
                        windows: Sequence[int] = DEFAULT_WINDOWS) -> Detection:
        """Find a marked passage inside a longer text: the most significant window of scored
        tokens, with a Bonferroni-corrected p-value (:func:`wmkit.stats.windowed_binomial_detection`).

        ``details["token_start"]``/``["token_end"]`` locate the window in the text's tokens and
        ``details["window_ids"]`` are its token ids.
        """
        ids = self._ids(text, prompt)
        green, scored = self._score([ids], "cpu")
        positions = torch.nonzero(scored[0]).flatten()
        evidence = {"token_ids": ids.tolist(), "scored": scored[0].tolist(), "green": green[0].tolist()}
        return self._windowed(green[0, positions].numpy(), positions.numpy(), ids.numpy(), windows, evidence)

    def detect_stream(self, pieces: Iterable[str] | Callable[[], Iterable[str]], windowed: bool = False, windows: Sequence[int] = DEFAULT_WINDOWS,
                      chunk_chars: int = CHUNK_CHARS) -> Detection:
        """:meth:`detect` (or :meth:`detect_windowed`) of the text that ``pieces`` concatenate, in
        bounded memory (:mod:`wmkit.watermark.text.stream`); no per-token evidence. Pass a function
        that returns the pieces afresh to normalise exactly as the whole text (:meth:`stream_items`)."""
        n_green = n_scored = total = 0
        flags, positions, ids = [], [], []
        for it in self.stream_items(pieces, chunk_chars=chunk_chars):
            cand, green = it.candidate[it.start :], it.green[it.start :]
            n_scored += int(cand.sum())
            n_green += int(green.sum())
            if windowed:
                pos = torch.nonzero(cand).flatten()
                flags.append(green[pos].numpy())
                positions.append((pos + total).numpy().astype(np.int32))
                ids.append(it.ids[it.start :].numpy().astype(np.int32))
            total += len(it.ids) - it.start
            if windowed and total >= 2**31:
                raise InputError("windowed detection of a stream stops at 2**31 tokens; split the text")
        if windowed:
            return self._windowed(_cat(flags, bool), _cat(positions, np.int32), _cat(ids, np.int32), windows)
        if n_scored < self.min_tokens:
            raise self.too_short(n_scored)
        return binomial_detection(self.scheme.name, n_green, n_scored, self.null_rate(total), self.fpr, tokens_total=total,
                                  **self._null_details())

    def detect_many(
        self, texts: Sequence[str | Sequence[int] | torch.Tensor], prompts: Sequence[str | None] | None = None,
        device: str | torch.device = "cpu", evidence: bool = True,
    ) -> list[Detection | InputError]:
        """Score many texts in one batch (one tokenizer call, one kernel launch on CUDA); an item
        that cannot be scored yields its :class:`~wmkit.errors.InputError` in place of a
        :class:`Detection`. ``evidence=False`` skips the per-token lists (``wm scan``'s fast path)."""
        prompts = list(prompts) if prompts is not None else [None] * len(texts)
        items = self.ids_of_many(texts, prompts)
        seqs = [x for x in items if not isinstance(x, InputError)]
        if not seqs:
            return list(items)  # type: ignore[arg-type]
        green, scored, doc, _, lengths = self._score_packed(seqs, device)
        n_scored = torch.bincount(doc[scored], minlength=len(seqs)).tolist()
        n_green = torch.bincount(doc[green], minlength=len(seqs)).tolist()
        if evidence:
            green_of, scored_of = torch.split(green, lengths.tolist()), torch.split(scored, lengths.tolist())
        nulls = [self.null_rate(len(x)) for x in seqs]
        pvals = np.ones(len(seqs))
        for rate in set(nulls):  # one vectorized tail per null rate (one, or one per length bucket)
            rows = [i for i, r in enumerate(nulls) if r == rate]
            pvals[rows] = binomial_pvalues([n_green[i] for i in rows], [n_scored[i] for i in rows], rate)
        results: list[Detection | InputError] = []
        for i, x in enumerate(seqs):
            if n_scored[i] < self.min_tokens:
                results.append(self.too_short(n_scored[i]))
                continue
            m = len(x)
            ev = {"token_ids": x.tolist(), "scored": scored_of[i].tolist(), "green": green_of[i].tolist()} if evidence else None
            results.append(binomial_detection(
                self.scheme.name, n_green[i], n_scored[i], nulls[i], self.fpr, evidence=ev, p_value=float(pvals[i]),
                tokens_total=m, **self._null_details(),
            ))
        done = iter(results)
        return [x if isinstance(x, InputError) else next(done) for x in items]

    def _null_details(self) -> dict[str, Any]:
        if self._rates is None:
            return {"null": "gamma"}
        return {"null": "reference", "scheme_gamma": self.scheme.gamma,
                "common_coins_excluded": 0 if self._common is None else len(self._common)}
