"""SimilarItems: an item's nearest items by a blend of embedding cosine and co-occurrence weight.

The answer is the best allowed items by the blend. A selective filter (under a quarter of the catalogue, at
most ``BRUTE_MAX`` items) scores every allowed item; a broader one is answered from the item's co-occurrence
neighbours and an embedding search as much broader as the filter is selective, widened (then every allowed
item scored) until the answer is sure to hold the best allowed items: a filter that drops the item's nearest
neighbours (the items just seen, a sold-out brand) would otherwise leave only the neighbours' leftovers.
"""
from __future__ import annotations

import time

import numpy as np

from recserve._core import candidates as CC
from recserve.pipeline import candidates as C
from recserve.pipeline.errors import DeadlineExceeded, NotFound
from recserve.pipeline.filters import allowed_items
from recserve.pipeline.messages import Filters, Item, Result, check_id, check_k

# the search widens this many times, each this many times broader, before every allowed item is scored
SIMILAR_WIDENINGS, SIMILAR_WIDEN = 2, 8


def similar_items(rec, item_id: str, k: int, filters: Filters, deadline: float | None = None) -> Result:
    """SimilarItems of ``rec`` (a :class:`~recserve.pipeline.recommender.Recommender`): the ``k`` best allowed
    items by the blend of :func:`blend_of`, ``item_id`` itself left out."""
    t0 = time.perf_counter()
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("similar")
    check_id(item_id, "item_id")
    k = check_k(k)
    snap = rec._refresh_items()
    row = rec.tables.row_of("item", item_id)
    if row is None:
        raise NotFound("item_id", f"unknown item {item_id!r}")
    allowed, _, n_allowed = allowed_items(rec.tables, rec.n_items, filters, snap)
    hidden = rec._hidden(time.time())          # items not released yet are no answer either
    if len(hidden):
        allowed = np.ones(rec.n_items, bool) if allowed is None else allowed.copy()
        allowed[hidden] = False
        n_allowed = int(np.count_nonzero(allowed))
    n_ok = n_allowed - (1 if allowed is None or allowed[row] else 0)
    want = min(k, n_ok)
    frac = n_ok / max(rec.n_items, 1)
    vec = rec.emb[row]
    nb, nb_score = rec.i2i_rows[row], rec.i2i_scores[row]
    nb_ok = nb >= 0
    nb, nb_score = nb[nb_ok].astype(np.int64), nb_score[nb_ok].astype(np.float32)
    rows, searched = None, None
    # a filter that keeps few items (under a quarter of the catalogue, and at most BRUTE_MAX): every one
    # is scored; otherwise the neighbours and a search broad enough for the filter hold the answer
    if not (frac < C.BRUTE_FRACTION and n_ok <= C.BRUTE_MAX):
        # never narrower than for the default k: the answer of a k up to it is the first k of its answer
        sure = min(max(k, CC.SIMILAR_K), n_ok)
        n_ask = CC.similar_k(max(k, CC.SIMILAR_K), frac, rec.ann.count)
        for _ in range(SIMILAR_WIDENINGS + 1):
            searched, floor = search(rec, row, vec, n_ask)
            rows = CC.sorted_unique(np.concatenate([nb, searched]))
            keep = rows != row
            if allowed is not None:
                keep &= allowed[rows]
            rows = rows[keep]
            blend, from_i2i, from_ann = blend_of(rec.emb, rows, vec, nb, nb_score, searched)
            # an allowed item neither searched nor a neighbour scores 0.7 x its cosine, at most 0.7 x the
            # last searched one's: when the sure-th best blend is not below that, the best are all here
            if len(rows) >= sure and (sure == 0 or floor is None or
                                      -np.partition(-blend, sure - 1)[sure - 1] >= 0.7 * floor):
                break
            if n_ask >= rec.ann.count:      # the whole index searched, still not sure (an empty answer)
                rows = None
                break
            n_ask = min(n_ask * SIMILAR_WIDEN, rec.ann.count)
        else:
            rows = None
        if rows is not None and len(rows) < want:
            rows = None
    if rows is None:
        # every allowed item scored: the best allowed ones are found whether or not they are among the
        # neighbours a search returned
        ok = np.ones(rec.n_items, bool) if allowed is None else allowed.copy()
        ok[row] = False
        rows = np.flatnonzero(ok)
        blend, from_i2i, from_ann = blend_of(rec.emb, rows, vec, nb, nb_score, None)
    if len(blend) > max(4 * want, 4096):     # an exhaustive scoring: the top want first, then their order
        top = np.argpartition(-blend, want - 1)[:want] if want > 0 else np.zeros(0, np.int64)
        order = top[np.argsort(-blend[top], kind="stable")]
    else:
        order = np.argsort(-blend, kind="stable")[:want]
    ids = rec.tables.ids_of("item", rows[order])
    items = [Item(i, b, ["ann"] * e + ["i2i"] * hit) for i, b, e, hit in
             zip(ids, blend[order].tolist(), from_ann[order].tolist(), from_i2i[order].tolist())]
    return Result(items, rec.version, [("total", (time.perf_counter() - t0) * 1000.0)])


