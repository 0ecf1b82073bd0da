"""Candidates for many users at once, through the server's own retrieval (`recserve._core.candidates`).

Only the ANN query is batched here (hnswlib gives the same neighbours for a query alone or in a batch);
every other step runs the shared per-user functions. The catalogue is the one at ``art.now``: the items
created after it (``art.unreleased``) are in no list, as the server leaves them out at a request's time.
"""
from __future__ import annotations

import contextlib

import numpy as np

from recserve._core import candidates as C
from recserve._core.embed import user_vectors
from recserve._core.merge import Merged, exclusion_bitset, merge_candidates
from recserve._core.regional import RegionalTrending
from trainer.io import DataError


def user_vecs(art, users: np.ndarray, params: dict) -> np.ndarray:
    """User vectors of ``users`` from their bundle histories (same as ``C.history_vector`` one by one)."""
    vecs = np.zeros((len(users), art.item_emb.shape[1]), np.float32)
    for k, u in enumerate(users):
        h_items, h_ts, h_ev = art.history(int(u))
        vecs[k] = C.history_vector(art.item_emb, h_items, h_ev, h_ts, art.now, params)
    return vecs


@contextlib.contextmanager
def hidden_from(index, rows):
    """While in the block, ``index`` leaves ``rows`` out of every answer: they are marked deleted, which
    hnswlib's search skips in its own loop, as ``knn_query(filter=...)`` does (same test, same answers) but
    without calling into Python for every node it visits (with many items not released yet, the filter made
    the tuning searches of a build tens of times slower). The marks are taken off afterwards, so the index
    that is saved holds every item."""
    rows = [int(r) for r in np.asarray(rows).ravel()]
    for r in rows:
        index.mark_deleted(r)
    try:
        yield
    finally:
        for r in rows:
            index.unmark_deleted(r)


def ann_batch(art, vecs: np.ndarray, users: np.ndarray, params: dict, threads=2):
    """Per user: (rows, scores) from the index, asked as the server asks (``C.ann_lists``: ``ann_first_k``
    neighbours, then ``ann_k`` for the users whose first answer is short once their consumed items are
    dropped)."""
    n_items = len(art.item_emb) - len(art.unreleased)      # the catalogue at art.now
    out = [None] * len(users)
    lens = np.array([art.hist_indptr[u + 1] - art.hist_indptr[u] for u in users])
    first = np.array([C.ann_first_k(params, int(n), n_items) for n in lens])
    full = np.array([C.ann_k(params, int(n), n_items) for n in lens])
    art.index.set_ef(int(params["ef"]))     # as served: hnswlib searches with max(ef, k) per query

    def ask(ks, which):
        for k in np.unique(ks[which]):
            sel = np.flatnonzero(which & (ks == k))
            try:
                labels, dist = art.index.knn_query(vecs[sel], k=int(k), num_threads=threads)
            except RuntimeError as exc:     # hnswlib cannot reach k items from these vectors
                raise DataError(f"the index returns fewer than {int(k)} neighbours ({exc}): too little "
                                "training data for this catalogue?") from None
            for j, s in enumerate(sel):
                out[s] = (labels[j].astype(np.int32), (1.0 - dist[j]).astype(np.float32))

    live = np.linalg.norm(vecs, axis=1) > 0
    with hidden_from(art.index, art.unreleased):
        ask(first, live)
        short = np.zeros(len(users), bool)
        for s in np.flatnonzero(live & (full > first)):
            short[s] = not C.ann_filled(out[s][0], art.consumed(int(users[s])), params)
        ask(full, short)
    empty = (np.zeros(0, np.int32), np.zeros(0, np.float32))
    art.index.set_ef(int(params["ef"]))
    return [o if o is not None else empty for o in out]


def regional_lists(art, params: dict) -> RegionalTrending | None:
    """The per-country trending lists a user's popular source reads, when ``params`` say so
    (``warm_trending``) and ``art`` has any (None: every user reads the global list)."""
    cl = art.countries
    if params.get("warm_trending", C.DEFAULT_PARAMS["warm_trending"]) != "country" or not cl.n_lists:
        return None
    return RegionalTrending(cl.user_code, cl.indptr, cl.rows, cl.scores, cl.weight, art.trend_rows, art.trend_scores,
                            len(art.item_emb))


def candidates_for(art, users: np.ndarray, params: dict, threads=2, k: int | None = None):
    """Yields (user, user_vec, lists, merged) for each user, exactly as served: the history (the newest
    ``history_len`` events) seeds the sources, and every item she consumed, however old, is excluded. The
    popular source is her country's trending list where ``params`` and ``art`` have one (the server reads
    the request's ``context.country`` first; training and evaluation know the users file's only).

    ``k`` None: the candidates the ranker is trained on (the quotas and cap of ``params``). A ``k``: those
    of a request for k items without filters, as the server merges them (:func:`C.served_quota`, at least
    four times k candidates), ``lists``' popular list the one merged, or the one for k items where that
    is longer (the evaluation's trending row is the source's first k)."""
    vecs = user_vecs(art, users, params)
    anns = ann_batch(art, vecs, users, params, threads)
    n_items = len(art.item_emb)
    hidden = art.unreleased
    regional = regional_lists(art, params)
    for j, u in enumerate(users):
        h_items, h_ts, _ = art.history(int(u))
        c = regional.user_list(int(u)) if regional is not None else None
        trend = (art.trend_rows, art.trend_scores) if c is None else \
            regional.head(c, C.popular_depth(params, len(h_items)))
        lists = C.source_lists(h_items, h_ts, anns[j][0], anns[j][1], art.i2i_rows, art.i2i_scores, *trend,
                               params, hidden=hidden)
        if k is None:
            merged = C.merge_for_user(lists, art.consumed(int(u)), n_items, params, extra_excluded=hidden)
        else:
            merged = _as_served(art, lists, u, len(h_items) > 0, params, k, regional, c)
        yield int(u), vecs[j], lists, merged


def _as_served(art, lists: list, u: int, has_history: bool, params: dict, k: int, regional, c) -> Merged:
    """The merge of ``lists`` for a request of user ``u`` for ``k`` items without filters (the server's
    ``Recommender.recommend``), its popular list set in ``lists``."""
    gone = C.sorted_unique(np.concatenate([np.asarray(art.consumed(int(u)), np.int64),
                                           np.asarray(art.unreleased, np.int64)]))
    bits = exclusion_bitset(len(art.item_emb), gone) if len(gone) else None
    quota, budget = C.served_quota(params, k, has_history)
    q = params["quotas"]
    head = ((lambda n: regional.head(c, n)) if c is not None else
            (lambda n: (art.trend_rows[:n], art.trend_scores[:n])))
    at = C.SOURCES.index("popular")
    trained = lists[at]

    def merge(pop, quota):
        lists[at] = pop
        return merge_candidates(lists, [quota if s == "popular" else int(q[s]) for s in C.SOURCES], budget,
                                len(art.item_emb), bits)

    refill = C.head_without(head, gone)

    def popular(n):
        return C.popular_as_served(trained, n, gone, refill)

    merged, pop = C.top_up(merge, popular, quota, C.PER_K * k, at, bits)
    lists[at] = max(pop, popular(k), key=lambda p: len(p[0]))
    return merged


__all__ = ["user_vecs", "ann_batch", "candidates_for", "regional_lists", "user_vectors"]
