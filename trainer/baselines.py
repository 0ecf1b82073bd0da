"""Classic top-K baselines on a binary user x item implicit matrix (``scipy.sparse`` CSR).

* ``popularity``: items by number of distinct users;
* ``item_knn``: cosine similarity of binary item columns (co-occurrence / sqrt(n_i n_j)), each item keeps
  its ``neighbours`` most similar items; a user's score = sum of the kept similarities to her items;
* ``ease``: Steck's EASE^R, closed form ``B = I - P / diag(P)`` (diag zeroed), ``P = (X^T X + lam I)^-1``;
  ``tune_ease`` picks ``lam`` from a grid on a per-user random validation split of the training matrix.

Every function returns, per requested user, the top ``k`` items she has not interacted with (an int64
array ``(len(users), k)``, padded with -1 when fewer items are left). Dense item x item algebra: meant for
catalogues up to some tens of thousands of items (ml-100k: 1,682 items, well under a second each).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

EASE_GRID = (100.0, 250.0, 500.0, 1000.0)


def binarize(x) -> sp.csr_matrix:
    x = sp.csr_matrix(x, dtype=np.float32, copy=True)
    x.sum_duplicates()
    x.data[:] = 1.0
    x.eliminate_zeros()
    return x


def _users(x, users):
    return np.arange(x.shape[0]) if users is None else np.asarray(users, np.int64)


def top_unseen(scores_fn, x: sp.csr_matrix, users, k: int, batch: int = 2048) -> np.ndarray:
    """Top-``k`` items per user by ``scores_fn(rows) -> dense (len(rows), n_items)``, seen items excluded."""
    users = _users(x, users)
    n_items = x.shape[1]
    k_eff = min(k, n_items)
    out = np.full((len(users), k), -1, np.int64)
    for s in range(0, len(users), batch):
        u = users[s:s + batch]
        sc = np.array(scores_fn(u), dtype=np.float64, copy=True)
        seen = x[u]
        r, c = seen.nonzero()
        sc[r, c] = -np.inf
        top = np.argsort(-sc, axis=1, kind="stable")[:, :k_eff]   # score desc, lower item id on ties
        ok = np.isfinite(np.take_along_axis(sc, top, 1))
        out[s:s + len(u), :k_eff] = np.where(ok, top, -1)
    return out


def popularity(x, users=None, k: int = 10) -> np.ndarray:
    x = binarize(x)
    pop = np.asarray(x.sum(0)).ravel().astype(np.float64)
    return top_unseen(lambda u: np.broadcast_to(pop, (len(u), len(pop))), x, users, k)


def item_knn_similarity(x, neighbours: int = 100) -> np.ndarray:
    """Dense item x item cosine similarity (zero diagonal), each column keeping its top ``neighbours``."""
    x = binarize(x)
    c = (x.T @ x).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(c).copy())
    norms[norms == 0] = 1.0
    s = c / norms[:, None] / norms[None, :]
    np.fill_diagonal(s, 0.0)
    n = s.shape[0]
    if neighbours < n:
        drop = np.argpartition(-s, neighbours, axis=1)[:, neighbours:]
        np.put_along_axis(s, drop, 0.0, axis=1)
    # row j keeps j's neighbours; transposed, column j does: a user's score for j sums s[i, j] over
    # her items i among j's top neighbours
    return np.ascontiguousarray(s.T)


def item_knn(x, users=None, k: int = 10, neighbours: int = 100) -> np.ndarray:
    x = binarize(x)
    s = item_knn_similarity(x, neighbours)
    return top_unseen(lambda u: x[u] @ s, x, users, k)


def ease_weights(x, lam: float = 500.0) -> np.ndarray:
    x = binarize(x)
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def validation_split(x, share: float = 0.2, seed: int = 0):
    """Per user, a random ``share`` of her items (at least one when she has two or more) held out."""
    x = binarize(x).tocoo()
    rng = np.random.default_rng(seed)
    key = rng.random(len(x.row))
    order = np.lexsort((key, x.row))
    rows, cols = x.row[order], x.col[order]
    counts = np.bincount(rows, minlength=x.shape[0])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(rows)) - starts[rows]
    n_test = np.where(counts >= 2, np.maximum(1, np.round(counts * share)), 0).astype(np.int64)
    test = pos < n_test[rows]
    mk = lambda m: sp.csr_matrix((np.ones(int(m.sum()), np.float32), (rows[m], cols[m])), shape=x.shape)
    return mk(~test), mk(test)


def tune_ease(x, grid=EASE_GRID, seed: int = 0, k: int = 10, metric: str = "ndcg@10"):
    """Returns (best lam, {lam: metric}) on a per-user random 80/20 validation split of ``x``."""
    from trainer.evaluate import _metrics

    tr, va = validation_split(x, 0.2, seed)
    users = np.flatnonzero(np.diff(va.indptr) > 0)
    truths = [set(va.indices[va.indptr[u]:va.indptr[u + 1]].tolist()) for u in users]
    n_items = x.shape[1]
    dummy = (np.zeros((n_items, 1), np.float32), np.full(n_items, 1.0 / n_items), np.zeros(n_items, bool))
    scores = {}
    for lam in grid:
        rec = ease(tr, users, k=max(k, 20), lam=lam)
        recs = [r[r >= 0] for r in rec]
        scores[float(lam)] = _metrics(recs, truths, *dummy)[metric]
    best = max(scores, key=lambda l: (scores[l], -l))
    return best, scores


def ease(x, users=None, k: int = 10, lam: float | None = 500.0, grid=EASE_GRID, seed: int = 0) -> np.ndarray:
    """EASE top-k; ``lam=None`` tunes it on a validation split first (``tune_ease``)."""
    x = binarize(x)
    if lam is None:
        lam, _ = tune_ease(x, grid, seed)
    b = ease_weights(x, lam)
    return top_unseen(lambda u: x[u] @ b, x, users, k)


__all__ = ["popularity", "item_knn", "item_knn_similarity", "ease", "ease_weights", "tune_ease",
           "validation_split", "top_unseen", "binarize", "EASE_GRID"]
