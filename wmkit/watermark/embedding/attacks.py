"""Attacks on EaaS watermarks: the copy (model-extraction) attack, CSE removal, distance-preserving transforms.

- :class:`BagOfWordsStealer`: a student trained to imitate the provider's embeddings (MSE on unit
  vectors) from the task's training texts. The papers' student is BERT-base + MLP; on a 2-core CPU
  we use a fastText-style model that trains in seconds to minutes: the mean of learned vectors of
  the text's distinct words (optionally also hashed word bigrams, which generalize worse here), then
  a 2-layer MLP to the provider's dimension.
- :func:`cse_clean`: CSE (Clustering, Selection, Elimination; from the WARDEN/ESpeW code): k-means
  of the provider's embeddings; within clusters, the pairs whose provider-cosine percentile most
  exceeds a clean reference model's; SVD of the embeddings in those pairs; the top components
  projected out; rows renormalized. Our reference model is :func:`lsa_reference` (TF-IDF + SVD of the
  attacker's own texts): independent of the provider, as an attacker's would be.
- :class:`TransformedEncoder`: an encoder whose outputs are rotated or dimension-shuffled.
- :func:`spa_spot`: SPA-style spotting (after Fei et al. 2024, arXiv 2411.09359): each query is sent again
  with random suffixes; a marked embedding, pulled toward a target, moves less than its text's
  meaning does ("tight"), and the attacker drops the tightest answers before training.
- :func:`pca_project` and :func:`add_noise`: dimension reduction (the copy's training embeddings
  projected on their top principal components) and dimension perturbation (Gaussian noise).
- :func:`paraphrased_answers`: the stealer paraphrases each query before sending it, so a trigger
  word in the query seldom reaches the victim, and trains on the average answer.
"""

from __future__ import annotations

import re
import zlib
from typing import Callable, Sequence

import numpy as np

from ...errors import InputError
from ...encoders import Encoder, check_embeddings, check_texts

TOKEN = re.compile(r"[a-z0-9]+")
BIGRAM_BUCKETS = 1 << 16


class BagOfWordsStealer:
    """A copied encoder: word + hashed-bigram bag, mean-pooled, MLP to the provider's space.

    Build with :meth:`fit`. ``encode`` returns unit vectors, so it is an :class:`~wmkit.encoders.Encoder`.
    """

    def __init__(self, vocab: dict[str, int], model: "object", dim: int, bigrams: bool = False) -> None:
        self.bigrams = bigrams
        self.vocab = vocab
        self.model = model
        self.dim = dim

    def _features(self, texts: Sequence[str]) -> tuple["object", "object"]:
        import torch

        ids: list[int] = []
        offsets: list[int] = []
        nv = len(self.vocab) + 1  # 0 = unknown word
        for t in texts:
            toks = TOKEN.findall(t.lower())
            feats = {self.vocab.get(w, 0) for w in toks}
            if self.bigrams:
                feats.update(nv + zlib.crc32(f"{a} {b}".encode()) % BIGRAM_BUCKETS for a, b in zip(toks, toks[1:]))
            offsets.append(len(ids))
            ids.extend(sorted(feats) or [0])
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        targets: np.ndarray,
        epochs: int = 15,
        width: int = 512,
        lr: float = 3e-2,
        batch_size: int = 128,
        min_count: int = 2,
        bigrams: bool = False,
        seed: int = 0,
    ) -> "BagOfWordsStealer":
        """Train on ``(texts, provider embeddings)`` with MSE between unit vectors (Adam, cosine-decayed lr)."""
        import torch
        from torch import nn

        texts = check_texts(texts, "stealer texts")
        y = torch.from_numpy(check_embeddings(targets, None, "stealer targets"))
        if len(y) != len(texts):
            raise InputError(f"stealer: {len(texts)} texts but {len(y)} target embeddings")
        counts: dict[str, int] = {}
        for t in texts:
            for w in set(TOKEN.findall(t.lower())):
                counts[w] = counts.get(w, 0) + 1
        vocab = {w: i + 1 for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))}
        torch.manual_seed(seed)
        dim = y.shape[1]
        model = nn.ModuleDict(
            {
                "bag": nn.EmbeddingBag(len(vocab) + 1 + BIGRAM_BUCKETS, width, mode="mean", sparse=True),
                "mlp": nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, dim)),
            }
        )
        self = cls(vocab, model, dim, bigrams)
        feats = [self._features([t]) for t in texts]
        opts = [torch.optim.SparseAdam(model["bag"].parameters(), lr=lr), torch.optim.Adam(model["mlp"].parameters(), lr=lr)]
        steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
        scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for o in opts]
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(texts), generator=gen).split(batch_size):
                ids, offs = _concat([feats[i] for i in idx.tolist()])
                out = nn.functional.normalize(model["mlp"](model["bag"](ids, offs)), dim=-1)
                loss = ((out - y[idx]) ** 2).sum(1).mean()
                for o in opts:
                    o.zero_grad()
                loss.backward()
                for o, sc in zip(opts, scheds):
                    o.step()
                    sc.step()
        model.eval()
        return self

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The stealer's unit-norm embeddings of ``texts``."""
        import torch

        texts = check_texts(texts)
        with torch.inference_mode():
            ids, offs = self._features(texts)
            out = self.model["mlp"](self.model["bag"](ids, offs))  # type: ignore[index]
            return torch.nn.functional.normalize(out, dim=-1).numpy().astype(np.float32)


