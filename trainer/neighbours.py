"""Item-to-item neighbours from co-occurrence: cosine of binary user-item columns, top M per item.

Each user contributes their last ``per_user`` distinct items (bounds the quadratic cost of heavy users).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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
    for r in range(n_items):
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
