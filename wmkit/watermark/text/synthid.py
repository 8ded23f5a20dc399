"""SynthID-Text (Dathathri et al., Nature 2024): tournament sampling, compatible with transformers.

Generation. For the context ``c`` (the ``ngram_len - 1`` previous completion tokens, zeros before
the first, as transformers' ``SynthIDTextWatermarkLogitsProcessor`` keeps them) and every candidate
token ``v``, ``m`` g-values ``g_d(c, v)`` in {0, 1} come from transformers' hashing: a 64-bit
linear congruential accumulation ``h <- (h + x) * 6364136223846793005 + 1`` (wrapping) of the
context, the candidate and the depth's key, mapped through a ``sampling_table_size`` table of
random bits drawn by ``torch.randint`` from ``sampling_table_seed`` (on the CPU). A tournament of
``num_leaves`` candidates per match over ``m`` layers is applied in closed form to the
distribution: per layer, with ``G`` the probability mass of ``g_d = 1``,
``p_v <- p_v (1 - (1 - G)^k) / G`` where ``g_d(v) = 1`` and ``p_v (1 - G)^(k - 1)`` elsewhere.
``k = 2`` is SynthID's non-distortionary tournament and exactly transformers' processor
(``p_v (1 + g_d(v) - G)``); ``k > 2`` is the paper's distortionary variant (a stronger mark that
changes the distribution). A context seen in the last ``context_history_size`` steps is sampled
without the mark (transformers' repeated-context rule).

Detection. Under no mark each g-value is an independent draw from the table, so ``P[g = 1] = q``,
the table's fraction of ones (exactly 0.5 in expectation; the actual table's value is used). The
mean score ``sum g / (n m)`` is then Binomial(n m, q) / (n m): an exact p-value. The weighted mean
(SynthID's linearly decreasing depth weights 10..1, normalised to sum ``m``) is a weighted sum of
``m`` independent Binomial(n, q): its tail comes from the saddlepoint approximation of
:func:`wmkit.stats.weighted_binomial_sf`. Scored positions follow transformers' detector: tokens
with ``ngram_len - 1`` tokens of context inside the text, a repeated context scored once (within
``context_history_size``), nothing from the first EOS on.

Keys. ``keys`` are transformers' integers (``SynthIDTextWatermarkingConfig(keys=[...])``), given
explicitly (``-P keys=654,400,...``), or ``m`` 63-bit keys derived from a wmkit key file. The
hash is transformers', not :mod:`wmkit.prf`: an LCG is no PRF, and g-values of one key are affine
functions of the context modulo 2^64; SynthID text is detectable, not a secret against an analyst
who collects marked text.

g-values from the PRF (``gvalues=prf``, a wmkit key file only). transformers' g-values are not
independent across layers: the table index is the low 16 bits of an LCG, which depend linearly on
the low 16 bits of its input, so layer ``l``'s g-value of token ``x`` is layer 0's g-value of token
``x + (key_l - key_0) M^-1 (mod 2^16)`` in every context (``benchmarks/synthid_coupling.py``). The
tournament is unbiased over keys only for independent fair g-values, so the coupled layers cost
perplexity (+1.3% over 40 keys: ``benchmarks/distortion.py``). With ``gvalues=prf``, layer ``d``'s
g-value is bit ``d mod 32`` of the PRF v2 word ``word(state(c, LEFTHASH), GVALUE_DOMAIN ^ floor(d /
32), v)`` under the key's ``text/synthid`` PRF key: fair, independent across layers, tokens and
contexts, so ``E_key[P_w] = P`` exactly, and no 32-bit shortcut to the key. It is not compatible
with transformers (its processor cannot make this mark); ``q = 1/2`` exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from ... import prf
from ... import dedup
from ...errors import InputError
from ...keys import KeyedConfig, ScopedKey, SecretKey, kdf_key_id, parse_int_keys
from ...params import Spec, check_params
from ...stats import DEFAULT_WINDOWS, Detection, binomial_detection, weighted_binomial_detection, windowed_binomial_detection
from .gumbel_family import CompletionProcessor, completion_contexts, repeated_context
from ...engine.sampling import Sampling
from .detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, Capabilities, Detector

LCG_MULTIPLIER = 6364136223846793005  # transformers' (newlib/musl) multiplier; increment 1
SCORES = ("weighted-mean", "mean", "bayesian")
GVALUES = ("transformers", "prf")


def lcg(h: torch.Tensor, x: torch.Tensor | int) -> torch.Tensor:
    """One step of transformers' hash, ``(h + x) * M + 1`` in wrapping int64 arithmetic."""
    return (h + x) * LCG_MULTIPLIER + 1


