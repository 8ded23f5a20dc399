"""Passive text-only fingerprints: is a suspect that shows only sampled text derived from our model?

For a model that was never fingerprinted (nothing fine-tuned in) and a suspect that answers with
sampled text only. The suspect completes ``n`` keyed natural-text prompts (built from the protected
model as :mod:`.invasive` builds its pairs' prompts, under their own label); each completion ``y_i``
of prompt ``x_i`` is scored by a log-likelihood ratio,

    ``s_i = log p_V(y_i | x_i) - max_j log p_Rj(y_i | x_i)``,

``V`` the protected model and ``R_1..R_m`` *reference* models: public models the suspect could have
been built from instead of ours (the base we fine-tuned from, another open model). Each model scores
the completion as a string in its own tokenization (``log p(x + y) - log p(x)``), so references may
have any vocabulary.

**Null** (stated as a property of the suspect, not of a zoo): the suspect's sampling distribution
``U`` is at least as close, in KL divergence, to some reference as to the protected model. Since
``E_U[log p_V(y) - log p_R(y)] = KL(U || R) - KL(U || V)``, the null gives ``E[s_i] <= 0``, and the
verdict is the one-sided one-sample t-test of ``mean s_i > 0`` (:func:`wmkit.stats.mean_t_detection`;
the queries are independent). A model derived from ``V`` samples text that ``V`` explains better than
the references do (``E[s] = KL(U||R) - KL(U||V) > 0`` when ``U`` is near ``V``).

What it cannot do: tell ``V`` from a model that is closer to ``V`` than to every reference without
being derived from it; the references decide what "unrelated" means, so choose ones a copier
could plausibly have used. ``benchmarks/fingerprint_text.py --passive`` measures the power per
derivative and the null's margin on the unrelated models of the zoo.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..keys import SecretKey
from ..stats import Detection, check_fpr, mean_t_detection
from .invasive import PROMPT_TOKENS, TextAccess, _keyed_texts
from .verify import DEFAULT_FPR, FingerprintReport

LABEL = "fingerprint/passive"
DEFAULT_PROMPTS = 64
COMPLETION_TOKENS = 32
TEMPERATURE = 1.0
MAX_SCORED_TOKENS = 2048  # a suspect that ignores max_tokens gets a one-line refusal, not a forward pass of any length


def passive_prompts(model: Any, tok: Any, key: SecretKey, n: int = DEFAULT_PROMPTS) -> list[str]:
    """The ``n`` keyed prompts of ``key`` (natural text sampled from ``model``; the first ``m`` of ``n`` are the ``m``)."""
    if not 2 <= n <= 4096:
        raise InputError(f"the passive test asks 2..4096 prompts, got {n}")
    return _keyed_texts(model, tok, key, LABEL, n, PROMPT_TOKENS)[0][:n]


@dataclass
class Scorer:
    """A model that scores text: ``logprob(prompt, completion)`` is ``log p(completion | prompt)`` in nats.

    Attributes:
        model: a transformers causal LM.
        tok: its tokenizer.
        name: how reports name it.
    """

    model: Any
    tok: Any
    name: str = "model"

    def _sums(self, segments: list[tuple[list[int], int]], batch: int = 8) -> list[float]:
        """Per ``(ids, start)``: the summed log-probability of ``ids[start:]`` given ``ids[:start]``. Runs
        ``batch`` sequences of similar length at a time (right-padded, masked: a causal model's positions
        before the padding do not see it); each token's log-probability is its logit less the
        log-sum-exp of its row, summed in float64."""
        import torch

        out = [0.0] * len(segments)
        order = sorted(range(len(segments)), key=lambda i: len(segments[i][0]))
        for j in range(0, len(order), batch):
            part = [i for i in order[j : j + batch] if segments[i][1] < len(segments[i][0])]
            if not part:
                continue
            width = max(len(segments[i][0]) for i in part)
            ids = torch.zeros((len(part), width), dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for r, i in enumerate(part):
                ids[r, : len(segments[i][0])] = torch.tensor(segments[i][0])
                mask[r, : len(segments[i][0])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device)).logits
                logits = logits[:, :-1].float()
                lp = (logits.gather(-1, ids[:, 1:, None].to(logits.device))[..., 0] - torch.logsumexp(logits, -1)).double().cpu()
            for r, i in enumerate(part):
                seq, start = segments[i]
                out[i] = float(lp[r, max(start, 1) - 1 : len(seq) - 1].sum())
        return out

    def logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """``log p(prompt + completion) - log p(prompt)`` per pair (one scored sequence when the prompt's
        tokens are a prefix of the whole's, two otherwise), batched."""
        segments: list[tuple[list[int], int]] = []
        plan: list[tuple[int, int | None]] = []  # per pair: the whole's segment, and the prompt's when it is separate
        for prompt, completion in zip(prompts, completions):
            whole = list(self.tok(prompt + completion).input_ids)
            head = list(self.tok(prompt).input_ids)
            if len(whole) > MAX_SCORED_TOKENS:
                raise InputError(f"a prompt and completion of {len(whole)} tokens ({self.name}'s tokenizer), over "
                                 f"{MAX_SCORED_TOKENS}: the suspect answered far more than it was asked for")
            if whole[:len(head)] == head:
                plan.append((len(segments), None))
                segments.append((whole, len(head)))
            else:
                plan.append((len(segments), len(segments) + 1))
                segments += [(whole, 1), (head, 1)]
        sums = self._sums(segments)
        return np.array([sums[w] - (sums[h] if h is not None else 0.0) for w, h in plan])

    def logprob(self, prompt: str, completion: str) -> float:
        """:meth:`logprobs` of one pair."""
        return float(self.logprobs([prompt], [completion])[0])


def _completion_ids(tok: Any, prompt: str, completion: str) -> list[int]:
    """The tokens of ``completion`` after ``prompt`` (as the protected model's tokenizer splits the whole)."""
    whole, head = list(tok(prompt + completion).input_ids), list(tok(prompt).input_ids)
    if whole[:len(head)] == head:
        return whole[len(head):]
    return list(tok(completion, add_special_tokens=False).input_ids)


class UnigramScorer:
    """A reference that knows only token frequencies: ``log p`` of a completion is the sum of its tokens'
    log-frequencies (add-1/2 smoothing) in public text split by the protected model's tokenizer: the
    shipped reference corpora (news, reviews, code) by default, or ``texts``. With ``uniform=True``
    every token has probability ``1 / vocabulary`` instead (the reference that explains noise)."""

    def __init__(self, tok: Any, vocab: int, texts: Sequence[str] | None = None, uniform: bool = False) -> None:
        self.tok, self.name = tok, "uniform" if uniform else "unigram"
        if uniform:
            self.logp = np.full(vocab, -np.log(vocab))
            return
        if texts is None:
            from ..watermark.text.reference import reference_texts

            texts = [t for g in ("news", "reviews", "code") for t in reference_texts(g)]
        counts = np.full(vocab, 0.5)
        for t in texts:
            ids = np.asarray(tok(t, add_special_tokens=False).input_ids, dtype=np.int64)
            np.add.at(counts, ids[ids < vocab], 1.0)
        self.logp = np.log(counts / counts.sum())

    def logprob(self, prompt: str, completion: str) -> float:
        """The completion's summed token log-frequency."""
        ids = np.asarray(_completion_ids(self.tok, prompt, completion), dtype=np.int64)
        return float(self.logp[ids[ids < len(self.logp)]].sum())

    def logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """:meth:`logprob` per pair."""
        return np.array([self.logprob(p, c) for p, c in zip(prompts, completions)])


def builtin_references(model: Any, tok: Any) -> list[UnigramScorer]:
    """The references every passive test includes: a uniform and a unigram model over the protected
    model's vocabulary (they absorb noise and word-salad that only shares its tokenizer)."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    return [UnigramScorer(tok, vocab, uniform=True), UnigramScorer(tok, vocab)]


def passive_scores(protected: Scorer, references: Sequence[Any], prompts: Sequence[str],
                   completions: Sequence[str]) -> np.ndarray:
    """Per completion: ``s_i`` (see the module docstring)."""
    if not references:
        raise InputError("the passive test needs at least one reference model (--reference)")
    if len(prompts) != len(completions):
        raise InputError(f"{len(prompts)} prompts but {len(completions)} completions")
    own = protected.logprobs(prompts, completions)
    ref = np.array([r.logprobs(prompts, completions) for r in references])
    return own - ref.max(axis=0)


def score_completions(protected: Scorer, references: Sequence[Any], prompts: Sequence[str], completions: Sequence[str],
                      fpr: float = DEFAULT_FPR, **details: Any) -> Detection:
    """The t-test of ``mean s_i > 0`` on recorded completions (``evidence["scores"]``: the ``s_i``)."""
    s = passive_scores(protected, references, prompts, completions)
    det = mean_t_detection("fingerprint-text-passive", s, fpr, references=[r.name for r in references],
                           empty=int(sum(not c.strip() for c in completions)),
                           green=int(np.sum(s > 0)), **details)  # green: what the reports print as "contained"
    return replace(det, evidence={"scores": [float(x) for x in s]})


def verify_passive(protected: Scorer, references: Sequence[Any], prompts: Sequence[str], access: TextAccess,
                   fpr: float = DEFAULT_FPR, temperature: float = TEMPERATURE, max_tokens: int = COMPLETION_TOKENS,
                   seed: int = 0) -> FingerprintReport:
    """Ask ``access`` for one sampled completion of each prompt and test ``mean s_i > 0``.

    The report's ``containment`` is the t-test (``details``: ``mean`` and ``sd`` of ``s_i`` in nats,
    ``positive``: how many exceed 0, ``references``, ``temperature``, ``empty``: completions with no text).
    """
    check_fpr(fpr)
    if len(prompts) < 2:
        raise InputError("the passive test needs at least two prompts")
    if not 1 <= max_tokens <= 4096:
        raise InputError(f"max_tokens must be in 1..4096, got {max_tokens}")
    calls0, queries0 = access.calls, access.queries
    completions = access.sample(list(prompts), max_tokens, temperature, seed=seed)
    det = score_completions(protected, references, prompts, completions, fpr, temperature=temperature)
    return FingerprintReport(derived=bool(det.decision), compatible=True, containment=det,
                             queries=access.queries - queries0, api_calls=access.calls - calls0)
