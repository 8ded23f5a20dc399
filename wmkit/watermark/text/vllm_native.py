"""vLLM's native text watermarks, bit-exact: ``vllm-gumbel``, ``vllm-dual-key-gumbel`` and ``vllm-sbw``.

vLLM (0.30 and later, Model Runner V2) marks text in its sampler when started with
``vllm serve MODEL --watermark-config '{"algorithm": "gumbel", "key": 42}'``. These schemes
implement that specification (``vllm/v1/watermarking/`` of the released wheel; SBW from vLLM's
main branch), so that a vLLM deployment's output is detected by ``wm detect -s vllm-gumbel
--vllm-key 42``, and a transformers model can emit the same marks:

* **PRF** ``philox4x32-10-v1``: a context of ``w`` *generated* tokens (``-1`` before the first
  one; the prompt never enters) is absorbed into a 128-bit Philox state; candidate ``t`` gets word
  ``t & 3`` of one Philox call per 4 tokens (the layout wmkit's own PRF v2 follows, so both use
  :func:`wmkit.prf.absorb` and :func:`wmkit.prf.token_words`). Uniform: ``((w >> 8) + 1) / (2^24 + 1)``
  as float32.
* **gumbel**: token = ``argmax(logits / T - log(-log u))``; detection sums ``-log(1 - u_t)`` over
  tokens with a first-seen context: Gamma(n, 1) under no mark. With ``deduplicate_contexts =
  "single_turn"`` (vLLM's default) a step whose context already occurred in the completion is
  sampled normally.
* **dual_key_gumbel**: two keys ``sha256(b"key_a" | key)``, ``sha256(b"key_b" | key)``; each step uses
  key B with probability ``alpha``; detection fuses the two scores with weights ``1 - alpha, alpha``
  (vLLM's moment-matched Gamma p-value).
* **sbw** (Stateless Bernoulli Watermarking, vLLM main): a per-token Philox Bernoulli trial keyed
  by a 64-bit seed (lefthash: ``key * sum(context)``; selfhash: an anchored min-hash of Jenkins
  hashes), ``+delta`` on green logits before temperature. vLLM main's SBW *detector* hashes the
  lefthash context (``key * sum(h(context))``) while its sampler does not; wmkit follows the sampler,
  so text vLLM emits is what it detects (``tests/test_vllm_native.py`` records both).

vLLM keys are integers in ``[0, 2^64)``, kept apart from wmkit's hex key files:
``--vllm-key`` or ``$WMKIT_VLLM_KEY``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from ... import prf
from ...errors import InputError
from ...keys import VLLM_KEY_ENV, KeyedConfig, kdf_key_id, parse_vllm_key, resolve
from ...stats import Detection, binomial_detection, gamma_detection, normal_pvalue
from ...params import Spec, check_params
from .green_list import DELTA, GAMMA, SEEDING
from .gumbel_family import DEDUP, DEDUP_HISTORY, CompletionDetector, CompletionProcessor, GumbelProcessor, gumbel_max
from .detector import DEFAULT_FPR, DEFAULT_MIN_TOKENS, Capabilities
from ...engine.sampling import Sampling

__all__ = [
    "VLLM_KEY_ENV", "parse_vllm_key", "load_vllm_key", "derive_watermark_key", "vllm_philox_words", "vllm_uniform",
    "sbw_green", "VllmGumbel", "VllmDualKeyGumbel", "VllmSBW",
]

CONTEXT_DOMAIN = 0x574D4358
TOKEN_DOMAIN = 0x574D544B
INT31_MAX = 0x7FFFFFFF


def load_vllm_key(value: Any = None, env: str = VLLM_KEY_ENV) -> int:
    """The vLLM key from ``value``, else ``$WMKIT_VLLM_KEY``; else a clear error (:func:`wmkit.keys.resolve`)."""
    return resolve(value, "vllm", env=env)


def vllm_key_id(key: int) -> str:
    """The public id of a vLLM integer key (see :meth:`VllmScheme.key_id`)."""
    return kdf_key_id("vllm", key.to_bytes(8, "big"))


def derive_watermark_key(key: int, domain: bytes) -> int:
    """vLLM's subkey derivation: the first 8 bytes, big-endian, of SHA-256(``domain`` + key as 8 big-endian bytes)."""
    return int.from_bytes(hashlib.sha256(domain + key.to_bytes(8, "big")).digest()[:8], "big")


