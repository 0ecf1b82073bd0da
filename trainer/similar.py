"""The stored SimilarItems neighbour lists: each item's nearest items by embedding, as the server would ask
the index for them, computed once at build time.

SimilarItems then reads the first entries of one row of ``sim_rows`` (a few hundred contiguous bytes)
instead of searching the graph, whose search touches thousands of scattered vectors. A row is the answer
of a search at least as broad as the server's own (breadth ``similar_breadth(similar_ef, k)`` with the
row's k, which is at least the k the server asks for), so it holds the same items or nearer ones: with
the server's ``similar_ef`` at or above the row's breadth the two are identical. (Bundles built before
``similar_breadth`` searched their rows with breadth ``max(similar_ef, k)``.) The server searches live when
a request needs more than a row holds (a large k, a filter that keeps less than 3/4 of the catalogue).
"""
from __future__ import annotations

import numpy as np

from recserve._core import candidates as C
from trainer import progress

CHUNK = 20_000      # items per batched query (bounds the int64 labels hnswlib returns)


def rows_breadth(ef: int, n_items: int) -> int:
    """The breadth :func:`similar_lists` searches a catalogue of ``n_items`` with (the manifest's
    ``index.similar_rows_ef``: the server reads a row only where a live search would be no broader)."""
    return C.similar_breadth(ef, min(C.similar_list_k(n_items), n_items))


def similar_lists(index, item_emb: np.ndarray, ef: int, threads: int = 2) -> np.ndarray:
    """int32[n_items, min(similar_list_k(n_items), n_items)]: row i = the index's answer for item i's own
    vector at that k, searched with breadth ``similar_breadth(ef, k)``, nearest first."""
    n = len(item_emb)
    k = min(C.similar_list_k(n), n)
    out = np.empty((n, k), np.int32)
    if n == 0 or k == 0:
        return out
    before = index.ef
    try:
        index.set_ef(rows_breadth(ef, n))
        for a in progress.bar(range(0, n, CHUNK), "similar-item lists", total=-(-n // CHUNK)):
            labels, _ = index.knn_query(np.asarray(item_emb[a:a + CHUNK], np.float32), k=k, num_threads=threads)
            out[a:a + CHUNK] = labels
    finally:
        index.set_ef(before)
    return out