def search(rec, row: int, vec: np.ndarray, n_ask: int) -> tuple[np.ndarray, float | None]:
    """The ``n_ask`` items nearest item ``row`` (embedding ``vec``; int64 rows), from the stored lists when
    they are that broad, and the cosine below which every item left out lies (None: none was left out): a
    search at least twice as broad as ``n_ask`` (:func:`~recserve._core.candidates.similar_breadth`) finds
    the items down to its last answer's cosine."""
    breadth = CC.similar_breadth(rec.similar_ef, n_ask)
    if rec.sim_rows is not None and n_ask <= rec.sim_rows.shape[1] and breadth <= rec.sim_rows_ef:
        r = rec.sim_rows[row, :n_ask]      # the stored answer of a search at least as broad
        r = r[r >= 0]
    else:
        r, _ = rec.ann.query(vec, n_ask, None, False, breadth)
    r = np.asarray(r, np.int64)
    if len(r) >= rec.ann.count:
        return r, None
    return r, (float((rec.emb[r] @ vec).min()) if len(r) else float("inf"))


def blend_of(emb: np.ndarray, rows: np.ndarray, vec: np.ndarray, nb: np.ndarray, nb_score: np.ndarray,
             searched: np.ndarray | None):
    """SimilarItems' score of ``rows`` (sorted): 0.7 x cosine + 0.3 x the co-occurrence weight scaled by
    the item's largest one; which rows are co-occurrence neighbours, and which the embedding search found
    (``searched``; None: every row was scored by its embedding)."""
    cos = emb[rows] @ vec
    i2i_part = np.zeros(len(rows), np.float32)
    from_i2i = np.zeros(len(rows), bool)       # a neighbour whatever its weight's sign (EASE's may be < 0)
    if len(nb):
        hit, pos = _positions(rows, nb)
        from_i2i[pos] = True
        # scaled by the largest magnitude: a negative weight (EASE) stays a penalty, whatever the signs
        i2i_part[pos] = nb_score[hit] / (float(np.abs(nb_score).max()) or 1.0)
    if searched is None:
        from_ann = np.ones(len(rows), bool)
    else:
        from_ann = np.zeros(len(rows), bool)
        from_ann[_positions(rows, searched)[1]] = True
    return 0.7 * cos + 0.3 * i2i_part, from_i2i, from_ann


def _positions(rows: np.ndarray, these: np.ndarray):
    """Which of ``these`` are in ``rows`` (sorted), and where: (mask over ``these``, positions in ``rows``)."""
    pos = np.searchsorted(rows, these)
    hit = pos < len(rows)
    hit[hit] = rows[pos[hit]] == these[hit]
    return hit, pos[hit]