def _concat(parts: list[tuple["object", "object"]]) -> tuple["object", "object"]:
    import torch

    ids = [p[0] for p in parts]
    offsets = torch.tensor([0] + [len(x) for x in ids[:-1]], dtype=torch.long).cumsum(0)
    return torch.cat(ids), offsets


def lsa_reference(texts: Sequence[str], dim: int = 256, seed: int = 0) -> np.ndarray:
    """A clean reference embedding of ``texts``: TF-IDF (words + bigrams) reduced by truncated SVD, unit rows."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit_transform(check_texts(texts))
    z = TruncatedSVD(n_components=min(dim, x.shape[1] - 1), random_state=seed).fit_transform(x)
    empty = np.linalg.norm(z, axis=1) < 1e-12  # no known word: a random direction (unrelated to every text)
    z[empty] = np.random.default_rng(seed).standard_normal((int(empty.sum()), z.shape[1]))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


def _percentile(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x) / x.size


def cse_clean(
    embeddings: np.ndarray,
    reference: np.ndarray,
    n_clusters: int = 20,
    n_components: int = 50,
    keep: float = 0.025,
    seed: int = 0,
) -> np.ndarray:
    """CSE removal: the provider's ``embeddings`` with the suspicious top singular directions projected out.

    Args:
        embeddings: ``[n, d]`` provider (possibly watermarked) embeddings of the attacker's texts.
        reference: ``[n, d']`` a clean reference model's embeddings of the same texts.
        n_clusters: k of k-means (WARDEN: 20).
        n_components: ``K`` singular directions removed (WARDEN: 50).
        keep: the number of selected pairs is ``keep * n`` (the released code's 2.5%).
        seed: k-means and SVD seed.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD

    e = check_embeddings(embeddings, None, "cse: embeddings")
    r = check_embeddings(reference, None, "cse: reference")
    if len(e) != len(r) or len(e) < 2 * n_clusters:
        raise InputError(f"cse: need as many reference as provider embeddings and at least {2 * n_clusters} rows")
    labels = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3).fit_predict(e)
    pairs_i, pairs_j, vic, ref = [], [], [], []
    for c in range(n_clusters):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        a, b = np.triu_indices(len(idx), k=1)
        vic.append((e[idx] @ e[idx].T)[a, b])
        ref.append((r[idx] @ r[idx].T)[a, b])
        pairs_i.append(idx[a])
        pairs_j.append(idx[b])
    vic_all, ref_all = np.concatenate(vic), np.concatenate(ref)
    diff = _percentile(vic_all) - _percentile(ref_all)
    n_keep = max(1, min(diff.size, int(keep * len(e))))
    top = np.argpartition(-diff, n_keep - 1)[:n_keep]
    chosen = np.unique(np.concatenate([np.concatenate(pairs_i)[top], np.concatenate(pairs_j)[top]]))
    k = min(n_components, len(chosen) - 1, e.shape[1] - 1)
    comps = TruncatedSVD(n_components=k, random_state=seed).fit(e[chosen]).components_
    cleaned = e - (e @ comps.T) @ comps
    return check_embeddings(cleaned, e.shape[1], "cse: cleaned")


class TransformedEncoder:
    """``encoder``'s embeddings times an orthogonal matrix: a rotation or a dimension shuffle (keeps distances).

    Args:
        encoder: the encoder to wrap.
        matrix: ``[d, d]`` orthogonal matrix; see :meth:`rotation` and :meth:`shuffle`.
    """

    def __init__(self, encoder: Encoder, matrix: np.ndarray) -> None:
        self.encoder = encoder
        self.matrix = np.asarray(matrix, dtype=np.float32)
        self.dim = encoder.dim
        if self.matrix.shape != (self.dim, self.dim):
            raise InputError(f"transform: expected a [{self.dim}, {self.dim}] matrix, got {list(self.matrix.shape)}")

    @classmethod
    def rotation(cls, encoder: Encoder, seed: int = 0) -> "TransformedEncoder":
        """A uniformly random rotation (QR of a Gaussian matrix, sign-fixed)."""
        q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((encoder.dim, encoder.dim)))
        return cls(encoder, q * np.sign(np.diag(r)))

    @classmethod
    def shuffle(cls, encoder: Encoder, seed: int = 0) -> "TransformedEncoder":
        """A random permutation of the dimensions."""
        return cls(encoder, np.eye(encoder.dim)[np.random.default_rng(seed).permutation(encoder.dim)])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Transformed embeddings (unit norm, as the wrapped encoder's)."""
        return check_embeddings(self.encoder.encode(texts) @ self.matrix, self.dim, "transform")


def spa_spot(
    texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], suffixes: Sequence[str], n_suffixes: int = 3,
    drop: float = 0.1, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """SPA-style spotting: ``(keep, tightness)`` for the victim's answers to ``texts``.

    Each text is embedded alone and with ``n_suffixes`` suffixes drawn from ``suffixes`` (costing
    ``n_suffixes`` more queries per text); its tightness is the mean cosine between the two. The
    ``drop`` fraction of texts with the tightest answers is judged watermarked: ``keep`` is False
    there. (A simplification of the paper's attack, which also tunes its suffixes and metrics.)
    """
    texts = check_texts(texts, "spa")
    if n_suffixes < 1 or not suffixes:
        raise InputError("spa: needs at least one suffix per text")
    if not 0.0 <= drop < 1.0:
        raise InputError(f"spa: drop must be in [0, 1), got {drop}")
    rng = np.random.default_rng(seed)
    base = check_embeddings(encode(list(texts)), None, "spa")
    tight = np.zeros(len(texts))
    for _ in range(n_suffixes):
        picks = rng.integers(len(suffixes), size=len(texts))
        pert = check_embeddings(encode([f"{t} {suffixes[i]}" for t, i in zip(texts, picks)]), base.shape[1], "spa")
        tight += np.einsum("ij,ij->i", base, pert) / n_suffixes
    return tight <= np.quantile(tight, 1.0 - drop), tight


def pca_project(embeddings: np.ndarray, keep: float = 0.8) -> np.ndarray:
    """``embeddings`` projected on their top ``keep`` fraction of principal directions (about the
    mean, which is kept), in the original coordinates, rows renormalised: a copy that kept only
    80% of the dimensions' worth of information."""
    e = check_embeddings(embeddings, None, "pca")
    if not 0.0 < keep <= 1.0:
        raise InputError(f"pca: keep must be in (0, 1], got {keep}")
    mu = e.mean(0)
    _, _, vt = np.linalg.svd(e - mu, full_matrices=False)
    top = vt[: max(1, int(round(keep * e.shape[1])))]
    out = mu + ((e - mu) @ top.T) @ top
    return check_embeddings(out, e.shape[1], "pca: projected")


def add_noise(embeddings: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Gaussian noise of ``sigma`` per coordinate added to unit ``embeddings``, rows renormalised."""
    e = check_embeddings(embeddings, None, "noise")
    if sigma < 0:
        raise InputError(f"noise: sigma must be >= 0, got {sigma}")
    out = e + np.random.default_rng(seed).normal(0.0, sigma, size=e.shape).astype(np.float32)
    return check_embeddings(out, e.shape[1], "noise: perturbed")


def paraphrased_answers(
    texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], paraphrase: Callable[[list[str]], list[str]],
    copies: int = 1,
) -> np.ndarray:
    """The victim's embeddings of ``copies`` paraphrases of each text, averaged and renormalised: what
    a stealer that never sends its own wording trains on (paired with its original texts)."""
    texts = check_texts(texts, "paraphrase attack")
    if copies < 1:
        raise InputError(f"paraphrase attack: copies must be >= 1, got {copies}")
    total = None
    for _ in range(copies):
        para = [p if p.strip() else t for p, t in zip(paraphrase(list(texts)), texts)]  # an empty answer: the original
        e = check_embeddings(encode(para), None, "paraphrase attack")
        total = e if total is None else total + e
    return check_embeddings(total, total.shape[1], "paraphrase attack: mean")  # type: ignore[union-attr]
