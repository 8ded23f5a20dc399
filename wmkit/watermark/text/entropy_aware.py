"""What the entropy-aware schemes (SWEET, EWD, Invisible Entropy) share: entropies, the gated
logits processor, and one detector core that scores a completion in the context of its prompt.

The entropy of step ``t`` is the Shannon entropy, in nats, of the model's next-token
distribution ``p(. | x_<t)``: the distribution the token ``x_t`` was drawn from. A scheme says,
per step, whether the step carries the mark (a *gate*) or how much it counts (a *weight*):

- SWEET gates on the true entropy (the generating model is needed to detect);
- EWD weights every step by its spike entropy (model needed to detect);
- IE gates on a small tagger's prediction of the entropy (no model at detection).

Generation gates go through :meth:`GreenListScheme.gated_processor` (one row mask into the shared
green-list kernel).

>>> import torch
>>> round(float(shannon_entropy(torch.zeros(4))), 4)  # uniform over 4 tokens: ln 4
1.3863
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Sequence

import torch

from ... import kernels
from ...errors import InputError
from ...stats import Detection, binomial_detection
from .green_list import GreenCountingDetector, GreenListScheme, ScoredText
from .detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, normalize_text
from .detector import Capabilities

__all__ = [
    "shannon_entropy",
    "spike_entropy",
    "lm_step_map",
    "by_token",
    "check_model",
    "ModelDetector",
    "NeedsModel",
    "ScoredText",
    "EntropyAwareDetector",
    "spike_modulus",
]


def shannon_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of ``softmax(logits)`` over the last dimension (``-inf`` logits allowed)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * torch.nan_to_num(logp, neginf=0.0)).sum(-1)


def spike_modulus(gamma: float, delta: float) -> float:
    """The spike-entropy modulus ``z = (1-g)(e^d - 1) / (1 - g + e^d g)``; spike entropy's floor is ``1 / (1 + z)``."""
    alpha = math.exp(delta)
    return (1 - gamma) * (alpha - 1) / (1 - gamma + alpha * gamma)


def spike_entropy(logits: torch.Tensor, gamma: float, delta: float) -> torch.Tensor:
    """Spike entropy ``sum_k p_k / (1 + z p_k)`` with modulus ``z`` (:func:`spike_modulus`).

    Kirchenbauer et al.'s measure of how much a green-list bias can move a distribution; EWD
    weighs tokens by it. It lies in ``[1 / (1 + z), 1)``: one-hot at the bottom, uniform near 1.
    """
    z = spike_modulus(gamma, delta)
    p = torch.softmax(logits.float(), dim=-1)
    return (p / (1 + z * p)).sum(-1)


