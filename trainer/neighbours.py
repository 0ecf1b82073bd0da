"""Item-to-item neighbours, top M per item, in one shape (``i2i_rows``, ``i2i_scores``) for every model.

* ``cooccurrence_neighbours``: cosine of binary user-item columns; each user contributes their last
  ``per_user`` distinct items (bounds the quadratic cost of heavy users). Any catalogue size.
* ``ease_from_gram``: EASE's closed-form item-item regression (Steck 2019), a dense inverse of the item Gram
  matrix, so only for catalogues up to about ten thousand items (the build gates it by size and memory).
  The served lists keep M weights per item; ``refit_iters`` re-solves the regression on exactly those
  weights (the omitted ones are then made up for by the kept ones instead of simply missing).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from trainer import progress


def cooccurrence_neighbours(user, item, ts, n_users, n_items, M=50, per_user=100, min_count=1):
    """Returns (i2i_rows int32[n_items, M] -1 padded, i2i_scores float32[n_items, M])."""
    order = np.lexsort((-ts, user))
    u, i = user[order], item[order]
    key = u.astype(np.int64) * n_items + i
    _, first = np.unique(key, return_index=True)
    first = np.sort(first)
    u, i = u[first], i[first]                 # distinct (user, item), newest first within user
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    rank = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))
    keep = rank < per_user
    x = sp.csr_matrix((np.ones(keep.sum(), np.float32), (u[keep], i[keep])), shape=(n_users, n_items))
    counts = np.asarray(x.sum(0)).ravel()
    c = (x.T @ x).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    if min_count > 1:
        c.data[c.data < min_count] = 0
        c.eliminate_zeros()
    rows_out = np.full((n_items, M), -1, np.int32)
    scores_out = np.zeros((n_items, M), np.float32)
    norm = np.sqrt(np.maximum(counts, 1))
    for r in progress.bar(range(n_items), "i2i cosine (items)", total=n_items):
        a, b = c.indptr[r], c.indptr[r + 1]
        if a == b:
            continue
        cols = c.indices[a:b]
        s = c.data[a:b] / (norm[r] * norm[cols])
        if len(s) > M:
            top = np.argpartition(-s, M - 1)[:M]
            cols, s = cols[top], s[top]
        o = np.lexsort((cols, -s))
        rows_out[r, :len(o)] = cols[o]
        scores_out[r, :len(o)] = s[o]
    return rows_out, scores_out


def _distinct_pairs(user, item, n_users, n_items):
    key = np.unique(user.astype(np.int64) * n_items + item)
    return sp.csr_matrix((np.ones(len(key), np.float32), (key // n_items, key % n_items)), shape=(n_users, n_items))


def ease_gram(user, item, n_users, n_items) -> np.ndarray:
    """Dense item x item co-occurrence counts (float64) of the distinct (user, item) pairs."""
    x = _distinct_pairs(user, item, n_users, n_items)
    return (x.T @ x).toarray().astype(np.float64)


def spd_inverse(a: np.ndarray, overwrite_a: bool = False) -> np.ndarray:
    """The inverse of a symmetric matrix ``a``: by Cholesky (LAPACK ``potrf`` + ``potri``, about half the
    work of a general inverse: 13.7 s against 23.6 s for the 9,125 items of ml-latest-small on 2 threads)
    when ``a`` is positive definite, as a Gram matrix plus a positive ridge is, else by ``numpy.linalg.inv``
    (which raises on a singular matrix). ``a`` is left as it is, unless ``overwrite_a``: then a Fortran-ordered
    ``a`` becomes the inverse in place (no n x n copy), and a matrix that is not positive definite raises
    ``LinAlgError`` (``a`` is spoilt by then). The result is C-contiguous."""
    from scipy.linalg import lapack

    c, info = lapack.dpotrf(a, lower=True, clean=False, overwrite_a=overwrite_a)
    if info != 0:
        if overwrite_a:
            raise np.linalg.LinAlgError(f"not positive definite (potrf: {info})")
        del c
        return np.linalg.inv(a)
    p, info = lapack.dpotri(c, lower=True, overwrite_c=True)
    del c
    if info != 0:       # potrf succeeded, so the factor's diagonal has no zero: not expected
        raise np.linalg.LinAlgError(f"potri: {info}")
    n, block = len(p), 512          # potri fills the lower triangle: mirror it, a block of rows at a time
    for s in range(0, n, block):
        e = min(n, s + block)
        p[s:e, e:] = p[e:, s:e].T
        d = p[s:e, s:e]
        d[np.triu_indices(e - s, 1)] = d.T[np.triu_indices(e - s, 1)]
    return p if p.flags.c_contiguous else p.T      # symmetric: its transpose is itself, in C order


def ease_from_gram(gram: np.ndarray, lam: float, M: int = 400, threads: int = 2, dropout: float = 0.0,
                   refit_iters: int = 0):
    """EASE item-item weights ``B = I - P / diag(P)`` (diagonal zeroed), ``P = (G + Lambda)^-1``, stored as
    i2i lists: per item the ``M`` weights largest in magnitude (negative weights kept: they are evidence
    against a neighbour), best first. ``Lambda = lam I + dropout * diag(G)``: the second term is the
    emphasised-denoising (EDLAE, Steck 2020) regulariser, stronger on popular items; 0 gives plain EASE.
    ``refit_iters`` > 0: that many conjugate-gradient steps of :func:`refit_support` (the regression
    solved again with only the kept weights free). Returns (i2i_rows int32[n, M] -1 padded,
    i2i_scores float32[n, M])."""
    from threadpoolctl import threadpool_limits

    reg = float(lam) + float(dropout) * np.diag(gram)

    def ridged(order):
        g = np.array(gram, dtype=np.float64, order=order)
        g[np.diag_indices_from(g)] += reg
        return g

    with threadpool_limits(int(threads), "blas"):
        try:
            p = spd_inverse(ridged("F"), overwrite_a=True)      # inverted in place: gram and p, no third
        except np.linalg.LinAlgError:                           # not positive definite (a ridge of 0)
            p = np.linalg.inv(ridged("C"))
    b = p / (-np.diag(p))[None, :]      # b[i, j]: weight of history item i for candidate j
    del p
    np.fill_diagonal(b, 0.0)
    # items nobody took have only zero weights: no neighbours
    b[np.diag(gram) == 0, :] = 0.0
    rows, scores = top_m(b, M)
    del b
    if refit_iters > 0:
        with threadpool_limits(int(threads), "blas"):
            rows, scores = refit_support(gram, reg, rows, scores, int(refit_iters))
    return rows, scores


def refit_support(gram: np.ndarray, reg, rows: np.ndarray, scores: np.ndarray, iters: int = 3):
    """The EASE regression restricted to the kept weights: for each candidate ``j`` and its support
    ``S_j`` (the items whose list holds ``j``), ``(G_SS + Lambda_S) x = G_Sj``, the ridge regression of item
    ``j`` on ``S_j`` alone. The truncated full solution is a poor answer to it when many small weights were
    dropped (their sum is missing from every score); a few Jacobi-preconditioned conjugate-gradient steps
    from it, for every column at once (one dense ``n x n`` product per step), solve it closely. The lists
    keep their items and are re-sorted by the new weights. ``reg``: the diagonal of ``Lambda`` (scalar or
    per item)."""
    n, m = rows.shape
    valid = rows >= 0
    r_idx = np.repeat(np.arange(n), m)[valid.ravel()]
    c_idx = rows[valid].astype(np.int64)
    mask = np.zeros((n, n), bool)
    mask[r_idx, c_idx] = True
    # float32: the steps only refine weights of about 1e-2 (sgemm is twice as fast as dgemm)
    x = np.zeros((n, n), np.float32)
    x[r_idx, c_idx] = scores[valid]
    a = gram.astype(np.float32)
    a[np.diag_indices_from(a)] += np.broadcast_to(np.asarray(reg, np.float32), (n,))
    d_inv = (1.0 / np.diag(a)).astype(np.float32)

    def masked(v):
        v[~mask] = 0.0
        return v

    res = masked(gram.astype(np.float32) - a @ x)
    z = res * d_inv[:, None]
    direction = z.copy()
    rz = (res * z).sum(0)
    for _ in range(iters):
        q = masked(a @ direction)
        den = (direction * q).sum(0)
        alpha = np.divide(rz, den, out=np.zeros_like(rz), where=den > 0)
        x += alpha * direction
        res -= alpha * q
        z = res * d_inv[:, None]
        rz_new = (res * z).sum(0)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        rz = rz_new
        direction = z + beta * direction
    del a, res, z, direction
    vals = x[r_idx, c_idx]
    del x
    new = np.zeros_like(scores)
    new[valid] = vals
    # re-sort each list by weight, descending, ties by column (as ``top_m``); valid entries are a prefix
    out_rows = np.full_like(rows, -1)
    out_scores = np.zeros_like(scores)
    for r in range(n):
        k = int(valid[r].sum())
        if not k:
            continue
        c, v = rows[r, :k], new[r, :k]
        o = np.lexsort((c, -v))
        out_rows[r, :k] = c[o]
        out_scores[r, :k] = v[o]
    return out_rows, out_scores


TOP_M_ROWS = 256        # rows of a weight matrix ``top_m`` ranks at a time (two float64 / int64 blocks)


def top_m(w: np.ndarray, M: int):
    """Per row of a dense weight matrix, the ``M`` non-zero entries largest in magnitude, sorted by weight
    (descending, ties by column)."""
    n, m_cols = w.shape
    M = int(min(M, max(m_cols - 1, 1)))
    rows_out = np.full((n, M), -1, np.int32)
    scores_out = np.zeros((n, M), np.float32)
    if M <= 0 or n == 0:
        return rows_out, scores_out
    if M < m_cols:
        cols = np.empty((n, M), np.intp)
        for s in range(0, n, TOP_M_ROWS):   # a block of rows at a time: no n x n temporaries at EASE's peak
            a = np.abs(w[s:s + TOP_M_ROWS])
            np.negative(a, out=a)
            cols[s:s + TOP_M_ROWS] = np.argpartition(a, M - 1, axis=1)[:, :M]
        del a
    else:
        cols = np.tile(np.arange(m_cols), (n, 1))
    vals = np.take_along_axis(w, cols, 1)
    for r in progress.bar(range(n), "i2i top-M (items)", total=n):
        c, v = cols[r], vals[r]
        nz = v != 0
        c, v = c[nz], v[nz]
        o = np.lexsort((c, -v))
        rows_out[r, :len(o)] = c[o]
        scores_out[r, :len(o)] = v[o]
    return rows_out, scores_out
