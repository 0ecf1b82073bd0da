"""Re-ranking: min-max scaled relevance, then MMR with creator rules (the server's re-rank stage and the
trainer's evaluation of it run this same code)."""
from __future__ import annotations

import numpy as np

from recserve._core.mmr import mmr

FILL_SPARE = 8   # extra picks of the uncapped fill, alternatives for the no-adjacent-creators rule


def minmax(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    if len(s) == 0:
        return s.astype(np.float32)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 1e-12:
        return np.ones(len(s), np.float32)
    return ((s - lo) / (hi - lo)).astype(np.float32)


def penalties(item_emb: np.ndarray, rows: np.ndarray, lam: float) -> np.ndarray:
    """What MMR subtracts from each answer item's relevance, in the answer's final order:
    ``(1 - lam) * max cosine similarity to the items above it``; 0 for the first item and when lam = 1."""
    n = len(rows)
    out = np.zeros(n, np.float32)
    if n < 2 or lam >= 1.0:
        return out
    e = _unit_rows(item_emb, rows)
    sim = e @ e.T
    sim[np.triu_indices(n)] = -np.inf                  # only the items above
    out[1:] = (1.0 - lam) * sim[1:].max(axis=1)
    return out


def diversify(relevance: np.ndarray, item_emb: np.ndarray, rows: np.ndarray, k: int, lam: float,
              creators: np.ndarray | None, max_per_creator: int, novelty: np.ndarray | None = None,
              novelty_weight: float = 0.0):
    """(positions into the candidates, MMR penalties).

    No two consecutive items by one creator while another creator's item is available; items with
    ``novelty`` 1 (new in the catalogue) get ``novelty_weight`` added to their relevance.

    ``max_per_creator`` is a hard rule while candidates allow; when it leaves fewer than k (a selective
    filter over few creators), the remaining slots are filled by MMR over the rest without the cap, which
    continues the capped picks' greedy: each fill candidate's penalty counts its similarity to them too.
    """
    k = min(k, len(rows))
    if k == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    adjacent_rule = creators is not None
    pos, pen = mmr(relevance, item_emb, rows, k, lam, creators=creators, max_per_creator=max_per_creator,
                   no_adjacent=adjacent_rule, novelty=novelty, novelty_weight=novelty_weight)
    if len(pos) < k and max_per_creator > 0:
        # the creator cap ran out of candidates (a selective filter): fill k from the rest, uncapped
        # a few picks beyond k give the creator rule alternatives at the junction with the capped part
        rest = np.setdiff1d(np.arange(len(rows)), pos)
        extra = FILL_SPARE if adjacent_rule else 0
        prior = _max_similarity(item_emb, rows[rest], rows[pos]) if len(pos) and lam < 1.0 else None
        p2, pen2 = mmr(relevance[rest], item_emb, rows[rest], min(len(rest), k - len(pos) + extra), lam,
                       creators=None if creators is None else creators[rest], no_adjacent=adjacent_rule,
                       novelty=None if novelty is None else novelty[rest], novelty_weight=novelty_weight,
                       prior_sim=prior, after_creator=None if creators is None or not len(pos) else
                       int(creators[pos[-1]]))
        pos = np.concatenate([pos, rest[p2].astype(pos.dtype)])
        pen = np.concatenate([pen, pen2])
        if adjacent_rule:
            # from the top: the capped pass ends with one creator back to back when only she is under the
            # cap, and the uncapped items now offer others
            _separate_creators(pos, pen, creators, 1, k, capped=len(pos) - len(p2))
        pos, pen = pos[:k], pen[:k]
    elif adjacent_rule and _has_pair(creators[pos]):
        # the greedy filled k but ended with one creator back to back (only she was left: under the cap,
        # or at all): move her items up between two others', the answer's items and so the cap unchanged
        pos, pen = pos.copy(), pen.copy()
        _separate_creators(pos, pen, creators, 1, k, capped=k)
    return pos, pen


def _has_pair(c: np.ndarray) -> bool:
    """Whether two consecutive items have one known creator (an unknown one, < 0, is nobody's)."""
    return bool(np.any((c[1:] == c[:-1]) & (c[1:] >= 0)))


def _unit_rows(item_emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The ``rows`` of ``item_emb`` as float64 unit vectors (a zero vector stays 0)."""
    e = np.asarray(item_emb[np.asarray(rows, np.int64)], np.float64)
    norms = np.linalg.norm(e, axis=1)
    return e / np.where(norms > 0, norms, 1.0)[:, None]


def _max_similarity(item_emb: np.ndarray, rows: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Each of ``rows``' max cosine similarity to the ``picked`` rows (float32; 0 for a zero vector)."""
    return (_unit_rows(item_emb, rows) @ _unit_rows(item_emb, picked).T).max(axis=1).astype(np.float32)


def _separate_creators(pos: np.ndarray, pen: np.ndarray, creators: np.ndarray, start: int, k: int,
                       capped: int = 0) -> None:
    """In place, over the first ``k`` from ``start`` on: where an item follows one by its creator, pull up
    the next item by another creator (the fill pass does not know the creator its first pick follows);
    when no later item can, move the item up to the latest earlier slot between two other creators'.
    An unknown creator (< 0) is nobody's: as in the MMR kernel, such items never count as a pair. An item
    from beyond the first k is pulled up only while the one it pushes out is a fill pick: the first
    ``capped`` items (the capped pass's) stay in the answer, so the cap breaks no further than the fill must."""
    c = np.asarray(creators[pos], np.int64).copy()
    unknown = c < 0
    c[unknown] = -1 - np.arange(int(unknown.sum()))          # each its own creator
    fill = np.arange(len(pos)) >= capped
    j = max(start, 1)
    while j < min(k, len(pos)):
        if c[j] != c[j - 1]:
            j += 1
            continue
        later = np.flatnonzero(c[j + 1:] != c[j - 1])
        m = j + 1 + int(later[0]) if len(later) else len(pos)
        if m < k or (m < len(pos) and fill[k - 1]):
            for a in (pos, pen, c, fill):
                a[j:m + 1] = np.roll(a[j:m + 1], 1)
            j += 1
            continue
        slot = next((i for i in range(j - 1, 0, -1) if c[i - 1] != c[j] and c[i] != c[j]), None)
        if slot is None and c[0] != c[j]:
            slot = 0
        if slot is None:
            return                      # nothing can separate them: one creator fills the rest
        for a in (pos, pen, c, fill):
            a[slot:j + 1] = np.roll(a[slot:j + 1], 1)
        j += 1
