"""Item-to-item candidates: the neighbours of a user's seed items, scored by the weighted sum of their i2i
scores (``sum over seeds s of weight[s] * score(s -> item)``), best first.

The i2i table is ``rows int32[n_items, M]`` (-1 pads short lists) with ``scores float32[n_items, M]``. The
kernel accumulates in a hash table sized by the seeds' neighbour lists, so its cost does not grow with the
catalogue, and keeps the best ``k`` with a heap; ties go to the lower row.

The table is the bundle's, the same for every call: its rows are refused when they are not integers or do not
fit int32 (a dtype test; an int32 table, the bundle's, is used as it is), and a score that is not finite is
refused as the kernel reads it (only the seeds' lists, no pass over the table per call).
"""
from __future__ import annotations

import numpy as np

from recserve._core import _neighbours
from recserve._core._validate import f32_1d, i64_1d, integer, to_int32

_EMPTY = (np.zeros(0, np.int32), np.zeros(0, np.float32))


def _table(rows, scores) -> tuple[np.ndarray, np.ndarray]:
    r, s = np.asarray(rows), np.asarray(scores)
    if r.ndim != 2 or s.shape != r.shape:
        raise ValueError(f"i2i rows and scores must be 2-D of one shape, got {r.shape} and {s.shape}")
    if r.dtype != np.int32:
        if r.size and r.dtype.kind not in "iu":
            raise ValueError(f"i2i rows must hold integers, got dtype {r.dtype}")
        r = to_int32(r, "i2i rows")
    if not r.flags.c_contiguous:
        r = np.ascontiguousarray(r)
    if s.dtype != np.float32 or not s.flags.c_contiguous:
        s = np.ascontiguousarray(s, np.float32)
    return r, s


def neighbour_sum(seed_rows, seed_weights, i2i_rows: np.ndarray, i2i_scores: np.ndarray, k: int):
    """(int32 rows, float32 scores) of the best ``k`` neighbours of ``seed_rows`` (seeds may repeat)."""
    seeds = i64_1d(seed_rows, "seed rows")
    w = f32_1d(seed_weights, "seed weights")
    if len(w) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds but {len(w)} weights")
    k = integer(k, "k")
    if len(seeds) == 0 or k <= 0:
        return _EMPTY
    nb, sc = _table(i2i_rows, i2i_scores)
    k = min(k, len(seeds) * nb.shape[1])            # no more distinct neighbours than that
    if seeds.min() < 0 or seeds.max() >= len(nb):
        raise ValueError(f"seed row out of range [0, {len(nb)})")
    if not np.isfinite(w).all():
        raise ValueError("seed weights must be finite")
    return _neighbours.neighbour_sum(seeds, w, nb, sc, k)


def neighbour_sum_reference(seed_rows, seed_weights, i2i_rows, i2i_scores, k: int):
    """Plain numpy reference of :func:`neighbour_sum`."""
    seed = np.asarray(seed_rows, np.int64)
    if len(seed) == 0 or k <= 0:
        return _EMPTY
    cand = np.asarray(i2i_rows)[seed].ravel()
    sc = (np.asarray(i2i_scores, np.float32)[seed] * np.asarray(seed_weights, np.float32)[:, None]).ravel()
    ok = cand >= 0
    if not ok.any():
        return _EMPTY
    uniq, inv = np.unique(cand[ok], return_inverse=True)
    total = np.bincount(inv, weights=sc[ok], minlength=len(uniq))
    order = np.lexsort((uniq, -total))[:k]
    return uniq[order].astype(np.int32), total[order].astype(np.float32)