def vllm_philox_words(key: int, contexts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Words of vLLM's ``philox4x32-10-v1`` PRF: ``contexts[..., w]`` (``-1`` = before the completion),
    ``tokens`` broadcasting against ``contexts.shape[:-1] + (1,)`` (e.g. ``[V]`` or ``[..., 1]``)."""
    k0, k1 = key & prf.MASK32, key >> 32
    state = prf.absorb(contexts, (CONTEXT_DOMAIN, contexts.shape[-1], 0, 0), k0, k1, key_step=4, min_blocks=0)
    return prf.token_words([s.unsqueeze(-1) for s in state], tokens.to(contexts.device), (k0, k1), TOKEN_DOMAIN)


def vllm_uniform(words: torch.Tensor) -> torch.Tensor:
    """vLLM's word-to-uniform map: ``((w >> 8) + 1) / (2^24 + 1)`` in float64, then float32."""
    return (((words & prf.MASK32) >> 8).to(torch.float64) + 1.0).div(2**24 + 1).to(torch.float32)


def _hashint(x: torch.Tensor) -> torch.Tensor:
    """SBW's Bob Jenkins integer hash on int32 (``x + 1`` so that ``-1`` padding hashes to 0), widened to int64."""
    i = (x + 1).to(torch.int32)
    i = i - (i << 6)
    i = i ^ (i >> 17)
    i = i - (i << 9)
    i = i ^ (i << 4)
    i = i - (i << 3)
    i = i ^ (i << 10)
    i = i ^ (i >> 15)
    return i.to(torch.int64)


def sbw_green(key: int, contexts: torch.Tensor, tokens: torch.Tensor, seeding: str, gamma: float) -> torch.Tensor:
    """SBW green flags of ``tokens`` (broadcasting like :func:`vllm_philox_words`) after ``contexts[..., w]``.

    Seeds wrap in int64 as vLLM's do; each token is a Philox Bernoulli trial at counter ``t >> 2``
    under the seed's two words, green iff ``(word & 0x7FFFFFFF) < int(gamma * 0x7FFFFFFF)``.
    """
    hk = torch.tensor(key, dtype=torch.int64) if key < 2**63 else torch.tensor(key - 2**64, dtype=torch.int64)
    t = tokens.to(torch.int64).to(contexts.device)
    ctx = contexts.to(torch.int64)
    if seeding == "lefthash":  # the sampler's rule (vLLM main's detector hashes the context first)
        seeds = (hk * ctx.sum(-1)).unsqueeze(-1) + t * 0
    else:
        h_t = _hashint(t)
        seeds = hk * h_t * h_t
        prefix = ctx[..., 1:]
        if prefix.shape[-1]:
            terms = hk * _hashint(prefix).unsqueeze(-2) * h_t.unsqueeze(-1)  # [..., T, w - 1]
            seeds = torch.minimum(terms.min(-1).values, seeds)
    k0, k1 = seeds & prf.MASK32, (seeds >> 32) & prf.MASK32
    z = torch.zeros_like(k0)
    w = prf.philox4x32_10(z + (t >> 2), z, z, z, k0, k1)
    j = t & 3
    word = torch.where(j == 0, w[0], torch.where(j == 1, w[1], torch.where(j == 2, w[2], w[3])))
    return (word & INT31_MAX) < int(gamma * INT31_MAX)


def gumbel_choice(key: int, logits: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """vLLM's Gumbel-max choice on processed logits ``[B, V]``: ``argmax(logits - log(-log u))`` (float32)."""
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    u = vllm_uniform(vllm_philox_words(key, contexts, vocab)).clamp_min(torch.finfo(torch.float32).tiny)
    return gumbel_max(logits, u)


class SBWProcessor(CompletionProcessor):
    """Adds SBW's ``+delta`` to the green logits of every row (before temperature, as vLLM's sampler)."""

    def __init__(self, scheme: "VllmSBW", vocab_size: int | None):
        super().__init__(scheme.context_width, vocab_size)
        self.scheme = scheme

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        contexts = self.contexts(self.completion(input_ids, scores))
        s = self.scheme
        vocab = torch.arange(scores.shape[1], device=scores.device)
        green = sbw_green(s.key, contexts, vocab, s.seeding, s.gamma)
        return scores + green.to(scores.dtype) * s.delta


# ---------------------------------------------------------------------------------------------
# schemes
# ---------------------------------------------------------------------------------------------

VLLM_CONTEXT_WIDTH = Spec("generated tokens in the PRF context (vLLM's context_width)", low=1, high=64)


@dataclass(frozen=True)
class VllmScheme(KeyedConfig, ABC):
    """Base of vLLM's native schemes: an integer key and vLLM's context width (do not instantiate)."""

    key: int = field(repr=False)
    context_width: int = VLLM_CONTEXT_WIDTH.field(4)
    name: ClassVar[str] = ""
    key_kind: ClassVar[str] = "vllm"  # the CLI asks for --vllm-key, not a wmkit key file
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __post_init__(self) -> None:
        parse_vllm_key(self.key, f"{self.name} key")
        check_params(self)

    def key_id(self) -> str:
        """The key's public id, ``vllm:`` + 8 hex digits of a memory-hard KDF of the key
        (:func:`wmkit.keys.kdf_key_id`); a key from a small range is still found from marked text."""
        return vllm_key_id(self.key)

    def detector(self, tokenizer: Any, fpr: float = DEFAULT_FPR, min_tokens: int = DEFAULT_MIN_TOKENS, **options: Any) -> CompletionDetector:
        """A detector on completion text or token ids (vLLM's statistic and context deduplication)."""
        return CompletionDetector(self, tokenizer, fpr=fpr, min_tokens=min_tokens, **options)

    @abstractmethod
    def score(self, contexts: torch.Tensor, targets: torch.Tensor, fpr: float) -> Detection:
        """The statistic over deduplicated ``(context, target)`` pairs (implemented by each scheme)."""


@dataclass(frozen=True)
class VllmGumbel(VllmScheme):
    """vLLM's ``gumbel`` watermark (Aaronson's Gumbel-max on vLLM's Philox PRF).

    Args:
        key: vLLM's integer key (``--watermark-config '{"key": N}'``).
        context_width: generated tokens in the PRF context (vLLM's default 4).
        deduplicate_contexts: ``"single_turn"`` (vLLM's default: a repeated context is sampled
            normally) or ``"none"``. (``"all"`` also searches the prompt; wmkit's processor does not
            implement it, detection is the same.)
        deduplicate_contexts_max_history: positions searched (vLLM's default 8192; ``None``: all).
    """

    deduplicate_contexts: str = DEDUP.field("single_turn")
    deduplicate_contexts_max_history: int | None = DEDUP_HISTORY.field(8192)
    name: ClassVar[str] = "vllm-gumbel"

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> GumbelProcessor:
        """A processor that makes vLLM's sampler's choice at ``temperature`` (after its ``min_p``, ``top_k``, ``top_p`` filters)."""
        return GumbelProcessor(self, len(tokenizer) if tokenizer is not None else None,
                               Sampling(temperature, top_p, top_k, min_p))

    def choose(self, logits: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """vLLM's Gumbel-max choice on the processed logits."""
        return gumbel_choice(self.key, logits, contexts)

    def token_scores(self, key: int, contexts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``-log(1 - u)`` of each target under ``key`` (float64 of vLLM's float32 uniform)."""
        u = vllm_uniform(vllm_philox_words(key, contexts, targets.unsqueeze(-1)).squeeze(-1))
        return -torch.log1p(-u.to(torch.float64))

    def score(self, contexts: torch.Tensor, targets: torch.Tensor, fpr: float) -> Detection:
        """Sum of ``-log(1 - u_t)``: Gamma(n, 1) under no mark (exact)."""
        s = self.token_scores(self.key, contexts, targets)
        return gamma_detection(self.name, float(s.sum()), len(targets), fpr)


@dataclass(frozen=True)
class VllmDualKeyGumbel(VllmGumbel):
    """vLLM's ``dual_key_gumbel``: Gumbel-max under key A or, with probability ``alpha``, key B.

    Args:
        key, context_width, deduplicate_contexts, deduplicate_contexts_max_history: as :class:`VllmGumbel`.
        alpha: probability of key B in generation and its weight in detection (vLLM's config default 0.1).
    """

    alpha: float = Spec("probability of key B (generation) and its weight (detection)", low=0.0, high=1.0).field(0.1)
    name: ClassVar[str] = "vllm-dual-key-gumbel"

    def subkeys(self) -> tuple[int, int]:
        """vLLM's key A and key B."""
        return derive_watermark_key(self.key, b"key_a"), derive_watermark_key(self.key, b"key_b")

    def choose(self, logits: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Each row uses key B with probability ``alpha`` (torch's RNG), else key A, and takes that key's choice."""
        a, b = self.subkeys()
        use_b = torch.rand(logits.shape[0], device=logits.device) < self.alpha
        return torch.where(use_b, gumbel_choice(b, logits, contexts), gumbel_choice(a, logits, contexts))

    def score(self, contexts: torch.Tensor, targets: torch.Tensor, fpr: float) -> Detection:
        """Weighted early fusion ``(1 - alpha) s_A + alpha s_B`` with vLLM's Gamma(n / v, v) null,
        ``v = (1 - alpha)^2 + alpha^2`` (integer shape for alpha in {0, 1/2, 1}, as vLLM)."""
        a, b = self.subkeys()
        s = (1 - self.alpha) * self.token_scores(a, contexts, targets) + self.alpha * self.token_scores(b, contexts, targets)
        n = len(targets)
        var = (1 - self.alpha) ** 2 + self.alpha**2
        shape = round(n / var) if self.alpha in (0, 0.5, 1) else n / var
        return gamma_detection(self.name, float(s.sum()), n, fpr, shape=shape, scale=var, alpha=self.alpha)


@dataclass(frozen=True)
class VllmSBW(VllmScheme):
    """vLLM's ``sbw`` (Stateless Bernoulli Watermarking, vLLM main branch).

    Args:
        key: vLLM's integer key.
        seeding: ``"selfhash"`` (vLLM's default) or ``"lefthash"`` (vLLM's ``sbw_scheme``).
        context_width: default 4 for selfhash, 1 for lefthash (vLLM's defaults; ``None`` picks it).
        gamma, delta: green fraction (``sbw_gamma``, 0.5) and bias (``sbw_delta``, 2.0).
    """

    context_width: int | None = Spec(VLLM_CONTEXT_WIDTH.help + " (null: 4 for selfhash, 1 for lefthash)",
                                     low=1, high=64).field(None)  # type: ignore[assignment]
    seeding: str = SEEDING.field("selfhash")
    gamma: float = GAMMA.field(0.5)
    delta: float = DELTA.field(2.0)
    name: ClassVar[str] = "vllm-sbw"

    def __post_init__(self) -> None:
        if self.context_width is None:
            object.__setattr__(self, "context_width", 4 if self.seeding == "selfhash" else 1)
        super().__post_init__()

    def processor(self, tokenizer: Any = None, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0) -> SBWProcessor:
        """A processor that adds ``delta`` to SBW's green logits (sampling then proceeds as usual)."""
        return SBWProcessor(self, len(tokenizer) if tokenizer is not None else None)

    def score(self, contexts: torch.Tensor, targets: torch.Tensor, fpr: float) -> Detection:
        """Green count: z as vLLM's detector, exact binomial p-value (vLLM's normal tail in details)."""
        green = sbw_green(self.key, contexts, targets.unsqueeze(-1), self.seeding, self.gamma).squeeze(-1)
        n, g = len(targets), int(green.sum())
        det = binomial_detection(self.name, g, n, self.gamma, fpr)
        det.details["p_value_vllm"] = normal_pvalue(det.statistic)
        return det


def vllm_config_to_scheme(config: dict[str, Any]) -> VllmScheme:
    """Build the scheme from vLLM's ``--watermark-config`` JSON object (its ``key`` included)."""
    cfg = dict(config)
    algo = cfg.pop("algorithm", "gumbel")
    key = parse_vllm_key(cfg.pop("key", None), "watermark-config key")
    cls = {"gumbel": VllmGumbel, "dual_key_gumbel": VllmDualKeyGumbel, "sbw": VllmSBW}.get(algo)
    if cls is None:
        raise InputError(f"unknown vLLM watermark algorithm {algo!r}; expected gumbel, dual_key_gumbel or sbw")
    rename = {"sbw_scheme": "seeding", "sbw_gamma": "gamma", "sbw_delta": "delta"}
    params = {rename.get(k, k): v for k, v in cfg.items() if k not in ("prf", "allow_target_only_watermarking")}
    allowed = {f.name for f in fields(cls)} - {"key"}
    unknown = set(params) - allowed
    if unknown:
        raise InputError(f"{cls.name}: unknown watermark-config field(s) {sorted(unknown)}")
    return cls(key=key, **params)
