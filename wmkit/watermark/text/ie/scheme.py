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
from typing import Any, ClassVar

import torch

from ....errors import InputError
from ....params import Spec
from ....stats import Detection, bonferroni
from ..base import GreenListProcessor
from ..detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS
from ..detector import Capabilities
from ..entropy import EntropyAwareDetector, ScoredText, by_token
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
    capabilities: ClassVar[Capabilities] = Capabilities()  # no model, no windowed scan, CPU

    def __post_init__(self) -> None:
        if isinstance(self.tau, (int, float)) and not isinstance(self.tau, bool):  # 0.9000000001 from a JSON round-trip
            object.__setattr__(self, "tau", next((t for t in TAUS if abs(self.tau - t) < 1e-9), self.tau))
        super().__post_init__()

    def load_tagger(self, tokenizer: Any) -> EntropyTagger:
        """The entropy tagger (cached), checked against ``tokenizer``."""
        tagger = _tagger(self.tagger, tokenizer)
        tagger.check_tokenizer(tokenizer)
        return tagger

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0) -> GreenListProcessor:
        """Adds ``delta`` to green logits of the rows whose next step the tagger calls high-entropy."""
        if tokenizer is None:
            raise InputError("ie: the processor needs the tokenizer (the tagger reads its token ids)")
        tagger = self.load_tagger(tokenizer)
        k = tagger.tau_index(self.tau)

        n = tagger.context_tokens

        @torch.no_grad()
        def gate(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            # only the tagger's window is read, on the logits' device when the tagger can run there
            tail = input_ids[:, -n:]
            return tagger.runs_on(tail.device).predict_last(tail)[:, k].to(scores.device) > 0

        return self.gated_processor(tokenizer, gate)

    def detector(self, tokenizer: Any, fpr: float = DEFAULT_FPR, ignore_repeated_ngrams: bool = True,
                 min_tokens: int = DEFAULT_MIN_TOKENS) -> "IEDetector":
        """A detector that needs only the key, the tokenizer and the tagger (never the model)."""
        return IEDetector(self, tokenizer, fpr, ignore_repeated_ngrams, min_tokens)


class IEDetector(EntropyAwareDetector):
    """Scores the tokens the tagger calls high-entropy; the navigator (or the scheme's ``tau``)
    picks the threshold. ``details`` has ``tau``, ``p_uncorrected``, ``candidates`` and, per
    threshold, the green and scored counts."""

    def __init__(self, scheme: IE, tokenizer: Any, fpr: float, ignore_repeated_ngrams: bool, min_tokens: int):
        super().__init__(scheme, tokenizer, fpr, ignore_repeated_ngrams, min_tokens)
        self.tagger = scheme.load_tagger(tokenizer)

    @torch.no_grad()
    def high_entropy(self, items: list[ScoredText]) -> list[torch.Tensor]:
        """``[n, K]`` bool per item: the tagger calls token ``t`` high-entropy at each threshold."""
        out = []
        for it in items:
            logits = self.tagger.predict(it.ids.unsqueeze(0))[0]
            out.append(by_token(logits > 0))
        return out

    def decide(self, items: list[ScoredText]) -> list[Detection | InputError]:
        """Navigate (or fix) the threshold, then the exact binomial test at it."""
        scheme: IE = self.scheme  # type: ignore[assignment]
        taus = list(self.tagger.taus)
        out: list[Detection | InputError] = []
        for it, high in zip(items, self.high_entropy(items)):
            scored = high & it.candidate.unsqueeze(1)
            n_k = scored.sum(0).tolist()
            g_k = (scored & it.green.unsqueeze(1)).sum(0).tolist()
            if scheme.navigate:
                k, candidates = navigate(taus, g_k, n_k)
            else:
                k, candidates = self.tagger.tau_index(scheme.tau), [scheme.tau]
            per_tau = {str(t): {"green": g, "scored": n} for t, g, n in zip(taus, g_k, n_k)}
            try:
                det = self.binomial(it, scored[:, k], tau=taus[k], candidates=candidates, per_tau=per_tau)
            except InputError as e:
                out.append(e)
                continue
            p = bonferroni(det.p_value, len(candidates))
            out.append(dataclasses.replace(det, p_value=p, decision=bool(p <= det.fpr),
                                           details={**det.details, "p_uncorrected": det.p_value}))
        return out
