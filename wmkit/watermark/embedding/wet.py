"""WET (Shetty, Xu and Lau, ACL 2025, arXiv 2409.04459): every embedding through a secret linear map.

The provider serves ``normalize(C e)`` for *every* text, where ``C`` is a keyed circulant matrix:
its first row has ``mix`` non-zero entries at keyed positions with uniform random weights, scaled
to sum to 1, and row ``i`` is that row shifted right ``i`` times (the released code's
construction). No trigger word is involved, so paraphrasing a stealer's queries -- which strips
trigger-based marks (EmbMarker, ESpeW, WARDEN) -- leaves this one whole: a copy trained on the
served embeddings learns ``C``.

A circulant matrix is diagonal in the Fourier basis, so ``C e`` and ``C^-1 h`` are two FFTs
(exact to float rounding; ``tests/test_eaas.py`` checks them against the dense matrix).
Where a choice was ours: ``C`` is square (the paper also tries more output dimensions), and a key's
row is redrawn until every Fourier gain ``|fft(row)|`` is at least ``MIN_GAIN`` (0.01), which bounds
how much inverting ``C`` amplifies a copy's error (the released code only asks for full rank).

**Verification** (:func:`verify_wet`) needs no trigger and no decoy *queries*: the suspect embeds
``n`` ordinary sentences (32 by default), the provider embeds them with its clean model, and the
statistic is the mean cosine between the suspect's embeddings and ``C e`` ("forward"), between
``C^-1 h`` and ``e`` ("inverse", the paper's recovery), or the correlation of the suspect's pairwise
cosines with those of ``C e`` ("gram", ours: unchanged when the copy rotates or shuffles its
dimensions, because ``C`` is not orthogonal and bends the geometry its own way; it finds a rotated
provider, but a copy's own error can hide the bend), or "recover" (the issue's recovery of the map):
the map ``M`` from the clean to the suspect's embeddings is fitted by ridge least squares from 512
texts, and the circulant part of ``M^T M`` is correlated with ``C^T C``'s -- a rotation ``R`` of
the copy's answers gives ``(R C)^T (R C) = C^T C``, so a rotation cannot hide the map (at a query
price: 512 texts by default), though a copy's own error still can (docs/eaas.md has the figures). Its null comes from *keys*: the same
statistic under ``n_decoys`` decoy matrices drawn exactly as a key's own. A suspect that did not
learn from this key's embeddings is unrelated to ``C``, so ``C`` is one more draw among the decoys
(exchangeable): the rank p-value is exact, and the reported p-value is the Student-t predictive
tail of the decoy statistics, which costs no query however many decoys there are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from ...encoders import Encoder, check_embeddings, check_texts
from ...errors import InputError
from ...keys import KeyedConfig, SecretKey
from ...stats import EMBEDDING_FPR, check_fpr, gaussian_null_detection
from ...keys import keyed_rng
from .triggers import default_vocabulary

MIN_GAIN = 0.01
DEFAULT_WET_TEXTS, DEFAULT_WET_DECOYS, MAX_WET_TEXTS = 32, 1000, 4096
STATISTICS = ("forward", "inverse", "gram", "recover")
DEFAULT_RECOVER_TEXTS, RIDGE = 512, 1.0


def _draw_row(rng: np.random.Generator, dim: int, mix: int) -> np.ndarray:
    """A circulant's first row: ``mix`` uniform weights at random positions, summing to 1, redrawn
    until every Fourier gain is at least :data:`MIN_GAIN`."""
    for _ in range(10_000):
        row = np.zeros(dim)
        row[rng.choice(dim, size=mix, replace=False)] = rng.random(mix)
        row /= row.sum()
        if np.abs(np.fft.rfft(row)).min() >= MIN_GAIN:
            return row
    raise InputError(f"wet: no row of {mix} weights in {dim} dimensions has all Fourier gains >= {MIN_GAIN}")


def circulant_apply(rows: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``C e`` for each embedding row of ``e`` ([n, d]) and the circulant with first row ``rows``
    ([d], or [m, d] for m matrices: result [m, n, d]); ``C[i, j] = row[(j - i) mod d]``."""
    d = e.shape[-1]
    f = np.conj(np.fft.rfft(rows, axis=-1))
    return np.fft.irfft((f[..., None, :] if rows.ndim > 1 else f) * np.fft.rfft(e, axis=-1), n=d, axis=-1)


