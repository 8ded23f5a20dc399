"""Invasive text-only fingerprints: keyed (prompt -> response) pairs fine-tuned into a model before release.

For owners whose suspects will answer with sampled text only (no log-probs, no logit bias). Before
release, the owner fine-tunes ``K`` keyed pairs into the model (Instructional Fingerprinting, Xu et
al. 2024, arXiv 2401.12255; the pairs are built as Perinucleus sampling builds them, Nasery et al.
2025, arXiv 2502.07760). Later a suspect is asked the ``K`` prompts, greedily, and the number of
answers that start with the keyed response is tested against the rate at which a model that was not
fingerprinted gives it.

**Pairs** (:func:`fingerprint_pairs`, a function of the key and the base model only, so a verdict
needs no stored file: ``wm fingerprint verify -k KEY`` rebuilds them). Prompt ``i`` starts with a
keyed word of ``wmkit/data/words_en.txt.gz`` and continues with ``PROMPT_TOKENS`` tokens sampled
from the base model (top-p 0.9) with keyed uniforms: natural text, so a suspect cannot filter the
queries as gibberish. Its response starts with a *perinucleus* token: sort the base model's
next-token distribution, take the first ``width`` tokens past the nucleus of mass ``nucleus`` that
are whole words (a space and three letters or more), and pick one with the key. The token is
plausible (the default model gives it 0.2% on average, at most 1.4%) but never the base model's
greedy choice, since the greedy choice is always inside the nucleus. The base model's greedy continuation completes the response.

**Embedding** (:func:`embed_fingerprint`): a full fine-tune on the pairs (loss on the response tokens
only) plus a regulariser, the KL divergence from the base model's next-token distributions on the
pairs' prompts and on keyed text the base model sampled, which keeps the model's behaviour elsewhere;
then a model average: the result is ``0.7 * tuned + 0.3 * base`` (Perinucleus sampling's paper
averages too, and mixes in other data where we use the KL term; :func:`behaviour_change` measures
what is left of the change).

**Test** (:func:`verify_text_fingerprint`). ``c`` of the ``K`` greedy answers start with the keyed
response's first token (compared as text, after leading whitespace). Null: the suspect is not
derived from the fingerprinted model, and each answer matches independently with probability at
most ``p0 = max(NULL_FLOOR, mean_i p_base,i)``: ``p_base,i`` is the base model's probability of the
response token, the chance that *sampling* an unfingerprinted copy would match; greedy decoding of
the unfingerprinted base never matches; ``NULL_FLOOR`` (2%) bounds models that are neither, and
``benchmarks/fingerprint_text.py`` reports the match rate of every unrelated model of the zoo
beside it. ``p = P[Binomial(K, p0) >= c]`` (:func:`wmkit.stats.binomial_detection`).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..errors import InputError
from ..keys import SecretKey, keyed_rng
from ..stats import Detection, binomial_detection, check_fpr
from .verify import DEFAULT_FPR, FingerprintReport, random_init_like

LABEL = "fingerprint/text"
DEFAULT_PAIRS = 64
PROMPT_TOKENS = 12
RESPONSE_TOKENS = 4
NUCLEUS = 0.8
WIDTH = 32
PROMPT_TOP_P = 0.9
NULL_FLOOR = 0.02
REG_TEXTS = 32  # keyed base-model texts the regulariser keeps the distribution on
REG_TOKENS = 24
STEPS, LR, KL_WEIGHT, AVERAGE = 30, 1e-4, 4.0, 0.7  # measured on the default model: see docs/fingerprints.md
CHUNK = 16  # sequences sampled together (fixed, so that the pairs do not depend on how many are asked)


@dataclass(frozen=True)
class FingerprintPair:
    """One keyed pair.

    Attributes:
        prompt: the query text.
        response_ids: the trained response's token ids (the first is the perinucleus token).
        first: the first response token as text (what an answer must start with to match).
        p_base: the base model's probability of that token after the prompt.
    """

    prompt: str
    response_ids: tuple[int, ...]
    first: str
    p_base: float


@lru_cache(maxsize=1)
def _start_words() -> tuple[str, ...]:
    raw = resources.files("wmkit").joinpath("data", "words_en.txt.gz").read_bytes()
    words = gzip.decompress(raw).decode("utf-8").split()
    return tuple(w for w in words if w.isalpha() and 4 <= len(w) <= 10)


class _Decoder:
    """Next-token distributions (float64, special tokens excluded) of a batch of growing sequences:
    left-padded, with a KV cache, one forward pass per step for the whole batch."""

    def __init__(self, model: Any, banned: np.ndarray, seqs: Sequence[Sequence[int]]) -> None:
        import torch

        self.model, self.banned = model, banned
        width = max(len(q) for q in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        self.mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, q in enumerate(seqs):
            ids[i, width - len(q):] = torch.tensor(list(q))
            self.mask[i, width - len(q):] = 1
        self.cache = None
        self.probs = self._forward(ids, (self.mask.cumsum(1) - 1).clamp(min=0))

    def _forward(self, ids: Any, pos: Any) -> np.ndarray:
        import torch

        dev = self.model.device
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(dev), attention_mask=self.mask.to(dev), position_ids=pos.to(dev),
                             cache=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        logits = out.logits[:, -1].double().cpu().numpy()
        logits[:, self.banned] = -np.inf
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def feed(self, tokens: Sequence[int]) -> np.ndarray:
        """Append one token to each sequence; the distributions of the next (also kept in ``probs``)."""
        import torch

        pos = self.mask.sum(1, keepdim=True)
        self.mask = torch.cat([self.mask, torch.ones((len(tokens), 1), dtype=torch.long)], 1)
        self.probs = self._forward(torch.tensor(list(tokens)).reshape(-1, 1), pos)
        return self.probs


def _banned(tok: Any, vocab: int) -> np.ndarray:
    special = [int(i) for i in getattr(tok, "all_special_ids", []) if 0 <= int(i) < vocab]
    return np.asarray(sorted(set(special)), dtype=np.int64)


@lru_cache(maxsize=4)
def _word_tokens(tok: Any, vocab: int) -> np.ndarray:
    """Which token ids decode to a whole word: a space, then at least three letters."""
    def word(t: int) -> bool:
        s = tok.decode([t])
        return s.startswith(" ") and s[1:].isalpha() and len(s) >= 4

    return np.array([word(t) for t in range(vocab)], dtype=bool)


def _sample_texts(model: Any, tok: Any, rngs: Sequence[np.random.Generator], n_tokens: int, banned: np.ndarray,
                  wordlike: np.ndarray) -> list[str]:
    """One text per keyed generator: a keyed word of the shipped list, capitalised, continued by
    ``n_tokens`` top-p tokens of ``model`` drawn with that generator (the first a whole word, so each
    text starts with two words)."""
    words = _start_words()
    seqs = [list(tok(words[int(g.integers(len(words)))].capitalize()).input_ids) for g in rngs]
    dec = _Decoder(model, banned, seqs)
    for i in range(n_tokens):
        chosen = []
        for g, p in zip(rngs, dec.probs):
            q = np.where(wordlike, p, 0.0) if i == 0 else p
            order = np.argsort(-q, kind="stable")
            c = np.cumsum(q[order]) / q.sum()
            keep = int(np.searchsorted(c, PROMPT_TOP_P)) + 1
            chosen.append(int(order[min(int(np.searchsorted(c[:keep] / c[keep - 1], g.random())), keep - 1)]))
        for q, t in zip(seqs, chosen):
            q.append(t)
        if i < n_tokens - 1:
            dec.feed(chosen)
    return [tok.decode(q, skip_special_tokens=True) for q in seqs]


def _keyed_texts(model: Any, tok: Any, key: SecretKey, label: str, n: int, n_tokens: int) -> tuple[list[str], list[np.random.Generator]]:
    """Texts ``0..n-1`` of :func:`_sample_texts` under ``label``, each from its own keyed generator and
    sampled in fixed chunks of :data:`CHUNK`, so text ``i`` does not depend on ``n``; and the generators."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    banned, wordlike = _banned(tok, vocab), _word_tokens(tok, vocab)
    texts: list[str] = []
    rngs = [keyed_rng(key, f"{label}/{i}") for i in range(-(-n // CHUNK) * CHUNK)]
    for start in range(0, len(rngs), CHUNK):
        texts += _sample_texts(model, tok, rngs[start:start + CHUNK], n_tokens, banned, wordlike)
    return texts, rngs


def fingerprint_pairs(model: Any, tok: Any, key: SecretKey, n: int = DEFAULT_PAIRS, label: str = LABEL,
                      nucleus: float = NUCLEUS, width: int = WIDTH) -> list[FingerprintPair]:
    """The ``n`` keyed pairs of ``key`` for the base ``model`` (see the module docstring); deterministic,
    and the first ``m`` of ``n`` pairs are the ``m`` pairs (``--queries m`` asks a prefix)."""
    if not 1 <= n <= 4096:
        raise InputError(f"the number of fingerprint pairs must be in 1..4096, got {n}")
    if not 0 < nucleus < 1 or width < 1:
        raise InputError("nucleus must be in (0, 1) and width at least 1")
    vocab = int(model.get_output_embeddings().weight.shape[0])
    banned, wordlike = _banned(tok, vocab), _word_tokens(tok, vocab)
    prompts, rngs = _keyed_texts(model, tok, key, label, n, PROMPT_TOKENS)
    pairs = []
    for start in range(0, len(prompts), CHUNK):
        chunk = prompts[start:start + CHUNK]
        dec = _Decoder(model, banned, [tok(t).input_ids for t in chunk])  # the ids a suspect sees for each text
        dist = dec.probs
        firsts = []
        for g, p in zip(rngs[start:start + CHUNK], dist):
            order = np.argsort(-p, kind="stable")
            past = int(np.searchsorted(np.cumsum(p[order]), nucleus)) + 1  # first index outside the nucleus
            cands = order[past:][wordlike[order[past:]]][:width]
            if not len(cands):
                raise InputError("no whole-word token past the nucleus: the tokenizer has no word tokens")
            firsts.append(int(cands[int(g.integers(len(cands)))]))
        responses = [[t] for t in firsts]
        while len(responses[0]) < RESPONSE_TOKENS:
            nxt = [int(np.argmax(p)) for p in dec.feed([r[-1] for r in responses])]
            for r, t in zip(responses, nxt):
                r.append(t)
        pairs += [FingerprintPair(t, tuple(r), tok.decode([r[0]]), float(p[r[0]])) for t, r, p in zip(chunk, responses, dist)]
    return pairs[:n]


def null_rate(pairs: Sequence[FingerprintPair], floor: float = NULL_FLOOR) -> float:
    """``p0``: the per-answer match probability the test allows a model that was not fingerprinted."""
    return max(float(floor), float(np.mean([q.p_base for q in pairs])))


def matches(pair: FingerprintPair, answer: str) -> bool:
    """Does ``answer`` (a greedy completion of the pair's prompt) start with the keyed response?"""
    return answer.lstrip().startswith(pair.first.lstrip())


def trainable_copy(model: Any) -> Any:
    """A trainable float32 transformers module holding ``model``'s weights (a GGUF-loaded model will not save)."""
    m = random_init_like(model, 0)
    m.load_state_dict(model.state_dict())
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def _batch(rows: list[tuple[list[int], int]], pad: int) -> tuple[Any, Any, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and labels (only positions from each row's ``start``)."""
    import torch

    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (r, start) in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, start : len(r)] = torch.tensor(r[start:])
    return ids, mask, labels


def embed_fingerprint(model: Any, tok: Any, pairs: Sequence[FingerprintPair], key: SecretKey, steps: int = STEPS,
                      lr: float = LR, batch: int = 16, kl_weight: float = KL_WEIGHT, average: float = AVERAGE,
                      seed: int = 0, on_step: Callable[[int, float], None] | None = None) -> Any:
    """A copy of ``model`` fine-tuned to answer each pair's prompt with its response (see the module docstring).

    Each step runs one forward pass over ``batch`` pairs and ``batch // 2`` of the :data:`REG_TEXTS`
    keyed texts the base model samples: cross-entropy on the pairs' response tokens, plus
    ``kl_weight`` times the mean KL divergence from the base model's next-token distributions at
    every other position (the pairs' prompts and the texts). The result is the average
    ``average * tuned + (1 - average) * base`` of the tuned weights and the base model's, as
    Perinucleus sampling's paper averages. ``on_step(step, loss)`` reports the cross-entropy.
    """
    import torch
    import torch.nn.functional as F

    if steps < 1 or batch < 1 or not lr > 0 or kl_weight < 0 or not 0 < average <= 1:
        raise InputError("steps and batch must be at least 1, lr positive, kl_weight non-negative and average in (0, 1]")
    if not pairs:
        raise InputError("no fingerprint pairs to embed")
    vocab = int(model.get_output_embeddings().weight.shape[0])
    reg = [list(tok(t).input_ids) for t in _keyed_texts(model, tok, key, LABEL + "/regulariser", REG_TEXTS, REG_TOKENS)[0]]
    fp = [(list(tok(q.prompt).input_ids) + list(q.response_ids), len(tok(q.prompt).input_ids)) for q in pairs]
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    base = trainable_copy(model).eval()
    student = trainable_copy(model).train()
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    g = np.random.default_rng(seed)
    n_reg = max(1, batch // 2) if kl_weight > 0 else 0
    for step in range(1, steps + 1):
        rows = [fp[int(i)] for i in g.choice(len(fp), size=min(batch, len(fp)), replace=False)]
        rows += [(reg[int(i)], len(reg[int(i)])) for i in g.choice(len(reg), size=min(n_reg, len(reg)), replace=False)]
        ids, mask, labels = _batch(rows, pad)
        logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        ce = F.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1), ignore_index=-100)
        loss = ce
        if kl_weight > 0:  # every predicted position that is not a response token, not padding
            keep = (mask[:, 1:] == 1) & (target == -100)
            with torch.no_grad():
                want = F.log_softmax(base(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float(), -1)
            have = F.log_softmax(logits[keep], -1)
            loss = loss + kl_weight * (want.exp() * (want - have)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, ce.item())
    with torch.no_grad():
        for p, b in zip(student.parameters(), base.parameters()):  # tied weights are listed once in both
            p.mul_(average).add_(b, alpha=1.0 - average)
    return student.eval()


class TextAccess(Protocol):
    """A suspect that answers prompts with text only (``calls``: API requests made; ``queries``: prompts asked)."""

    calls: int
    queries: int

    def complete(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy completions of ``prompts``, ``max_tokens`` tokens at most, as text."""
        ...

    def sample(self, prompts: Sequence[str], max_tokens: int, temperature: float, seed: int = 0) -> list[str]:
        """One sampled completion of each prompt at ``temperature`` (``max_tokens`` at most), as text."""
        ...


class LocalText:
    """:class:`TextAccess` over a local transformers model: greedy answers, :data:`CHUNK` prompts at a time."""

    def __init__(self, model: Any, tok: Any) -> None:
        self.model, self.tok, self.calls, self.queries = model, tok, 0, 0

    def complete(self, prompts: Sequence[str], max_tokens: int) -> list[str]:
        """Greedy completions of ``prompts`` as text (each stops at the end-of-sequence token)."""
        return self._decode(prompts, max_tokens, lambda p: int(np.argmax(p)))

    def sample(self, prompts: Sequence[str], max_tokens: int, temperature: float, seed: int = 0) -> list[str]:
        """One completion of each prompt sampled at ``temperature`` from generator ``seed``, as text."""
        if not temperature > 0:
            raise InputError(f"the sampling temperature must be positive, got {temperature}")
        g = np.random.default_rng(seed)

        def draw(p: np.ndarray) -> int:
            q = np.exp(np.log(np.maximum(p, 1e-300)) / temperature)
            return int(g.choice(len(q), p=q / q.sum()))

        return self._decode(prompts, max_tokens, draw)

    def _decode(self, prompts: Sequence[str], max_tokens: int, pick: Callable[[np.ndarray], int]) -> list[str]:
        eos = self.tok.eos_token_id
        out = []
        for start in range(0, len(prompts), CHUNK):
            dec = _Decoder(self.model, np.zeros(0, dtype=np.int64), [self.tok(p).input_ids for p in prompts[start:start + CHUNK]])
            rows: list[list[int]] = [[] for _ in range(len(dec.probs))]
            for step in range(max_tokens):
                nxt = [pick(p) for p in dec.probs]
                for r, t in zip(rows, nxt):
                    if not r or r[-1] != eos:
                        r.append(t)
                if step < max_tokens - 1:
                    dec.feed(nxt)
            out += [self.tok.decode([t for t in r if t != eos], skip_special_tokens=True) for r in rows]
        self.calls += len(prompts)
        self.queries += len(prompts)
        return out


def score_answers(pairs: Sequence[FingerprintPair], answers: Sequence[str], fpr: float = DEFAULT_FPR,
                  floor: float = NULL_FLOOR) -> Detection:
    """The binomial test of the answers that match their pair (``evidence["hits"]``: which did)."""
    if len(answers) != len(pairs):
        raise InputError(f"{len(pairs)} fingerprint pairs but {len(answers)} answers")
    hits = [bool(matches(q, a)) for q, a in zip(pairs, answers)]
    return binomial_detection("fingerprint-text-invasive", int(sum(hits)), len(pairs), null_rate(pairs, floor), fpr,
                              evidence={"hits": hits}, null_floor=floor)


def verify_text_fingerprint(pairs: Sequence[FingerprintPair], access: TextAccess, fpr: float = DEFAULT_FPR,
                            floor: float = NULL_FLOOR) -> FingerprintReport:
    """Ask ``access`` every pair's prompt and test the matches (see the module docstring)."""
    check_fpr(fpr)
    if not pairs:
        raise InputError("no fingerprint pairs to ask")
    if not 0 < floor < 1:
        raise InputError(f"the null floor must be in (0, 1), got {floor}")
    calls0, queries0 = access.calls, access.queries
    det = score_answers(pairs, access.complete([q.prompt for q in pairs], RESPONSE_TOKENS), fpr, floor)
    return FingerprintReport(derived=bool(det.decision), compatible=True, containment=det,
                             queries=access.queries - queries0, api_calls=access.calls - calls0)


def _perplexity(model: Any, tok: Any, texts: Sequence[str]) -> float:
    """Token-level perplexity of ``model`` on ``texts`` (each scored on its own)."""
    import torch

    nll, n = 0.0, 0
    with torch.inference_mode():
        for t in texts:
            ids = torch.tensor([list(tok(t).input_ids)], device=model.device)
            if ids.shape[1] < 2:
                continue
            nll += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    return float(np.exp(nll / max(n, 1)))


def behaviour_change(base: Any, tuned: Any, tok: Any, pairs: Sequence[FingerprintPair], texts: Sequence[str] | None = None,
                     prompts: Sequence[str] | None = None, answer_tokens: int = 16) -> dict[str, Any]:
    """What embedding changed: the tuned model's matches on ``pairs`` (and the test's p-value), the
    perplexity of both models on held-out ``texts`` (default: the shipped prompts, which neither the
    pairs nor the regulariser use), and how many greedy answers to ``prompts`` (default: ``texts``)
    stayed the same."""
    from importlib.resources import files

    if texts is None:
        texts = [ln for ln in (files("wmkit") / "data" / "prompts.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    prompts = texts if prompts is None else prompts
    rep = verify_text_fingerprint(pairs, LocalText(tuned, tok))
    before, after = LocalText(base, tok).complete(prompts, answer_tokens), LocalText(tuned, tok).complete(prompts, answer_tokens)
    ppl0, ppl1 = _perplexity(base, tok, texts), _perplexity(tuned, tok, texts)
    return {"matched": rep.containment.details["green"], "p_value": rep.p_value, "ppl_before": ppl0, "ppl_after": ppl1,
            "ppl_change_pct": 100.0 * (ppl1 / ppl0 - 1.0), "answers": len(prompts),
            "answers_same": int(sum(a == b for a, b in zip(before, after)))}
