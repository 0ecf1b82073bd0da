"""The HNSW index over item embeddings (cosine), with its recall measured against brute force."""
from __future__ import annotations

import hnswlib
import numpy as np

from trainer import progress

CHUNK = 10_000          # items per add_items call (one progress step)


def build_index(item_emb: np.ndarray, M=16, ef_construction=200, ef=200, seed=0, threads=2):
    n, d = item_emb.shape
    index = hnswlib.Index(space="cosine", dim=d)
    index.init_index(max_elements=max(n, 1), M=M, ef_construction=ef_construction, random_seed=seed)
    starts = range(0, n, CHUNK)
    for a in progress.bar(starts, "index (chunks)", total=len(starts)):
        index.add_items(item_emb[a:a + CHUNK], np.arange(a, min(a + CHUNK, n)), num_threads=threads)
    index.set_ef(ef)
    return index


def recall_at_k(index, item_emb: np.ndarray, k=10, sample=500, seed=0, threads=2) -> float:
    """Mean recall@k of the index vs exact cosine search, over a sample of item vectors as queries."""
    n = len(item_emb)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    q = item_emb[rng.choice(n, size=min(sample, n), replace=False)]
    labels, _ = index.knn_query(q, k=k, num_threads=threads)
    sims = q @ item_emb.T
    exact = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    hits = [len(set(a) & set(b)) for a, b in zip(labels.tolist(), exact.tolist())]
    return float(np.mean(hits) / k)