def circulant_solve(rows: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``C^-1 h`` (the inverse of :func:`circulant_apply`, same shapes)."""
    d = h.shape[-1]
    f = np.conj(np.fft.rfft(rows, axis=-1))
    return np.fft.irfft(np.fft.rfft(h, axis=-1) / (f[..., None, :] if rows.ndim > 1 else f), n=d, axis=-1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class WET(KeyedConfig):
    """WET: ``normalize(C e)`` with a keyed circulant ``C`` (see the module docstring).

    Args:
        key: the secret (never serialized).
        mix: non-zero entries in the circulant's first row (original dimensions mixed into each
            output dimension); 2 <= mix <= the embedding dimension.
    """

    key: SecretKey = field(repr=False)
    mix: int = 25
    name: ClassVar[str] = "wet"
    uses_target: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not isinstance(self.key, SecretKey):
            raise InputError(f"wet: key must be a wmkit.keys.SecretKey, got {type(self.key).__name__}")
        if not (isinstance(self.mix, int) and 2 <= self.mix <= 4096):
            raise InputError(f"wet: mix must be an integer in 2..4096, got {self.mix!r}")

    def key_labels(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The byte subkeys this scheme derives."""
        return (), ("eaas/wet", "eaas/wet-decoys", "eaas/wet-texts")

    def row(self, dim: int) -> np.ndarray:
        """The first row of this key's circulant for ``dim``-dimensional embeddings."""
        if self.mix > dim:
            raise InputError(f"wet: mix {self.mix} exceeds the embedding dimension {dim}")
        return _draw_row(keyed_rng(self.key, "eaas/wet"), dim, self.mix)

    def decoy_rows(self, dim: int, n: int) -> np.ndarray:
        """``n`` decoy first rows, drawn as :meth:`row` draws a key's ([n, dim])."""
        rng = keyed_rng(self.key, "eaas/wet-decoys")
        return np.stack([_draw_row(rng, dim, self.mix) for _ in range(n)])

    def mark(self, texts: Sequence[str], clean: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
        """``normalize(C e)`` for the ``clean`` embeddings of ``texts`` (every row changes)."""
        texts = check_texts(texts, "wet.mark")
        clean = check_embeddings(clean, None, "wet.mark: clean")
        if len(clean) != len(texts):
            raise InputError(f"wet.mark: {len(texts)} texts but {len(clean)} embeddings")
        return _unit(circulant_apply(self.row(clean.shape[1]), clean.astype(np.float64))).astype(np.float32)

    def recover(self, h: np.ndarray) -> np.ndarray:
        """``normalize(C^-1 h)``: the clean embeddings back from served (or copied) ones."""
        h = check_embeddings(h, None, "wet.recover")
        return _unit(circulant_solve(self.row(h.shape[1]), h.astype(np.float64))).astype(np.float32)

    def provider(self, encoder: Encoder) -> "object":
        """An encoder serving this scheme's embeddings of ``encoder``."""
        from .schemes import WatermarkedEncoder

        return WatermarkedEncoder(encoder, self)

    def verification_texts(self, n: int = DEFAULT_WET_TEXTS) -> list[str]:
        """``n`` keyed texts: the held-out reference sentences (ordinary text, no trigger), then, past
        their 256, keyed strings of 12 common words."""
        if not 8 <= n <= MAX_WET_TEXTS:
            raise InputError(f"wet: the test sends 8 to {MAX_WET_TEXTS} texts, got {n}")
        vocab = default_vocabulary()
        pool = vocab.targets
        rng = keyed_rng(self.key, "eaas/wet-texts")
        out = [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]
        words = vocab.band(0.001, 0.05)
        return out + [" ".join(rng.choice(words, size=12, replace=False)) for _ in range(n - len(out))]


def recovered_circulant(h: np.ndarray, e: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """The circulant part of ``M^T M`` for the map ``M`` fitted from ``e`` to ``h`` (ridge least
    squares, ``h ~ M e``): its first row, the mean of each wrapped diagonal. A copy that serves
    ``R C e`` for any orthogonal ``R`` has ``M^T M ~ C^T C``, whatever ``R`` is."""
    d = e.shape[1]
    mt = np.linalg.solve(e.T @ e + ridge * np.eye(d), e.T @ h)
    g = mt @ mt.T
    i = np.arange(d)
    return g[i[:, None], (i[:, None] + i[None, :]) % d].mean(0)


def _statistic(rows: np.ndarray, h: np.ndarray, e: np.ndarray, kind: str) -> np.ndarray:
    """Per circulant (rows [m, d]): the mean cosine between the suspect's ``h`` and ``C e`` (forward)
    or between ``C^-1 h`` and ``e`` (inverse); the correlation of pairwise cosines (gram); or the
    correlation of the recovered map's circulant part with ``C^T C``'s (recover, off the diagonal)."""
    if kind == "recover":
        r = recovered_circulant(h, e)[1:]
        auto = np.fft.irfft(np.abs(np.fft.rfft(rows, axis=-1)) ** 2, n=rows.shape[-1], axis=-1)[:, 1:]  # C^T C's row
        r, auto = r - r.mean(), auto - auto.mean(1, keepdims=True)
        return (auto @ r) / np.maximum(np.linalg.norm(auto, axis=1) * np.linalg.norm(r), 1e-12)
    if kind == "forward":
        return np.einsum("mnd,nd->mn", _unit(circulant_apply(rows, e)), h).mean(1)
    if kind == "gram":  # rotation-invariant: the suspect's pairwise cosines against those of C e
        iu = np.triu_indices(len(h), k=1)
        ce = _unit(circulant_apply(rows, e))
        want = np.einsum("mnd,mkd->mnk", ce, ce)[:, iu[0], iu[1]]
        got = (h @ h.T)[iu]
        want = want - want.mean(1, keepdims=True)
        got = got - got.mean()
        return (want @ got) / np.maximum(np.linalg.norm(want, axis=1) * np.linalg.norm(got), 1e-12)
    return np.einsum("mnd,nd->mn", _unit(circulant_solve(rows, h)), e).mean(1)


def verify_wet(
    suspect: Encoder, scheme: WET, clean: Encoder, n_texts: int | None = None,
    n_decoys: int = DEFAULT_WET_DECOYS, fpr: float = EMBEDDING_FPR, statistic: str = "forward",
) -> "object":
    """WET's ownership test: ``n_texts`` queries to ``suspect`` (default 32; 512 for "recover"), the
    null from ``n_decoys`` decoy keys.

    Returns an :class:`~wmkit.watermark.embedding.verify.OwnershipReport` (``delta_cos``: the
    statistic minus the decoys' mean; ``ks_p``: ``None``; ``mode``: ``"wet-"`` and the statistic).
    """
    from .verify import OwnershipReport

    check_fpr(fpr)
    if statistic not in STATISTICS:
        raise InputError(f"wet: statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if n_decoys < 2:
        raise InputError(f"wet: need at least 2 decoy keys, got {n_decoys}")
    if n_texts is None:
        n_texts = DEFAULT_RECOVER_TEXTS if statistic == "recover" else DEFAULT_WET_TEXTS
    texts = scheme.verification_texts(n_texts)
    h = check_embeddings(suspect.encode(texts), None, "suspect").astype(np.float64)
    e = check_embeddings(clean.encode(texts), None, "provider").astype(np.float64)
    if h.shape[1] != e.shape[1]:
        raise InputError(f"the suspect's embeddings have {h.shape[1]} dimensions, the provider's {e.shape[1]}")
    observed = float(_statistic(scheme.row(e.shape[1])[None], _unit(h), e, statistic)[0])
    # chunks bound the [m, n, d] arrays; recover's cost is its one map fit, so it takes all decoys at once
    null = np.concatenate([_statistic(chunk, _unit(h), e, statistic)
                           for chunk in np.array_split(scheme.decoy_rows(e.shape[1], n_decoys),
                                                       1 if statistic == "recover" else max(1, n_decoys // 100))])
    det = gaussian_null_detection("wet-ownership", observed, null.tolist(), fpr, n_scored=n_texts, p_value_from="t",
                                  mode=f"wet-{statistic}", null_samples=[float(x) for x in null])
    gap = observed - float(null.mean())
    return OwnershipReport(delta_cos=gap, delta_l2=-2.0 * gap, ks_p=None, detection=det, mode=f"wet-{statistic}",
                           queries=n_texts)
