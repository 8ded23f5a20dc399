"""Invisible Entropy (Gu et al. 2025, arXiv 2505.14112): a low-entropy watermark whose detector
needs no copy of the generating model.

Generation adds the green bias only at steps the entropy tagger calls high-entropy (predicted
``H > tau``); detection scores only the text's tokens the tagger calls high-entropy, from the
token ids alone, and by default lets the threshold navigator (:mod:`.navigator`) pick ``tau`` per
text (with a Bonferroni-corrected p-value). The tagger is the package's shipped one unless
``tagger`` names a file written by ``wm tagger train``.

>>> from wmkit.keys import SecretKey
>>> IE(SecretKey.generate()).config()["tagger"]
'causal'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, ClassVar, Iterable

import torch

from ....errors import InputError
from ....params import Spec
from ....stats import Detection, binomial_detection, binomial_pvalues, bonferroni
from ..green_list import GreenListProcessor
from ..detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS
from ..detector import Capabilities
from ..entropy_aware import EntropyAwareDetector, ScoredText, by_token
from ..stream import CHUNK_CHARS
from ..kgw import KGW
from .navigator import navigate
from .tagger import SHIPPED, TAUS, EntropyTagger, load_tagger

__all__ = ["IE", "IEDetector"]


@lru_cache(maxsize=4)
def _tagger(spec: str, tokenizer: Any) -> EntropyTagger:
    if spec in SHIPPED:
        return load_tagger(kind=spec, tokenizer=tokenizer)
    return load_tagger(spec, tokenizer=tokenizer)


@dataclass(frozen=True)
class IE(KGW):
    """Invisible Entropy: KGW on the steps a small tagger predicts to be high-entropy.

    Args:
        key, gamma, delta, context_width, seeding: as :class:`~wmkit.watermark.text.KGW`.
        tau: generation threshold in nats, on the tagger's grid (0.3, 0.6, 0.9, 1.2, 1.5; default 0.9).
        navigate: detection picks tau per text with the threshold navigator (default) or uses ``tau``.
        tagger: ``"causal"`` (the shipped default), ``"paper"`` (the shipped MiniLM tagger), or the
            path of a tagger file.
    """

    tau: float = Spec("generation threshold (nats) on the tagger's grid", choices=TAUS).field(0.9)
    navigate: bool = Spec("detection picks tau per text with the threshold navigator (false: uses tau)").field(True)
    tagger: str = Spec("entropy tagger: causal, paper or a tagger file").field("causal")
    name: ClassVar[str] = "ie"
    capabilities: ClassVar[Capabilities] = Capabilities(streams=True)  # no model, no windowed scan, CPU

    def __post_init__(self) -> None:
        if isinstance(self.tau, (int, float)) and not isinstance(self.tau, bool):  # 0.9000000001 from a JSON round-trip
            object.__setattr__(self, "tau", next((t for t in TAUS if abs(self.tau - t) < 1e-9), self.tau))
        super().__post_init__()

    def load_tagger(self, tokenizer: Any) -> EntropyTagger:
        """The entropy tagger (cached), checked against ``tokenizer``."""
        tagger = _tagger(self.tagger, tokenizer)
        tagger.check_tokenizer(tokenizer)
        return tagger

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> GreenListProcessor:
        """Adds ``delta`` to green logits of the rows whose next step the tagger calls high-entropy."""
        if tokenizer is None:
            raise InputError("ie: the processor needs the tokenizer (the tagger reads its token ids)")
        tagger = self.load_tagger(tokenizer)
        k = tagger.tau_index(self.tau)

        n = tagger.context_tokens

        @torch.no_grad()
        def gate(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            # only the tagger's window is read, on the logits' device when the tagger can run there;
            # a batch's left padding (the leading run of pad ids) is not read, so a row is gated as alone
            tail = input_ids[:, -n:]
            start = leading_padding(input_ids, tokenizer.pad_token_id)
            if start is not None:
                start = (start - (input_ids.shape[1] - tail.shape[1])).clamp(min=0)
            return tagger.runs_on(tail.device).predict_last(tail, start)[:, k].to(scores.device) > 0

        return self.gated_processor(tokenizer, gate)

    def detector(self, tokenizer: Any, fpr: float = DEFAULT_FPR, ignore_repeated_ngrams: bool = True,
                 min_tokens: int = DEFAULT_MIN_TOKENS) -> "IEDetector":
        """A detector that needs only the key, the tokenizer and the tagger (never the model)."""
        return IEDetector(self, tokenizer, fpr, ignore_repeated_ngrams, min_tokens)


def leading_padding(input_ids: torch.Tensor, pad_id: int | None) -> torch.Tensor | None:
    """``[B]``: how many pad ids each row starts with (a left-padded batch), or ``None`` when no row
    starts with one (or there is no pad id).

    >>> leading_padding(torch.tensor([[2, 2, 5, 2], [7, 2, 2, 2]]), 2).tolist()
    [2, 0]
    """
    if pad_id is None or not bool((input_ids[:, 0] == pad_id).any()):
        return None
    return (input_ids == pad_id).to(torch.int32).cumprod(1).sum(1)


def bucket_width(n: int) -> int:
    """``n`` rounded up to a multiple of ``max(8, 2**(floor(log2 n) - 3))``: less than 12.5% padding
    from 64 tokens on and at most 7 below (short documents are most of a corpus), and about 8
    widths per octave, so the tagger's convolution plans are reused rather than cached one per length.

    >>> [bucket_width(n) for n in (7, 44, 64, 65, 257, 4097)]
    [8, 48, 64, 72, 288, 4608]
    """
    step = max(8, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step


class IEDetector(EntropyAwareDetector):
    """Scores the tokens the tagger calls high-entropy; the navigator (or the scheme's ``tau``)
    picks the threshold. ``details`` has ``tau``, ``p_uncorrected``, ``candidates`` and, per
    threshold, the green and scored counts."""

    capabilities: ClassVar[Capabilities] = IE.capabilities

    def __init__(self, scheme: IE, tokenizer: Any, fpr: float, ignore_repeated_ngrams: bool, min_tokens: int):
        super().__init__(scheme, tokenizer, fpr, ignore_repeated_ngrams, min_tokens)
        self.tagger = scheme.load_tagger(tokenizer)

    @torch.no_grad()
    def scored(self, item: ScoredText) -> torch.Tensor:
        """``[n, K]`` bool: token ``t`` is a candidate the tagger calls high-entropy at each threshold."""
        return self.scored_many([item])[0]

    @torch.no_grad()
    def scored_many(self, items: list[ScoredText], batch_tokens: int = 1 << 15) -> list[torch.Tensor]:
        """:meth:`scored` for many items: the tagger runs over length-sorted, right-padded batches of
        about ``batch_tokens`` tokens (its convolutions are causal: padding on the right changes no
        position before it)."""
        out: list[torch.Tensor | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        while order:
            width = len(items[order[0]].ids)
            take = 1
            while take < len(order) and (take + 1) * max(width, len(items[order[take]].ids)) <= batch_tokens:
                width = max(width, len(items[order[take]].ids))
                take += 1
            group, order = order[:take], order[take:]
            width = bucket_width(max(len(items[i].ids) for i in group))
            batch = torch.zeros((len(group), width), dtype=torch.long)
            for r, i in enumerate(group):
                batch[r, : len(items[i].ids)] = items[i].ids
            logits = self.tagger.predict(batch)
            for r, i in enumerate(group):
                n = len(items[i].ids)
                out[i] = by_token(logits[r, :n] > 0) & items[i].candidate.unsqueeze(1)
        return out  # type: ignore[return-value]

    def choose(self, green: list[int], scored: list[int]) -> tuple[int, dict[str, Any]]:
        """The threshold (navigated, or the scheme's ``tau``) from the per-threshold counts, and the
        details that record the choice."""
        scheme: IE = self.scheme  # type: ignore[assignment]
        taus = list(self.tagger.taus)
        if scheme.navigate:
            k, candidates = navigate(taus, green, scored)
        else:
            k, candidates = self.tagger.tau_index(scheme.tau), [scheme.tau]
        per_tau = {str(t): {"green": g, "scored": n} for t, g, n in zip(taus, green, scored)}
        return k, {"tau": taus[k], "candidates": candidates, "per_tau": per_tau}

    @staticmethod
    def corrected(det: Detection) -> Detection:
        """Bonferroni over the thresholds the rule could pick (the uncorrected p stays in the details)."""
        p = bonferroni(det.p_value, len(det.details["candidates"]))
        return dataclasses.replace(det, p_value=p, decision=bool(p <= det.fpr),
                                   details={**det.details, "p_uncorrected": det.p_value})

    def decide(self, items: list[ScoredText], evidence: bool = True) -> list[Detection | InputError]:
        """Navigate (or fix) the threshold, then the exact binomial test at it."""
        chosen = []
        for it, scored in zip(items, self.scored_many(items)):  # scored: candidates only
            green, n = (scored & it.green.unsqueeze(1)).sum(0).tolist(), scored.sum(0).tolist()
            k, details = self.choose(green, n)
            chosen.append((it, scored[:, k], green[k], n[k], details))
        pvals = binomial_pvalues([c[2] for c in chosen], [c[3] for c in chosen], self.scheme.gamma)  # one call
        out: list[Detection | InputError] = []
        for (it, scored, _, _, details), p in zip(chosen, pvals):
            try:
                out.append(self.corrected(self.binomial(it, scored, evidence, p_value=float(p), **details)))
            except InputError as e:
                out.append(e)
        return out

    def detect_stream(self, pieces: Iterable[str] | Callable[[], Iterable[str]], windowed: bool = False,
                      chunk_chars: int = CHUNK_CHARS) -> Detection:
        """:meth:`detect` of the text that ``pieces`` concatenate, in bounded memory
        (:mod:`wmkit.watermark.text.stream`): per-threshold counts summed over chunks, each tagged
        with the tagger's full context; no per-token evidence."""
        if windowed:
            raise InputError("windowed detection is not available for ie")
        n_k = g_k = None
        total = 0
        for it in self.stream_items(pieces, context=self.tagger.context_tokens, chunk_chars=chunk_chars):
            scored = self.scored(it)
            n, g = scored.sum(0), (scored & it.green.unsqueeze(1)).sum(0)
            n_k, g_k = (n, g) if n_k is None else (n_k + n, g_k + g)
            total += len(it.ids) - it.start
        if n_k is None:
            raise self.too_short(0)
        k, details = self.choose(g_k.tolist(), n_k.tolist())
        if int(n_k[k]) < self.min_tokens:
            raise self.too_short(int(n_k[k]))
        det = binomial_detection(self.scheme.name, int(g_k[k]), int(n_k[k]), self.scheme.gamma, self.fpr,
                                 tokens_total=total, **details)
        return self.corrected(det)
