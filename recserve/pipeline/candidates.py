"""Serving-side candidate helpers around the shared retrieval (``recserve._core.candidates``).

All lists are ``(rows int32, scores float32)`` best first, over the item rows of one bundle. Filters are
turned into an ``allowed`` boolean mask; when it keeps few items the ANN list is computed by brute force
over the allowed subset and the popular list walks the allowed items, so a selective filter still fills k.
"""
from __future__ import annotations

import threading

import numpy as np

from recserve._core.candidates import ann_filter, not_in_sorted

# when the allowed subset is at most this fraction of the items (or this many), search it exhaustively
BRUTE_FRACTION = 0.25
BRUTE_MAX = 20000

EMPTY = (np.zeros(0, np.int32), np.zeros(0, np.float32))


class AnnSource:
    """hnswlib k-NN with guards: the vector's dim, k <= count, and a lock so a query never overlaps an add
    (or another query's search breadth)."""

    def __init__(self, index, item_emb: np.ndarray):
        self.index = index
        self.emb = item_emb
        self.dim = item_emb.shape[1]
        self.count = index.get_current_count()
        self.lock = threading.Lock()  # held by add_items callers too (none in serving today)
        self._ef = int(index.ef)

    def query(self, vec: np.ndarray, k: int, allowed: np.ndarray | None, brute: bool, ef: int | None = None,
              hidden: np.ndarray | None = None):
        """The ``k`` nearest items by cosine, searching with breadth ``max(ef, k)`` (``ef`` None: the
        index's current one); by brute force over ``allowed`` when ``brute``. ``hidden`` (sorted rows: items
        not in the catalogue yet) are skipped by the search itself, as the trainer's search skips them."""
        if vec.shape != (self.dim,) or not np.any(vec):
            return EMPTY
        n_hidden = 0 if hidden is None else len(hidden)
        if brute and allowed is not None:
            subset = np.flatnonzero(allowed)
            return brute_force(self.emb, vec, subset[not_in_sorted(subset, hidden)] if n_hidden else subset, k)
        k = min(k, self.count - n_hidden)
        if k <= 0:
            return EMPTY
        flt = ann_filter(hidden)
        with self.lock:
            if ef is not None and ef != self._ef:
                self.index.set_ef(int(ef))
                self._ef = int(ef)
            try:
                labels, dist = self.index.knn_query(vec.reshape(1, -1), k=k, num_threads=1, filter=flt)
            except RuntimeError as exc:
                # hnswlib found fewer than k (a graph that reaches only part of the catalogue from its
                # entry point): the exact answer instead of a failed request; any other error stands
                if "contiguous 2D array" not in str(exc):
                    raise
                labels = None
        if labels is None:
            every = np.arange(self.count)
            return brute_force(self.emb, vec, every[not_in_sorted(every, hidden)] if n_hidden else every, k)
        return labels[0].astype(np.int32), (1.0 - dist[0]).astype(np.float32)


def brute_force(emb: np.ndarray, vec: np.ndarray, subset: np.ndarray, k: int):
    if len(subset) == 0:
        return EMPTY
    s = emb[subset] @ vec
    k = min(k, len(s))
    top = np.argpartition(-s, k - 1)[:k]
    top = top[np.argsort(-s[top], kind="stable")]
    return subset[top].astype(np.int32), s[top].astype(np.float32)


def drop_rows(rows: np.ndarray, scores: np.ndarray, dropped_sorted: np.ndarray):
    """``(rows, scores)`` without the rows in ``dropped_sorted`` (sorted, unique), order kept."""
    rows = np.asarray(rows, np.int32)
    scores = np.asarray(scores, np.float32)
    if len(dropped_sorted) == 0 or len(rows) == 0:
        return rows, scores
    keep = not_in_sorted(rows, dropped_sorted)
    return rows[keep], scores[keep]


def popular_in_categories(cat_indptr, cat_rows, pop_score_of_row, cats, allowed, limit):
    """Popular per requested category, interleaved so each category is represented."""
    lists = [cat_rows[cat_indptr[c]:cat_indptr[c + 1]] for c in cats]
    if allowed is not None:
        lists = [l[allowed[l]] for l in lists]
    rows = interleave(lists, limit)
    return rows, pop_score_of_row[rows].astype(np.float32)


def interleave(lists: list[np.ndarray], limit: int) -> np.ndarray:
    """The first of each list, then the second of each, ...: at most ``limit`` rows (int32), each list's
    order kept (the lists are disjoint: one per category)."""
    lists = [np.asarray(l)[:max(int(limit), 0)] for l in lists]     # no list gives more than limit
    if not lists:
        return np.zeros(0, np.int32)
    turn = np.concatenate([np.arange(len(l), dtype=np.int64) * len(lists) + j for j, l in enumerate(lists)])
    return np.concatenate(lists)[np.argsort(turn, kind="stable")[:max(int(limit), 0)]].astype(np.int32)
