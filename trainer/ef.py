"""The serving ``ef`` of the HNSW index: the smallest search breadth that keeps the ANN source's recall.

The server asks the index for ``ann_first_k`` neighbours of a user vector (the ANN quota plus room for
the user's history, at most another quota; again with ``ann_k`` when that answer is short); hnswlib
searches with ``max(ef, k)``. A larger ``ef`` costs time on every request, so the
bundle records the smallest ``ef`` of a grid whose recall against exact (brute-force) search, for real user
vectors and the ``k`` the server would ask, reaches a target; and likewise ``similar_ef`` for SimilarItems,
whose queries are items' own vectors (easier: the query sits in the graph) at ``similar_k`` neighbours.
"""
from __future__ import annotations

import numpy as np

from trainer import progress

DEFAULT_GRID = (16, 32, 48, 64, 96, 128, 192, 256, 384)


def exact_top(item_emb: np.ndarray, vecs: np.ndarray, ks: np.ndarray, chunk: int = 256) -> list[np.ndarray]:
    """Per query, the rows of its ``k`` nearest items by cosine (the index's metric), exactly."""
    norms = np.linalg.norm(item_emb, axis=1)
    emb = item_emb / np.where(norms > 0, norms, 1.0)[:, None]
    out: list[np.ndarray] = []
    for a in range(0, len(vecs), chunk):
        s = vecs[a:a + chunk] @ emb.T
        for j, row in enumerate(s):
            k = int(ks[a + j])
            top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            out.append(top)
    return out


def tune_ef(index, item_emb: np.ndarray, vecs: np.ndarray, ks: np.ndarray, target: float = 0.95,
            grid=DEFAULT_GRID, threads: int = 2, truth_k: int | None = None) -> tuple[dict, list[dict]]:
    """(chosen ``{"ef", "recall"}``, the grid's results): the smallest ``ef`` with mean recall >= ``target``
    (the best of the grid when none reaches it). ``vecs`` are the query vectors (zero ones are skipped), ``ks``
    the k per vector. Recall is the share of the exact ``k`` nearest found among the ``k`` asked for; with
    ``truth_k``, the share of the exact ``truth_k`` nearest found among them (a caller that re-ranks a
    longer answer needs only its true top to be in it)."""
    keep = np.linalg.norm(vecs, axis=1) > 0
    vecs, ks = np.asarray(vecs[keep], np.float32), np.asarray(ks[keep], np.int64)
    if len(vecs) == 0:
        raise ValueError("no user vectors to tune ef on")
    ks = np.minimum(ks, index.get_current_count())
    tks = ks if truth_k is None else np.minimum(ks, int(truth_k))
    truth = exact_top(np.asarray(item_emb, np.float32), vecs, tks)
    before = index.ef
    results = []
    try:
        efs = sorted(set(int(e) for e in grid))
        for ef in progress.bar(efs, "tune ef", total=len(efs)):
            index.set_ef(ef)
            hits = np.zeros(len(vecs))
            for k in np.unique(ks):
                sel = np.flatnonzero(ks == k)
                labels, _ = index.knn_query(vecs[sel], k=int(k), num_threads=threads)
                for j, s in enumerate(sel):
                    hits[s] = len(np.intersect1d(labels[j], truth[s], assume_unique=True)) / tks[s]
            results.append({"ef": ef, "recall": round(float(hits.mean()), 5)})
    finally:
        index.set_ef(before)
    ok = [r for r in results if r["recall"] >= target]
    chosen = min(ok, key=lambda r: r["ef"]) if ok else max(results, key=lambda r: (r["recall"], -r["ef"]))
    return dict(chosen), results
