"""The detector of every sentence-level mark (and of its layered token mark): the text is cut into
sentences (:mod:`.sentences`), embedded, and the scheme's exact test runs over its sentence units;
with an inner token mark, that layer is detected too and the verdict is the Holm combination of
the two p-values (the smaller Holm-adjusted one), so a text keeps its mark under a paraphrase
(the sentence layer) and when pasted into human text (the token layer, windowed)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import torch

from ....errors import InputError
from ....stats import DEFAULT_WINDOWS, Detection, holm, verdict
from ..detector import DEFAULT_FPR, Capabilities, Detector
from ..normalize import normalize_text
from .base import MIN_SENTENCES
from .sentences import split_sentences

__all__ = ["SentenceDetector"]


class SentenceDetector(Detector):
    """Detects a sentence-level mark in a text (or token ids, decoded); see the module docstring."""

    capabilities: ClassVar[Capabilities] = Capabilities(windowed=True)

    def __init__(self, scheme: Any, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = 16, **options: Any):
        super().__init__(scheme, tokenizer, fpr, 1)
        inner = scheme.inner_scheme()
        self.inner = None
        if inner is not None:
            if tokenizer is None:
                raise InputError(f"{scheme.name} with inner={scheme.inner} needs the model's tokenizer to detect its token layer")
            self.inner = inner.detector(tokenizer, fpr=self.fpr, min_tokens=min_tokens, **options)

    def text_of(self, item: Any, prompt: str | None) -> str:
        if not isinstance(item, str):
            if self.tokenizer is None:
                raise InputError("token ids need the model's tokenizer")
            item = self.tokenizer.decode(self.checked_ids(item).tolist(), skip_special_tokens=True)
        text = normalize_text(item)
        if prompt:
            p = normalize_text(prompt)
            if text.startswith(p):
                text = text[len(p):]
        return text

    def units(self, text: str) -> tuple[list[str], Any, Any]:
        """The sentences of ``text`` and the (previous, current) signatures of its units."""
        sentences = split_sentences(text)
        if len(sentences) < MIN_SENTENCES:
            raise InputError(f"too short to score: {len(sentences)} sentence(s); at least {MIN_SENTENCES} are needed")
        labels, _ = self.scheme.signatures(self.scheme.embed(sentences))
        return sentences, labels[:-1], labels[1:]

    def score_ids(self, ids: torch.Tensor) -> Detection:
        return self.detect(ids)

    def detect(self, text: Any, prompt: str | None = None) -> Detection:
        """The sentence layer's exact test; with an inner mark, both layers and their Holm verdict."""
        text = self.text_of(text, prompt)
        sentences, prev, cur = self.units(text)
        det = self.scheme.score(prev, cur, self.fpr)
        det.details["sentences"] = len(sentences)
        return self._layered(det, lambda d: d.detect(text))

    def detect_windowed(self, text: Any, prompt: str | None = None, windows: Sequence[int] = DEFAULT_WINDOWS) -> Detection:
        """Sentence windows: the most significant run of ``w`` consecutive units for each ``w`` in
        ``windows`` read as sentence counts (and the whole text), Bonferroni-corrected over the
        windows scanned; the token layer (if any) windowed as its detector windows."""
        text = self.text_of(text, prompt)
        sentences, prev, cur = self.units(text)
        n = len(cur)
        sizes = sorted({min(n, max(2, int(w) // 25)) for w in windows} | {n})  # token windows read as ~25-token sentences
        best, tests = None, 0
        for w in sizes:
            for s in range(0, n - w + 1, max(1, w // 2)):
                d = self.scheme.score(prev[s:s + w], cur[s:s + w], self.fpr)
                tests += 1
                if best is None or d.p_value < best[0].p_value:
                    best = (d, s, s + w)
        assert best is not None
        det, start, end = best
        p = min(1.0, det.p_value * tests)
        det = dataclasses.replace(det, p_value=p, decision=bool(p <= self.fpr),
                                  details={**det.details, "p_uncorrected": det.p_value, "start_sentence": start + 1,
                                           "end_sentence": end + 1, "n_tests": tests, "sentences": len(sentences)})
        return self._layered(det, lambda d: d.detect_windowed(text, None, windows) if d.capabilities.windowed else d.detect(text))

    def _layered(self, det: Detection, token_layer: Any) -> Detection:
        if self.inner is None:
            return det
        try:
            tok = token_layer(self.inner)
        except InputError as e:
            det.details["token_layer"] = {"error": str(e)}
            return det
        adj = holm([det.p_value, tok.p_value])
        p = min(adj)
        sentence = {"p_value": det.p_value, "statistic": det.statistic, "n_scored": det.n_scored, **det.details}
        return Detection(method=f"{self.scheme.name}+{self.inner.scheme.name}", n_scored=det.n_scored, statistic=det.statistic,
                         p_value=p, fpr=self.fpr, decision=verdict(p, self.fpr) == "watermarked",
                         details={"sentence_layer": sentence, "token_layer": {"p_value": tok.p_value, "statistic": tok.statistic,
                                                                              "n_scored": tok.n_scored},
                                  "holm": {"sentence": adj[0], "token": adj[1]}})
