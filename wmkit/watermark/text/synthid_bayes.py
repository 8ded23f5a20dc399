"""SynthID's Bayesian detector: transformers' ``BayesianDetectorModel``, trained here, with an exact-null p-value.

The model (Dathathri et al.'s "Bayesian score") learns ``P(g | watermarked)`` per tournament layer as a
function of the earlier layers' g-values; its score for a text is the log-likelihood ratio
``sum_{t,l} log P(g_tl | watermarked) / P(g_tl | unwatermarked)`` over the scored positions -- the
log posterior odds at prior 1/2, which transformers squashes through a sigmoid.

Training follows transformers' research recipe: g-values of marked and unmarked completions of
the same prompts, binary cross-entropy on the posterior plus transformers' L2 penalty on the
layer-interaction weights, Adam. 20% of each set is held back and reported.

The p-value is never the posterior. Under no mark the g-values are independent draws with
``P[g = 1] = q`` (the sampling table's rate), so the null law of the score for a text of ``n``
scored tokens is simulated exactly: ``p = (1 + #{null >= score}) / (1 + draws)`` over ``draws``
simulated texts of the same length (Monte Carlo, resolution ``1 / (1 + draws)``). The training report
also gives the empirical FPR on the held-back unmarked completions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ...errors import InputError
from ...files import write_file

FORMAT = "wmkit-synthid-bayesian/1"


def _model(depth: int) -> Any:
    from transformers.generation.watermarking import BayesianDetectorConfig, BayesianDetectorModel

    return BayesianDetectorModel(BayesianDetectorConfig(watermarking_depth=depth, base_rate=0.5))


class BayesianScorer:
    """A trained Bayesian detector for one SynthID configuration and key.

    Args:
        model: transformers' ``BayesianDetectorModel``.
        q: the null rate of ``g = 1`` (the sampling table's fraction of ones).
        meta: what it was trained for (``config`` without keys, ``key_id``, ``tokenizer``) and the report.
    """

    def __init__(self, model: Any, q: float, meta: dict[str, Any]):
        self.model, self.q, self.meta = model.eval(), q, meta
        self.depth = int(model.watermarking_depth)
        self._null: dict[int, np.ndarray] = {}

    @torch.no_grad()
    def scores(self, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B]`` log-likelihood ratios of g-values ``[B, n, depth]`` (0/1) over the ``mask [B, n]`` positions."""
        lik = self.model.likelihood_model_watermarked(g.double().to(self.model.dtype)).double()
        null = torch.where(g == 1, torch.tensor(self.q, dtype=torch.float64), torch.tensor(1 - self.q, dtype=torch.float64))
        return ((torch.log(lik.clamp(min=1e-30)) - torch.log(null)) * mask.unsqueeze(-1)).sum((1, 2))

    def null_scores(self, n: int, draws: int = 2000, seed: int = 0) -> np.ndarray:
        """Sorted scores of ``draws`` simulated unmarked texts of ``n`` scored tokens (cached per ``n``)."""
        if n not in self._null:
            gen = torch.Generator().manual_seed(seed + n)
            out = []
            for s in range(0, draws, 256):
                b = min(256, draws - s)
                g = (torch.rand(b, n, self.depth, generator=gen) < self.q).long()
                out.append(self.scores(g, torch.ones(b, n)).numpy())
            self._null[n] = np.sort(np.concatenate(out))
        return self._null[n]

    def p_value(self, score: float, n: int, draws: int = 2000) -> float:
        """Monte Carlo p-value of ``score`` against the exact null for ``n`` tokens (>= 1 / (1 + draws))."""
        null = self.null_scores(n, draws)
        return float((1 + (len(null) - np.searchsorted(null, score, side="left"))) / (1 + len(null)))

    def save(self, path: str | Path) -> Path:
        """Write the weights and metadata to a new safetensors file (never overwrites)."""
        from safetensors.torch import save

        state = {k: v.detach().float().contiguous() for k, v in self.model.state_dict().items()}
        meta = {"format": FORMAT, "depth": str(self.depth), "q": repr(self.q), "meta": json.dumps(self.meta)}
        return write_file(path, save(state, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "BayesianScorer":
        """Read a file written by :meth:`save` (one-line errors for anything else)."""
        from safetensors import safe_open

        p = Path(path)
        if p.is_dir() or not p.is_file():
            raise InputError(f"synthid: Bayesian weights {p} {'is a folder' if p.is_dir() else 'does not exist'} "
                             f"(train them with: wm synthid train)")
        try:
            with safe_open(str(p), framework="pt") as f:
                header = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception:  # noqa: BLE001 - any parse failure is the same user error
            raise InputError(f"{p} is not a safetensors file") from None
        if header.get("format") != FORMAT:
            raise InputError(f"{p} is not a wmkit SynthID Bayesian detector (wm synthid train writes one)")
        model = _model(int(header["depth"]))
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
        return cls(model, float(header["q"]), json.loads(header["meta"]))


def _pack(items: Sequence[torch.Tensor], depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(g) for g in items)
    g = torch.zeros(len(items), n, depth, dtype=torch.long)
    mask = torch.zeros(len(items), n)
    for i, x in enumerate(items):
        g[i, : len(x)], mask[i, : len(x)] = x, 1.0
    return g, mask


def train_bayesian(marked: Sequence[torch.Tensor], unmarked: Sequence[torch.Tensor], depth: int, q: float,
                   meta: dict[str, Any], epochs: int = 300, lr: float = 3e-3, seed: int = 0,
                   log: Callable[[str], None] | None = None) -> BayesianScorer:
    """Fit transformers' Bayesian detector on g-values ``[n_i, depth]`` of marked and unmarked texts.

    80% of each set trains it; the held-back 20% gives the report in ``meta["report"]``: AUROC of the
    score, TPR at 1% FPR of the exact-null p-value, and the held-back unmarked texts' FPR at 1%.
    """
    from ...stats import roc_auc

    if min(len(marked), len(unmarked)) < 10:
        raise InputError(f"synthid: training needs at least 10 marked and 10 unmarked texts, got {len(marked)} and {len(unmarked)}")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    def split(xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        order = rng.permutation(len(xs))
        k = max(2, len(xs) // 5)
        return [xs[i] for i in order[k:]], [xs[i] for i in order[:k]]

    (m_tr, m_te), (u_tr, u_te) = split(marked), split(unmarked)
    g, mask = _pack(m_tr + u_tr, depth)
    labels = torch.cat([torch.ones(len(m_tr)), torch.zeros(len(u_tr))])
    model = _model(depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        opt.zero_grad()
        _, loss = model(g, mask, labels=labels, loss_batch_weight=1.0 / len(labels))
        loss.backward()
        opt.step()
        if log is not None and (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.4f}")
    scorer = BayesianScorer(model, q, meta)
    s_m = [float(scorer.scores(*_pack([x], depth))[0]) for x in m_te]
    s_u = [float(scorer.scores(*_pack([x], depth))[0]) for x in u_te]
    p_m = [scorer.p_value(s, len(x)) for s, x in zip(s_m, m_te)]
    p_u = [scorer.p_value(s, len(x)) for s, x in zip(s_u, u_te)]
    scorer.meta["report"] = {
        "train": {"marked": len(m_tr), "unmarked": len(u_tr)}, "held_back": {"marked": len(m_te), "unmarked": len(u_te)},
        "auroc": roc_auc(s_m, s_u), "tpr_at_fpr_0.01": float(np.mean(np.array(p_m) <= 0.01)),
        "unmarked_fpr_at_0.01": float(np.mean(np.array(p_u) <= 0.01)), "epochs": epochs, "lr": lr, "seed": seed,
    }
    return scorer