@torch.no_grad()
def lm_step_map(model: Any, ids: Sequence[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor] = shannon_entropy,
                batch_size: int = 8, with_ids: bool = False) -> list[torch.Tensor]:
    """Run ``model`` over each id sequence and reduce its ``[len(x), V]`` logits with ``fn`` (default:
    the Shannon entropy of every step), batch by batch so full logits are never all in memory.
    With ``with_ids`` the call is ``fn(logits, ids)`` (e.g. to gather the log-probability of each next token).

    Row ``j`` of the logits is the distribution of token ``j + 1`` given ``x_<=j``. Sequences are
    right-padded in batches of similar length (a causal model's real positions never see padding).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    done: dict[int, torch.Tensor] = {}
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        seqs = [ids[i] for i in idx]
        lengths = [len(x) for x in seqs]
        batch = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(device)
        mask = (torch.arange(batch.shape[1]) < torch.tensor(lengths).unsqueeze(1)).long().to(device)
        logits = model(input_ids=batch, attention_mask=mask).logits
        for i, n, row in zip(idx, lengths, logits):
            done[i] = (fn(row[:n].float(), ids[i].to(device)) if with_ids else fn(row[:n].float())).cpu()
    return [done[i] for i in range(len(ids))]


def by_token(step: torch.Tensor) -> torch.Tensor:
    """Re-index per-step values (row ``j`` is about token ``j + 1``) by token: ``out[t] = step[t - 1]``;
    ``out[0]`` (no context) is NaN for floats."""
    out = torch.full_like(step, float("nan")) if step.is_floating_point() else torch.zeros_like(step)
    out[1:] = step[:-1]
    return out


def check_model(name: str, model: Any, tokenizer: Any) -> Any:
    """The generating model a baseline detector needs, checked against the tokenizer."""
    if model is None:
        raise InputError(f"{name} needs the generating model at detection (pass model=...; wm detect --scheme {name} loads it)")
    n = model.get_output_embeddings().weight.shape[0]
    if n < len(tokenizer):
        raise InputError(f"the model has {n} output tokens but the tokenizer has {len(tokenizer)} (mismatched tokenizer?)")
    return model


class EntropyAwareDetector(GreenCountingDetector, ABC):
    """The detector core of SWEET, EWD and IE: tokenizes a text (after its prompt, if given),
    finds its green tokens with the shared kernel, and leaves the choice of which tokens count
    (and how much) to the scheme's :meth:`decide`.

    With a prompt the text's first token is scored in the prompt's context, as it was generated;
    without one, the first ``h`` tokens have no context and are not scored. (Unlike the plain
    green-list detector, ``prompt`` is context given separately, not a prefix to strip.)
    """

    def _tokens(self, item: str | Sequence[int] | torch.Tensor | None) -> torch.Tensor:
        if item is None:
            return torch.zeros(0, dtype=torch.long)
        if isinstance(item, str):
            ids = self.tokenizer(normalize_text(item), add_special_tokens=False)["input_ids"]
            return torch.tensor(ids, dtype=torch.long)
        return self.checked_ids(item)

    def prepare(self, text: str | Sequence[int] | torch.Tensor, prompt: str | Sequence[int] | torch.Tensor | None = None) -> ScoredText:
        """Tokenize ``prompt`` and ``text`` separately (as generation saw them) and mark green tokens."""
        (item,) = self.prepare_many([text], [prompt])
        if isinstance(item, InputError):
            raise item
        return item

    def prepare_many(self, texts: Sequence[str | Sequence[int] | torch.Tensor],
                     prompts: Sequence[str | Sequence[int] | torch.Tensor | None]) -> list[ScoredText | InputError]:
        """:meth:`prepare` for many texts: green tokens and candidates over one packed batch
        (:meth:`~wmkit.watermark.text.green_list.GreenCountingDetector.pack`); an item that cannot be read yields its error."""
        parts: list[tuple[torch.Tensor, torch.Tensor] | InputError] = []
        for t, p in zip(texts, prompts, strict=True):
            try:
                parts.append((self._tokens(p), self._tokens(t)))
            except InputError as e:
                parts.append(e)
        ok = [x for x in parts if not isinstance(x, InputError)]
        seqs = [torch.cat(x) for x in ok]
        starts = [len(x[0]) for x in ok]
        flat, doc, col, lengths = self.pack(seqs)
        green = kernels.green_positions(flat[None], torch.tensor([len(flat)]), self.scheme.prf_key(), self.h, self.seeding,
                                        self.scheme.gamma)[0] & (col >= self.h)  # no context across texts
        lows = [max(0, s - self.h) for s in starts]  # repeats within the text (a coin of the prompt may recur once)
        subs = [seq[lo:] for seq, lo in zip(seqs, lows)]
        coins = self.coins(subs, *self.pack(subs)[:3])
        items = []
        for seq, start, lo, g, c in zip(seqs, starts, lows, torch.split(green, lengths.tolist()),
                                         torch.split(coins, [len(x) for x in subs])):
            cand = torch.zeros(len(seq), dtype=torch.bool)
            cand[lo:] = c
            cand &= torch.arange(len(seq)) >= start
            items.append(ScoredText(seq, start, g & cand, cand))
        done = iter(items)
        return [x if isinstance(x, InputError) else next(done) for x in parts]

    def binomial(self, item: ScoredText, scored: torch.Tensor, evidence: bool = True, p_value: float | None = None,
                 **details: Any) -> Detection:
        """Exact binomial test over the ``scored`` positions of ``item`` (a subset of its candidates);
        ``p_value``: the tail, when the caller computed it for a batch (:func:`~wmkit.stats.binomial_pvalues`)."""
        scored = scored & item.candidate
        n = int(scored.sum())
        if n < self.min_tokens:
            raise self.too_short(n)
        ev = {"token_ids": item.ids[item.start:].tolist(), "scored": scored[item.start:].tolist(),
              "green": (item.green & scored)[item.start:].tolist()} if evidence else None
        return binomial_detection(self.scheme.name, int((item.green & scored).sum()), n, self.scheme.gamma, self.fpr,
                                  evidence=ev, p_value=p_value, tokens_total=len(item.ids) - item.start, **details)

    @abstractmethod
    def decide(self, items: list[ScoredText], evidence: bool = True) -> list[Detection | InputError]:
        """The scheme's statistic for each prepared text (implemented by the scheme's detector);
        ``evidence=False`` skips the per-token lists."""

    def detect_many(self, texts: Sequence[str | Sequence[int] | torch.Tensor],
                    prompts: Sequence[str | Sequence[int] | torch.Tensor | None] | None = None,
                    evidence: bool = True) -> list[Detection | InputError]:
        """Detect each text (with its prompt, if any); an item that cannot be scored yields its error
        (one that has too few candidate tokens never reaches the model or the tagger).
        ``evidence=False`` skips the per-token lists (``wm scan``)."""
        prompts = list(prompts) if prompts is not None else [None] * len(texts)
        out: list[Detection | InputError | None] = []
        items = []
        for item in self.prepare_many(texts, prompts):
            if isinstance(item, InputError):
                out.append(item)
                continue
            n = int(item.candidate.sum())
            out.append(self.too_short(n) if n < self.min_tokens else None)
            if n >= self.min_tokens:
                items.append(item)
        decided = iter(self.decide(items, evidence) if items else [])
        return [r if r is not None else next(decided) for r in out]

    def detect(self, text: str | Sequence[int] | torch.Tensor, prompt: str | Sequence[int] | torch.Tensor | None = None) -> Detection:
        """Detect the mark in one text; raises :class:`InputError` if too few tokens can be scored."""
        (result,) = self.detect_many([text], [prompt])
        if isinstance(result, InputError):
            raise result
        return result


class ModelDetector(EntropyAwareDetector):
    """The detector of a baseline that runs the generating model (SWEET, EWD) over each text."""

    capabilities: ClassVar[Capabilities] = Capabilities(needs_model=True)

    def __init__(self, scheme: GreenListScheme, tokenizer: Any, model: Any, fpr: float = DEFAULT_FPR,
                 ignore_repeated_ngrams: bool = True, min_tokens: int = DEFAULT_MIN_TOKENS, batch_size: int = 8):
        super().__init__(scheme, tokenizer, fpr, ignore_repeated_ngrams, min_tokens)
        self.model, self.batch_size = check_model(scheme.name, model, tokenizer), batch_size

    def token_values(self, items: list[ScoredText], fn: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """``fn`` of the model's distribution of each token of each item (NaN for the first token)."""
        return [by_token(v) for v in lm_step_map(self.model, [it.ids for it in items], fn, self.batch_size)]


class NeedsModel:
    """Mixin of the baseline schemes whose detector runs the generating model (``detector_class``)."""

    name: ClassVar[str]
    detector_class: ClassVar[type[ModelDetector]]
    capabilities: ClassVar[Capabilities] = ModelDetector.capabilities

    def detector(self, tokenizer: Any, model: Any = None, fpr: float = DEFAULT_FPR, ignore_repeated_ngrams: bool = True,
                 min_tokens: int = DEFAULT_MIN_TOKENS) -> ModelDetector:
        """A detector that runs ``model`` (the generating LM, required) over each text."""
        return self.detector_class(self, tokenizer, model, fpr, ignore_repeated_ngrams, min_tokens)  # type: ignore[arg-type]
