"""MMR diversity re-ranking with creator rules.

Greedily picks up to k of n candidates maximising ``lam * relevance[i] - (1 - lam) * max_sim(i, selected)``
(cosine similarity of item embeddings). The kernel is lazy: after the first pick a candidate's objective can
only fall, so candidates wait in a heap by the objective last computed and only the one on top is brought
up to date; the picks are those of a full scan at every step (the reference), at about n + a few k
similarities instead of k * n. Rules: at most ``max_per_creator`` items per creator (0 = unlimited; may
return fewer than k), and with ``no_adjacent`` no two consecutive items by the same creator unless only
that creator's items remain. ``lam = 1`` gives exactly the relevance order (ties by position).
Relevance is used as given (scale it, e.g. min-max, so it is comparable with cosine similarity); an
optional novelty boost adds ``novelty_weight * novelty[i]`` to it (e.g. novelty = 1 for new items).
A call can continue the greedy of picks made before it: ``prior_sim`` gives each candidate's max similarity
to them and ``after_creator`` the creator of the last.
"""
from __future__ import annotations

import numpy as np

from recserve._core import _mmr
from recserve._core._validate import f32_1d, f32_2d, integer, integers, rows_1d


def dense_codes(creators) -> np.ndarray:
    """Re-code arbitrary creator ids (negative = unknown) to 0..m-1 in id order, -1 kept for unknown (the
    reference's coding; the kernel codes them its own way, which only numbers them differently)."""
    c = np.asarray(creators, np.int64)
    out = np.full(len(c), -1, np.int32)
    known = c >= 0
    if known.any():
        _, inv = np.unique(c[known], return_inverse=True)
        out[known] = inv
    return out


def _boosted(relevance, novelty, novelty_weight: float) -> np.ndarray:
    rel = f32_1d(relevance, "relevance")
    if novelty is None or novelty_weight == 0.0:
        return rel
    nov = f32_1d(novelty, "novelty")
    if len(nov) != len(rel):
        raise ValueError(f"{len(rel)} relevance scores but {len(nov)} novelty values")
    if not np.isfinite(novelty_weight) or not np.isfinite(nov).all():
        raise ValueError("novelty and novelty_weight must be finite")
    return (rel + np.float32(novelty_weight) * nov).astype(np.float32)


def mmr(relevance, item_emb, rows, k: int, lam: float, creators=None, max_per_creator: int = 0,
        no_adjacent: bool = False, novelty=None, novelty_weight: float = 0.0, prior_sim=None,
        after_creator: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (positions into the candidate arrays, the max-similarity penalty of each pick: its max cosine
    similarity to the picks before it; 0 for the first pick, unless ``prior_sim`` is given, and when
    ``lam`` = 1, where none is computed)."""
    rel = _boosted(relevance, novelty, novelty_weight)
    cr = None if creators is None else np.ascontiguousarray(integers(creators, "creators"))
    prior = None if prior_sim is None else f32_1d(prior_sim, "prior_sim")
    after = -1 if after_creator is None else integer(after_creator, "after_creator", lo=None)
    return _mmr.mmr(rel, f32_2d(item_emb, "item_emb"), rows_1d(rows, "rows"), integer(k, "k"), float(lam), cr,
                    integer(max_per_creator, "max_per_creator", lo=0), bool(no_adjacent), prior, max(after, -1))


def mmr_reference(relevance, item_emb, rows, k, lam, creators=None, max_per_creator=0, no_adjacent=False,
                  novelty=None, novelty_weight=0.0, prior_sim=None, after_creator=None):
    """numpy reference: the same greedy as a full scan at every pick, in whole-array operations per pick (the
    similarity update is a BLAS matrix-vector product; the creator rules are masks from per-creator counts)."""
    rel = np.asarray(relevance, np.float32).astype(np.float64)
    if novelty is not None and novelty_weight != 0.0:
        rel = (np.asarray(relevance, np.float32) + np.float32(novelty_weight) * np.asarray(novelty, np.float32)
               ).astype(np.float64)
    E = np.asarray(item_emb[np.asarray(rows, np.int64)], np.float64)
    norms = np.linalg.norm(E, axis=1)
    E = E / np.where(norms > 0, norms, 1.0)[:, None]
    E[norms == 0] = 0
    n = len(rel)
    cr = None if creators is None else dense_codes(creators)
    # picks per creator code; code -1 (unknown) reads the last slot, which stays 0
    count = np.zeros(0 if cr is None else int(cr.max(initial=-1)) + 2, np.int64)
    max_sim = np.full(n, -np.inf) if prior_sim is None else np.asarray(prior_sim, np.float32).astype(np.float64)
    used = np.zeros(n, bool)
    last = -1
    if cr is not None and after_creator is not None and after_creator >= 0:
        same = np.flatnonzero(np.asarray(creators, np.int64) == after_creator)
        last = int(cr[same[0]]) if len(same) else -1
    picks, pens = [], []
    for t in range(int(prior_sim is not None), min(k, n) + int(prior_sim is not None)):
        obj = lam * rel - ((1 - lam) * max_sim if (t > 0 and lam < 1) else 0.0)
        ok = ~used
        if cr is not None and max_per_creator > 0:
            ok &= (cr < 0) | (count[cr] < max_per_creator)
        if not ok.any():
            break
        pool = ok
        if cr is not None and no_adjacent and last >= 0:
            cand = ok & (cr != last)
            pool = cand if cand.any() else ok
        idx = np.flatnonzero(pool)
        best = int(idx[np.argmax(obj[idx])])
        picks.append(best)
        pens.append(max_sim[best] if t > 0 and lam < 1 else 0.0)
        used[best] = True
        if cr is not None:
            last = int(cr[best])
            if last >= 0:
                count[last] += 1
        if lam < 1:
            max_sim = np.maximum(max_sim, E @ E[best])
    return np.array(picks, np.int32), np.array(pens, np.float32)