def context_hash(contexts: torch.Tensor) -> torch.Tensor:
    """``[...]``: the hash of each context ``[..., ngram_len - 1]``, from 1 (transformers' start)."""
    h = torch.ones(contexts.shape[:-1], dtype=torch.int64, device=contexts.device)
    for i in range(contexts.shape[-1]):
        h = lcg(h, contexts[..., i])
    return h


@lru_cache(maxsize=8)
def sampling_table(size: int, seed: int) -> torch.Tensor:
    """transformers' table of g-values: ``torch.randint(0, 2, (size,))`` from a CPU generator seeded with ``seed``."""
    return torch.randint(0, 2, (size,), generator=torch.Generator().manual_seed(seed))


def derive_keys(key: SecretKey, depth: int) -> tuple[int, ...]:
    """``depth`` 63-bit SynthID keys from a wmkit key (HMAC subkeys, one per layer)."""
    return tuple(int.from_bytes(key.subkey(f"text/synthid/layer/{d}")[:8], "little") >> 1 for d in range(depth))


parse_keys = parse_int_keys  # transformers' explicit keys (wmkit.keys.parse_int_keys)


@dataclass(frozen=True)
class SynthID(KeyedConfig):
    """SynthID-Text tournament watermark (transformers-compatible for ``num_leaves = 2``).

    Args:
        key: a wmkit key (the layer keys are derived from it) or transformers' explicit keys (a tuple
            of integers, one per layer).
        ngram_len, depth, sampling_table_size, sampling_table_seed, context_history_size,
        skip_first_ngram_calls, num_leaves, score: see ``wm schemes synthid``.
    """

    key: SecretKey | tuple[int, ...] = field(repr=False)
    ngram_len: int = Spec("tokens in a hashed n-gram: the context is the ngram_len - 1 previous ones", low=2, high=16).field(5)
    depth: int = Spec("tournament layers m (number of keys; with explicit keys, their count)", low=1, high=64).field(30)
    sampling_table_size: int = Spec("size of the table of random g-values", low=2, high=2**24).field(2**16)
    sampling_table_seed: int = Spec("seed of the table (torch.randint on the CPU)", low=0, high=2**63 - 1).field(0)
    context_history_size: int = Spec("earlier contexts remembered; a repeated one is not marked", low=1, high=2**16).field(1024)
    skip_first_ngram_calls: bool = Spec("leave the first ngram_len - 1 tokens unmarked (their context has padding)").field(False)
    num_leaves: int = Spec("candidates per tournament match: 2 is non-distortionary (transformers), more is "
                           "SynthID's distortionary variant", low=2, high=16).field(2)
    score: str = Spec("detection score: weighted-mean (SynthID's depth weights 10..1), mean, or bayesian "
                      "(transformers' Bayesian detector, -P weights=FILE from wm synthid train)", choices=SCORES).field("weighted-mean")
    weights: str | None = Spec("Bayesian detector weights (wm synthid train) for score=bayesian").field(None)
    gvalues: str = Spec("g-value source: transformers (its hash and table; compatible with its processor) or prf "
                        "(PRF v2 bits: independent layers, exactly distortion-free over keys; a key file only, "
                        "the table parameters unused)", choices=GVALUES).field("transformers")
    name: ClassVar[str] = "synthid"
    capabilities: ClassVar[Capabilities] = Capabilities(windowed=True)
    explicit_key_param: ClassVar[str] = "keys"  # -P keys=... replaces the key file

    def __post_init__(self) -> None:
        check_params(self)
        if (self.score == "bayesian") != (self.weights is not None):
            raise InputError("synthid: score=bayesian needs -P weights=FILE (wm synthid train), and weights need score=bayesian")
        if isinstance(self.key, (SecretKey, ScopedKey)):
            return
        if self.gvalues == "prf":
            raise InputError("synthid: gvalues=prf needs a wmkit key file (-k), not transformers' explicit keys")
        if not isinstance(self.key, tuple):
            object.__setattr__(self, "key", parse_keys(self.key))
        if len(self.key) != self.depth:
            if self.depth != 30:  # the default follows the keys' count; an explicit other depth must match it
                raise InputError(f"synthid: depth is {self.depth} but {len(self.key)} keys were given")
            object.__setattr__(self, "depth", len(self.key))

    def key_labels(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """PRF v2 g-values use one PRF key; transformers' g-values one subkey per layer (:func:`derive_keys`)."""
        if self.gvalues == "prf":
            return (f"text/{self.name}",), ()
        return (), tuple(f"text/synthid/layer/{d}" for d in range(self.depth))

    def layer_keys(self) -> tuple[int, ...]:
        """The ``depth`` integer keys, as transformers takes them."""
        return self.key if isinstance(self.key, tuple) else derive_keys(self.key, self.depth)

    def key_id(self) -> str:
        """A public id of explicit keys (``synthid:`` + 8 hex digits of a memory-hard KDF,
        :func:`wmkit.keys.kdf_key_id`), else the key file's."""
        if isinstance(self.key, (SecretKey, ScopedKey)):
            return self.key.fingerprint()
        return kdf_key_id("synthid", np.array(self.key, dtype=np.int64).tobytes())

    def table(self) -> torch.Tensor:
        """The g-value table."""
        return sampling_table(self.sampling_table_size, self.sampling_table_seed)

    def null_rate(self) -> float:
        """``q``, the probability of ``g = 1`` without a mark: the table's fraction of ones (1/2 for prf)."""
        return 0.5 if self.gvalues == "prf" else float(self.table().double().mean())

    def layer_g(self, contexts: torch.Tensor, tokens: torch.Tensor | None = None, vocab: int | None = None) -> Iterator[torch.Tensor]:
        """The g-values (int64 0/1) of each layer in turn: of ``tokens [...]`` after ``contexts [...,
        ngram_len - 1]``, or (``vocab``) of every candidate ``[..., vocab]``."""
        device = contexts.device
        if self.gvalues == "prf":
            key = self.key.prf_key(f"text/{self.name}")  # type: ignore[union-attr]
            state = prf.context_state(contexts, key, prf.MODE_LEFTHASH)
            for block in range(-(-self.depth // 32)):
                domain = prf.GVALUE_DOMAIN ^ block
                words = (prf.vocab_words(state, vocab, key, domain) if tokens is None
                         else prf.token_words(state, tokens, key, domain))
                for bit in range(min(32, self.depth - 32 * block)):
                    yield (words >> bit) & 1
            return
        keys = self.layer_keys()
        table = self.table().to(device)
        cand = torch.arange(vocab, device=device) if tokens is None else tokens.to(torch.int64)
        ctx = context_hash(contexts).to(device)
        h = lcg(ctx.unsqueeze(-1) if tokens is None else ctx, cand)
        for d in range(self.depth):
            yield table[lcg(h, keys[d]) % self.sampling_table_size]

    def g_values(self, contexts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``[..., depth]`` g-values (int64 0/1) of ``tokens [...]`` after ``contexts [..., ngram_len - 1]``."""
        return torch.stack(list(self.layer_g(contexts.to(tokens.device), tokens)), dim=-1)

    def watermarked_log_probs(self, scores: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """transformers' ``update_scores`` for every candidate, one layer at a time (``[B, V]`` memory):
        the tournament's closed form applied to ``softmax(scores)``, as log-probabilities."""
        probs = torch.softmax(scores, dim=1)
        k = self.num_leaves
        for g in self.layer_g(contexts.to(scores.device), vocab=scores.shape[1]):
            mass = (g * probs).sum(axis=1, keepdims=True)
            if k == 2:
                probs = probs * (1 + g - mass)
            else:
                win = torch.where(mass > 0, (1 - (1 - mass) ** k) / mass, torch.ones_like(mass))
                probs = probs * torch.where((g == 1) & (probs > 0), win, (1 - mass) ** (k - 1))
        log_probs = torch.log(probs)
        return torch.where(torch.isfinite(log_probs), log_probs, torch.finfo(log_probs.dtype).min)

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> "SynthIDProcessor":
        """A batched processor; at temperature 1 and top_p 1 its scores are transformers' processor's."""
        return SynthIDProcessor(self, len(tokenizer) if tokenizer is not None else None,
                               Sampling(temperature, top_p, top_k, min_p))

    def detector(self, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = DEFAULT_MIN_TOKENS,
                 ignore_repeated_ngrams: bool = True) -> "SynthIDDetector":
        """A detector that needs the keys and the tokenizer only (the mean or weighted-mean score)."""
        return SynthIDDetector(self, tokenizer, fpr, min_tokens, ignore_repeated_ngrams)


def detector_config(scheme: SynthID) -> dict[str, Any]:
    """The parameters a trained Bayesian detector depends on (not the score choice or its file)."""
    return {k: v for k, v in scheme.config().items() if k not in ("score", "weights")}


def bayesian_scorer(scheme: SynthID, tokenizer: Any) -> Any:
    """The trained Bayesian detector in ``scheme.weights``, checked against this scheme, key and tokenizer."""
    from ...models import tokenizer_fingerprint
    from .synthid_bayes import BayesianScorer

    scorer = BayesianScorer.load(scheme.weights)  # type: ignore[arg-type]
    meta = scorer.meta
    if meta.get("config") != detector_config(scheme):
        raise InputError(f"synthid: {scheme.weights} was trained for another SynthID configuration {meta.get('config')}")
    if meta.get("key_id") != scheme.key_id():
        raise InputError(f"synthid: {scheme.weights} was trained for key id {meta.get('key_id')}, not {scheme.key_id()}")
    if hasattr(tokenizer, "get_vocab") and meta.get("tokenizer") != tokenizer_fingerprint(tokenizer):
        raise InputError(f"synthid: {scheme.weights} was trained with another tokenizer")
    return scorer


class SynthIDProcessor(CompletionProcessor):
    """SynthID's tournament on the completion's contexts, batched (no per-row loop).

    At temperature 1 with no filter it returns transformers' watermarked log-probabilities (the
    sampler then draws from them); at another temperature or with top-p / top-k / min-p,
    transformers applies the tournament to the tempered, filtered distribution *after* its warpers,
    which a processor placed before them cannot reproduce through scores, so the processor draws the
    token itself (torch's RNG) from that watermarked distribution (filtered by :class:`Sampling`, in
    vLLM's order) and leaves only it finite. Temperature 0 takes the argmax of the watermarked
    distribution (filters do not apply to greedy decoding).
    """

    pad = 0  # transformers' state starts with a context of zeros

    def __init__(self, scheme: SynthID, vocab_size: int | None, sampling: Sampling):
        super().__init__(scheme.ngram_len - 1, vocab_size)
        self.scheme, self.sampling = scheme, sampling

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        s = self.scheme
        completion = self.completion(input_ids, scores)
        if s.skip_first_ngram_calls and completion.shape[1] < s.ngram_len - 1:
            return scores
        contexts = self.contexts(completion)
        repeated = repeated_context(completion, contexts, s.context_history_size, pad=self.pad)
        exact = self.sampling.temperature == 0 or (self.sampling.temperature == 1 and not self.sampling.filters)
        base = scores if exact else self.sampling.process(scores)
        marked = torch.where(repeated.unsqueeze(1), base, s.watermarked_log_probs(base, contexts))
        if exact:
            return marked
        chosen = torch.multinomial(torch.softmax(marked.float(), dim=-1), 1)
        return torch.full_like(scores, float("-inf")).scatter(1, chosen, 0.0)


class SynthIDDetector(Detector):
    """SynthID's mean or weighted-mean score with an exact (mean) or saddlepoint (weighted) p-value.

    Scored: every token with ``ngram_len - 1`` tokens of context in the text, before the first EOS;
    with ``ignore_repeated_ngrams`` a context seen among the previous ``context_history_size`` is
    skipped (transformers' detector mask). ``details``: ``score`` (SynthID's mean or weighted mean),
    ``null_rate`` and per-depth g counts.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(windowed=True)

    def __init__(self, scheme: SynthID, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = DEFAULT_MIN_TOKENS,
                 ignore_repeated_ngrams: bool = True):
        super().__init__(scheme, tokenizer, fpr, min_tokens)
        self.deduplicate = ignore_repeated_ngrams
        self.q = scheme.null_rate()
        self.bayes = bayesian_scorer(scheme, tokenizer) if scheme.score == "bayesian" else None
        w = torch.linspace(10, 1, scheme.depth, dtype=torch.float64)
        self.weights = (w * scheme.depth / w.sum()).tolist()

    def scored_g(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g [n, depth], positions [n])`` of the scored tokens of ``ids``."""
        s, w = self.scheme, self.scheme.ngram_len - 1
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None and bool((ids == eos).any()):
            ids = ids[: int(torch.nonzero(ids == eos)[0, 0])]
        if len(ids) <= w:
            return torch.zeros(0, s.depth, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        ctx = completion_contexts(ids, w)[w:]  # full contexts only
        keep = torch.ones(len(ctx), dtype=torch.bool)
        if self.deduplicate:  # transformers' history: skip a context seen among the previous context_history_size
            keep = dedup.new_within(context_hash(ctx), s.context_history_size)
        pos = torch.arange(w, len(ids))[keep]
        return s.g_values(ctx[keep], ids[pos]), pos

    def score_ids(self, ids: torch.Tensor) -> Detection:
        """The configured score of one item's token ids."""
        g, pos = self.scored_g(ids)
        n, m = g.shape
        if n < self.min_tokens:
            raise self.too_short(n)
        per_depth = g.sum(0).tolist()
        extra = {"null_rate": self.q, "g_per_depth": per_depth, "tokens_total": len(ids)}
        if self.bayes is not None:
            s = float(self.bayes.scores(g.unsqueeze(0), torch.ones(1, n))[0])
            p = self.bayes.p_value(s, n)
            draws = len(self.bayes.null_scores(n))
            return Detection(method="synthid-bayesian", n_scored=n, statistic=s, p_value=p, fpr=self.fpr,
                             decision=p <= self.fpr, details={**extra, "score": s, "p_value_method": "monte-carlo exact null",
                                                              "null_draws": draws}, p_floor=1 / (1 + draws))
        if self.scheme.score == "mean":
            det = binomial_detection("synthid-mean", int(g.sum()), n * m, self.q, self.fpr, **extra)
            det.details["score"] = float(g.sum()) / (n * m)
            return det
        total = float(sum(wt * c for wt, c in zip(self.weights, per_depth)))
        det = weighted_binomial_detection("synthid-weighted-mean", total, self.weights, n, self.q, self.fpr, **extra)
        det.details["score"] = total / (n * m)
        return det

    def detect_windowed(self, text: str | Sequence[int] | torch.Tensor, prompt: str | None = None,
                        windows: Sequence[int] = DEFAULT_WINDOWS) -> Detection:
        """The most significant window of scored tokens (mean score per window, Bonferroni over
        windows); ``details["token_start"]``/``["token_end"]`` locate it, ``details["window_ids"]`` are its ids."""
        ids = self.ids_of(text, prompt)
        g, pos = self.scored_g(ids)
        if len(pos) < self.min_tokens:
            raise self.too_short(len(pos))
        det = windowed_binomial_detection("synthid", g.sum(1).numpy(), self.q, self.fpr, windows,
                                          min_window=self.min_tokens, trials=self.scheme.depth)
        d = det.details
        d["token_start"], d["token_end"] = int(pos[d["start"]]), int(pos[d["end"] - 1]) + 1
        d["window_ids"] = ids[d["token_start"] : d["token_end"]].tolist()
        scored = torch.zeros(len(ids), dtype=torch.bool).index_fill(0, pos, True)
        g_ones = torch.zeros(len(ids), dtype=torch.int64).index_copy(0, pos, g.sum(1))
        return dataclasses.replace(det, evidence={"token_ids": ids.tolist(), "scored": scored.tolist(),
                                                  "g_ones": g_ones.tolist()})
