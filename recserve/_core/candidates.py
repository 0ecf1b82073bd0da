"""Retrieval for one user, shared by the trainer (to build ranker training rows) and the server.

Pure functions over arrays (no I/O, no index object): the caller runs the ANN query itself
(``labels, dist = index.knn_query(vec, k)``; score ``1 - dist``) and passes the result in, so the trainer
can batch its queries while producing exactly the lists the server produces for the same user.

The catalogue at a time ``t`` is the items created at or before ``t`` (:class:`Releases`): the others
(``hidden``) are left out of every list, the ANN search included (hnswlib skips them while it searches, so
its answer still holds ``k`` items), and out of the merge.

Sources, in this order (the ranker's ``src.<s>.*`` features follow it): ``ann`` (user vector -> HNSW),
``i2i`` (item-item neighbours of the last ``i2i_recent`` distinct history items, a sum of neighbour weights
with recency decay ``i2i_decay`` per step back; with ``i2i_recent`` >= the history and no decay it is the
item-kNN / EASE score over the whole history),
``session`` (neighbours of the items of the latest session: events within ``session_gap`` seconds of the
previous one), ``popular`` (time-decayed trending list).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from recserve._core.embed import UserVectorParams, user_vector
from recserve._core.history import drop_seen, history_seeds
from recserve._core.merge import Merged, exclusion_bitset, merge_candidates
from recserve._core.neighbours import neighbour_sum

SOURCES = ["ann", "i2i", "session", "popular"]
DEFAULT_PARAMS = {
    "decay_short": 0.5, "decay_long": 0.02, "alpha": 0.5, "half_life_days": 30.0,
    "event_weights": [1.0, 2.0, 3.0, 5.0, 4.0],
    "quotas": {"ann": 100, "i2i": 80, "session": 40, "popular": 40}, "cap": 200, "ef": 200,
    "mmr_lambda": 0.8, "max_per_creator": 3, "history_len": 200, "i2i_recent": 20, "i2i_decay": 0.1,
    "session_gap": 1800.0,
    # re-ranking: off unless a bundle or the server sets a boost for items created within new_item_days
    "novelty_boost": 0.0, "new_item_days": 14.0,
    # a cold request (no history, no session) ordered by the trending score ("trending") or by the ranker
    # ("ranker"), which was trained on users with a history: bench/cold_users.py measures the two
    "cold_order": "trending",
    # in trending order, the trending list of the request's country (context.country, else the user's), where
    # the bundle has one ("country"), or the global list for every request ("global")
    "cold_trending": "country",
    # the popular source of a request with a history: the trending list of the request's country where the
    # bundle has one ("country"), or the global list ("global"); the ranker was trained on the bundle's
    # choice, so a bundle without the key (built before it) keeps the global list
    "warm_trending": "global",
}


# the bounds of a bundle's serving parameters: those the server's settings of the same names have
# (recserve.config.RANGES), or tighter
MAX_CANDIDATES = 100_000        # cap, candidates and each source's quota
MAX_EF = 1 << 20                # ef, similar_ef (the manifest's index.ef too)
MAX_HISTORY = 1 << 24           # history_len, i2i_recent: the event store keeps at most this many per user
MAX_PER_CREATOR = 10_000        # far above any k a request may ask for (0 = unlimited)
MAX_EVENT_WEIGHT = float(np.finfo(np.float32).max)      # the weights are applied as float32
RANKER_ENGINES = ("forest", "lightgbm")                 # recserve.pipeline.ranking.Ranker.ENGINES
COLD_ORDERS = ("trending", "ranker")
COLD_TRENDINGS = ("country", "global")
WARM_TRENDINGS = COLD_TRENDINGS
# integer parameters: (lowest, highest)
INT_PARAMS = {"cap": (1, MAX_CANDIDATES), "candidates": (1, MAX_CANDIDATES), "ef": (1, MAX_EF),
              "similar_ef": (1, MAX_EF), "history_len": (1, MAX_HISTORY), "i2i_recent": (1, MAX_HISTORY),
              "max_per_creator": (0, MAX_PER_CREATOR)}
# number parameters: (lowest, highest or None for any finite number)
NUMBER_PARAMS = {"alpha": (0, 1), "mmr_lambda": (0, 1), "novelty_boost": (0, 1000), "new_item_days": (0, 1e6),
                 "i2i_decay": (0, None), "session_gap": (0, None), "decay_short": (0, None),
                 "decay_long": (0, None), "half_life_days": (0, None)}
PARAM_RANGES = {**INT_PARAMS, **NUMBER_PARAMS}


def finite_number(v) -> float | None:
    """``v`` as a finite float; None when it is not a finite JSON number (a bool is not one, nor an
    integer beyond the float range)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def int_in(v, lo: int, hi: int) -> bool:
    """Whether ``v`` is an integer (not a bool) in ``[lo, hi]``."""
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def check_params(params: dict) -> None:
    """``ValueError`` naming the first serving parameter of a bundle's manifest that no request could use,
    and what it may be (a hand-edited manifest passes its hashes: the manifest itself is not hashed).

    Every parameter the pipeline reads is optional (it has a default) but, when present, must be usable:
    null is refused as any other wrong type. Keys the pipeline does not read are left alone."""
    if not isinstance(params, dict):
        raise ValueError(f"params: a JSON object of serving parameters, not {type(params).__name__}")
    n_ew = len(DEFAULT_PARAMS["event_weights"])
    if "event_weights" in params:
        ew = params["event_weights"]
        if (not isinstance(ew, list) or len(ew) != n_ew
                or not all(finite_number(w) is not None and 0 <= w <= MAX_EVENT_WEIGHT for w in ew)):
            raise ValueError(f"params.event_weights: {n_ew} numbers in [0, {MAX_EVENT_WEIGHT:.4g}] (view, click, "
                             f"cart, purchase, rating), not {ew!r}")
    for key, (lo, hi) in INT_PARAMS.items():
        if key in params and not int_in(params[key], lo, hi):
            raise ValueError(f"params.{key}: an integer in [{lo}, {hi}], not {params[key]!r}")
    for key, (lo, hi) in NUMBER_PARAMS.items():
        if key not in params:
            continue
        v = finite_number(params[key])
        if v is None or v < lo or (hi is not None and v > hi):
            span = f"a number in [{lo}, {hi}]" if hi is not None else f"a finite number >= {lo}"
            raise ValueError(f"params.{key}: {span}, not {params[key]!r}")
    if "ranker_engine" in params and params["ranker_engine"] not in RANKER_ENGINES:
        raise ValueError(f"params.ranker_engine: one of {', '.join(RANKER_ENGINES)}, not {params['ranker_engine']!r}")
    if "cold_order" in params and params["cold_order"] not in COLD_ORDERS:
        raise ValueError(f"params.cold_order: one of {', '.join(COLD_ORDERS)}, not {params['cold_order']!r}")
    if "cold_trending" in params and params["cold_trending"] not in COLD_TRENDINGS:
        raise ValueError(f"params.cold_trending: one of {', '.join(COLD_TRENDINGS)}, "
                         f"not {params['cold_trending']!r}")
    if "warm_trending" in params and params["warm_trending"] not in WARM_TRENDINGS:
        raise ValueError(f"params.warm_trending: one of {', '.join(WARM_TRENDINGS)}, "
                         f"not {params['warm_trending']!r}")
    if "quotas" in params:
        _check_quotas(params["quotas"])


def _check_quotas(quotas) -> None:
    what = f"a map of each source ({', '.join(SOURCES)}) -> an integer in [0, {MAX_CANDIDATES}]"
    if not isinstance(quotas, dict):
        raise ValueError(f"params.quotas: {what}, not {quotas!r}")
    unknown = [s for s in quotas if s not in SOURCES]
    if unknown:
        raise ValueError(f"params.quotas: unknown source {unknown[0]!r} ({what})")
    missing = [s for s in SOURCES if s not in quotas]
    if missing:
        raise ValueError(f"params.quotas: no quota for {', '.join(missing)} ({what})")
    for s in SOURCES:
        if not int_in(quotas[s], 0, MAX_CANDIDATES):
            raise ValueError(f"params.quotas: {s} must be an integer in [0, {MAX_CANDIDATES}], not {quotas[s]!r}")


def vector_params(params: dict) -> UserVectorParams:
    return UserVectorParams(decay_short=float(params["decay_short"]), decay_long=float(params["decay_long"]),
                            alpha=float(params["alpha"]), half_life=float(params["half_life_days"]))


def history_vector(item_emb: np.ndarray, hist_items, hist_event, hist_ts, now: float, params: dict) -> np.ndarray:
    """The user vector of a history (oldest first): event weights and ages in days from ``now`` (seconds).

    The recency weights are normalised, so only the ages relative to the newest event matter: they are
    passed so (the same vector, without every weight underflowing to 0 for a ``now`` a century later)."""
    rows = np.asarray(hist_items)          # int32 rows go to the kernel as they are
    if len(rows) == 0:
        return np.zeros(item_emb.shape[1], np.float32)
    ew = np.asarray(params["event_weights"], np.float32)[np.asarray(hist_event, np.intp)]
    ages = np.maximum(0.0, (now - np.asarray(hist_ts, np.float64)) / 86400.0)
    ages = (ages - ages.min()).astype(np.float32)
    return user_vector(item_emb, rows, vector_params(params), event_weights=ew, ages=ages)


def sorted_unique(rows) -> np.ndarray:
    """``np.unique`` of a 1-D int array (sort, then keep each first): the same answer, and several times
    faster than numpy's hash-based ``unique`` on the hundreds of rows of a long history."""
    a = np.sort(np.asarray(rows).ravel())
    if len(a) < 2:
        return a
    keep = np.empty(len(a), bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def not_in_sorted(rows: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``rows`` are absent from ``sorted_rows`` (sorted, unique): a binary search each."""
    if len(sorted_rows) == 0 or len(rows) == 0:
        return np.ones(len(rows), bool)
    at = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
    return sorted_rows[at] != rows


def stored_consumed(users, indptr, items, row: int) -> np.ndarray | None:
    """The sorted distinct rows of every item user ``row`` consumed in the bundle's data, however old, when
    the bundle stores them: ``users`` are the sorted rows of the users whose history, cut to the newest
    ``history_len`` events, misses some of their items, ``indptr`` / ``items`` the CSR of their sets (see
    ``trainer.features.consumed``). None for any other user (her history's distinct rows are all of them)
    and for a bundle without these tables (``users`` None)."""
    if users is None or not len(users):
        return None
    k = int(np.searchsorted(users, row))
    if k == len(users) or int(users[k]) != row:
        return None
    return np.asarray(items[int(indptr[k]):int(indptr[k + 1])])


def recent_distinct(hist_items, n: int) -> np.ndarray:
    """The last ``n`` distinct items of a history, newest first (int32): the i2i seeds of
    :func:`source_lists`, by the same kernel (its numpy reference: ``history.recent_distinct_reference``)."""
    rows = np.asarray(hist_items)
    return history_seeds(rows, np.zeros(len(rows)), n, 0, 0.0)[1]


# seeds whose recency weight falls below this share of the newest one's add nothing an i2i list can show
I2I_MIN_WEIGHT = 1e-3
SESSION_SEEDS = 10      # the latest session's distinct items that seed the session source


def i2i_seed_count(params: dict) -> int:
    """How many recent distinct history items seed the ``i2i`` list: ``i2i_recent``, and with a recency
    decay no more than those whose weight ``exp(-decay * step)`` is at least ``I2I_MIN_WEIGHT``."""
    return _seed_count(int(params["i2i_recent"]), float(params["i2i_decay"]))


@functools.lru_cache(maxsize=64)
def _seed_count(recent: int, decay: float) -> int:
    reach = -math.log(I2I_MIN_WEIGHT) / decay if decay > 0 else math.inf    # inf too for a tiny decay
    return min(recent, int(math.floor(reach)) + 1) if reach < recent else recent


def popular_depth(params: dict, n_seen: int) -> int:
    """How much of the trending list :func:`source_lists` reads for a history of ``n_seen`` distinct items
    (a history of that many events reads at most that much)."""
    return 3 * int(params["quotas"]["popular"]) + 2 * int(n_seen) + 1


def source_lists(hist_items, hist_ts, ann_rows, ann_scores, i2i_rows, i2i_scores, trend_rows, trend_scores,
                 params: dict, drop_history: bool = True, hidden=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four candidate lists (``SOURCES`` order), each ``(int32 rows, float32 scores)`` best first, without
    the history's items (the merge excludes them anyway; dropped here so ranks count servable items).
    ``drop_history=False`` keeps them (a request that allows already-consumed items). ``hidden`` (sorted,
    unique rows: the items not in the catalogue yet, :meth:`Releases.hidden`) are dropped from every list."""
    q = params["quotas"]
    seen, recent, sess = history_seeds(hist_items, hist_ts, i2i_seed_count(params), SESSION_SEEDS,
                                       float(params["session_gap"]))
    if not drop_history:
        seen = seen[:0]
    n_seen = len(seen)
    if hidden is not None and len(hidden):
        seen = sorted_unique(np.concatenate([np.asarray(seen, np.int64), np.asarray(hidden, np.int64)]))
    w = np.exp(-float(params["i2i_decay"]) * np.arange(len(recent)))
    i2i = drop_seen(*neighbour_sum(recent, w, i2i_rows, i2i_scores, 3 * int(q["i2i"]) + n_seen), seen)
    session = drop_seen(*neighbour_sum(sess, np.ones(len(sess)), i2i_rows, i2i_scores,
                                       3 * int(q["session"]) + n_seen), seen)
    ann = drop_seen(np.asarray(ann_rows).ravel(), np.asarray(ann_scores).ravel(), seen)
    # long enough that, history dropped, it still holds quota + history + 1 items (the server refills a
    # shorter popular list from the full trending list)
    n_pop = popular_depth(params, n_seen)
    pop = drop_seen(trend_rows[:n_pop], trend_scores[:n_pop], seen)
    return [ann, i2i, session, pop]


class Releases:
    """The items' creation times (unix seconds; NaN or absent: always there), to tell which items are not in
    the catalogue yet at a time ``t``: those created after it. The trainer leaves them out of every list at
    its ``now``, and the server at the request's time."""

    def __init__(self, created):
        c = np.asarray(created, np.float64).ravel()
        c = np.where(np.isnan(c), -np.inf, c)
        self.order = np.argsort(c, kind="stable").astype(np.int32 if len(c) < 2**31 else np.int64)
        self.times = c[self.order]

    def hidden(self, t: float) -> np.ndarray:
        """Sorted rows of the items created after ``t``; costs their number, not the catalogue's."""
        at = int(np.searchsorted(self.times, float(t), side="right"))
        return np.sort(self.order[at:])


def ann_filter(hidden):
    """hnswlib's ``knn_query(filter=...)`` that skips the ``hidden`` rows, or None when there are none (the
    search is then the same as with a filter that keeps everything)."""
    if hidden is None or len(hidden) == 0:
        return None
    skip = frozenset(np.asarray(hidden).tolist())
    return lambda label: label not in skip


def merge_for_user(lists, hist_items, n_items: int, params: dict, extra_excluded=None) -> Merged:
    """Merge ``source_lists`` output, excluding the user's history (and ``extra_excluded`` rows)."""
    ex = np.asarray(hist_items, np.int64)
    if extra_excluded is not None:
        ex = np.concatenate([ex, np.asarray(extra_excluded, np.int64)])
    q = params["quotas"]
    return merge_candidates(lists, [int(q[s]) for s in SOURCES], int(params["cap"]), n_items,
                            exclusion_bitset(n_items, sorted_unique(ex)))


def ann_k(params: dict, n_history: int, n_items: int) -> int:
    """The most neighbours the ANN index is asked for: its quota plus room for every history item."""
    return int(min(n_items, int(params["quotas"]["ann"]) + min(n_history, int(params["history_len"]))))


def ann_first_k(params: dict, n_history: int, n_items: int) -> int:
    """How many neighbours to ask the ANN index for first: the quota plus room for at most a quota's
    worth of history items. Equal to :func:`ann_k` for histories up to the quota; for longer ones the
    index is asked again with :func:`ann_k` only when the first answer is short (:func:`ann_filled`), so
    a long history does not make every request search ``quota + history`` neighbours."""
    q = int(params["quotas"]["ann"])
    return int(min(n_items, q + min(n_history, int(params["history_len"]), q)))


def ann_filled(rows, seen_sorted: np.ndarray, params: dict, allowed=None) -> bool:
    """Whether an ANN answer still holds the ANN quota once the history (``seen_sorted``, sorted unique
    rows) and, at serving, the rows a filter disallows (``allowed`` mask) are dropped."""
    rows = np.asarray(rows, np.int64).ravel()
    rows = rows[rows >= 0]
    keep = not_in_sorted(rows, seen_sorted)
    if allowed is not None and len(rows):
        keep &= allowed[rows]
    return int(np.count_nonzero(keep)) >= int(params["quotas"]["ann"])


def ann_lists(query, params: dict, hist_items, n_items: int, drop_history: bool = True, allowed=None,
              consumed=None):
    """The ANN answer for one user, as served and as trained: ``query(k) -> (rows, scores)`` with
    :func:`ann_first_k`, then with :func:`ann_k` when that answer is short once ``consumed`` (sorted unique
    rows; by default the history's distinct rows) are dropped (see :func:`ann_filled`)."""
    hist = np.asarray(hist_items, np.int64)
    first, full = ann_first_k(params, len(hist), n_items), ann_k(params, len(hist), n_items)
    ans = query(first)
    if not drop_history:
        consumed = hist[:0]
    elif consumed is None:
        consumed = sorted_unique(hist)
    if full > first and not ann_filled(ans[0], consumed, params, allowed):
        ans = query(full)
    return ans


SIMILAR_K = 20      # the k SimilarItems' search breadth is tuned for (the API's default k)


# -- a request's candidates: four times k at least, the popular source making up the rest ------------------
PER_K = 4        # a request for k ranks at least this many times k candidates
TOP_UPS = 3      # merges again with a larger popular quota, at most, to reach them


def served_quota(params: dict, k: int, has_history: bool) -> tuple[int, int]:
    """(the popular source's quota, the candidate budget) of a request for ``k``: at least four times k
    candidates, so that the ranker and the creator rules have room (k, or twice k, candidates left
    ``max_per_creator`` no choice when k neared the cap). A k above a quarter of the cap takes the extra from
    the popular source, every other source keeping its quota; below, every quota is the trained one, so that
    the ranker sees the popular ranks it was trained on (:func:`top_up` goes deeper where the sources are
    short of four times k). With no history and no session (an unknown, anonymous or new user) popular
    items are the only source: four times k of them."""
    quota, cap = int(params["quotas"].get("popular", 0)), int(params["cap"])
    budget = max(cap, PER_K * k)
    if not has_history:
        return max(quota, PER_K * k), budget
    return quota + budget - cap, budget


def top_up(merge, popular_for, quota: int, target: int, popular_bit: int, excluded: np.ndarray | None):
    """``(merged, the popular list)``: ``merge(popular list, quota)`` of the popular list ``popular_for(quota)``
    gives, merged again with a larger quota while fewer than ``target`` candidates are distinct and the
    popular source still fills its quota (at most ``TOP_UPS`` times). A quota counts the items its source
    found, those other sources found too included: where the popular ones overlap the others, the sum of
    the quotas holds fewer distinct items."""
    pop = popular_for(quota)
    merged = merge(pop, quota)
    bit = 1 << popular_bit
    for _ in range(TOP_UPS):
        short = target - len(merged)
        taken = int(np.count_nonzero(merged.sources & bit))
        if short <= 0 or taken < quota:
            break
        # the share of the popular items taken that no other source holds: the rate of new items past the list
        rate = int(np.count_nonzero(merged.sources == bit)) / max(taken, 1)
        quota = top_up_quota(pop[0], quota, merged.rows, excluded, short, rate)
        pop = popular_for(quota)
        merged = merge(pop, quota)
    return merged, pop


MIN_NEW_RATE = 1 / 16       # the least share of new items top_up_quota expects past a popular list's end


def top_up_quota(pop_rows: np.ndarray, quota: int, merged_rows: np.ndarray, excluded: np.ndarray | None,
                 short: int, rate: float = 1.0) -> int:
    """The popular source's quota that adds ``short`` items no source holds yet. The merge takes the first
    ``quota`` rows of ``pop_rows`` its ``excluded`` bitset lets through, the items other sources found too
    among them; past the list's end, it asks for a longer list, at least twice as long, where the items
    still missing come at ``rate`` (the share of new ones among those taken so far, at least
    :data:`MIN_NEW_RATE`): the other sources may hold much of the rest too, and each merge again costs."""
    r = np.asarray(pop_rows, np.int64)
    if excluded is not None and len(r):
        r = r[(excluded[r >> 3] >> (r & 7)) & 1 == 0]
    rest = r[quota:]
    new = np.flatnonzero(not_in_sorted(rest, np.sort(merged_rows)))
    if len(new) >= short:
        return quota + int(new[short - 1]) + 1
    missing = int(np.ceil((short - len(new)) / max(float(rate), MIN_NEW_RATE)))
    return quota + max(len(rest) + missing, quota)


def popular_as_served(trained, quota: int, gone: np.ndarray, refill, allowed: np.ndarray | None = None):
    """The popular list for ``quota`` items of a request whose filter is ``allowed`` (None: none, or the
    in-stock mask): ``trained`` (from :func:`source_lists`: the trending list without the history's items)
    while it holds that many the merge can take, allowed and outside ``gone`` (sorted: the consumed and
    unreleased items, those of events before the history's window too); else ``refill(quota)``, from the
    whole trending list as trained, so that an item's rank in it is its rank in training."""
    takeable = not_in_sorted(trained[0], gone)
    if allowed is not None:
        takeable &= allowed[trained[0]]
    return trained if np.count_nonzero(takeable) >= quota else refill(quota)


def head_without(head, gone: np.ndarray):
    """A ``refill`` for :func:`popular_as_served` with no filter: the first ``quota + len(gone) + 1`` of the
    whole trending list (``head(n)``) without ``gone``."""
    return lambda quota: drop_seen(*head(quota + len(gone) + 1), gone)


# the trainer stores each item's first similar_k(SIMILAR_K, SIMILAR_LIST_FRAC, n) embedding neighbours
# (``sim_rows``): enough for SimilarItems' default k while a filter keeps 3/4 of the catalogue or more
SIMILAR_LIST_FRAC = 0.75


def similar_list_k(n_items: int) -> int:
    """Width of the stored SimilarItems neighbour lists of a catalogue of ``n_items``."""
    return similar_k(SIMILAR_K, SIMILAR_LIST_FRAC, n_items)


def similar_k(k: int, allowed_frac: float, n_items: int) -> int:
    """How many embedding neighbours SimilarItems asks the index for: three times ``k + 1`` (room for the
    item-to-item blend to reorder them, for the item itself), divided by the share of the catalogue a
    filter keeps (its disallowed items are dropped after the query)."""
    return int(min(int((k + 1) * 3 / max(allowed_frac, 1e-9)) + 1, n_items))


SIMILAR_BREADTH = 2     # a SimilarItems search is at least this many times as broad as the items it asks for


def similar_breadth(similar_ef: int, n_ask: int) -> int:
    """The breadth (hnswlib's ef) of a SimilarItems search for ``n_ask`` items: ``similar_ef``, and at least
    twice ``n_ask``. SimilarItems bounds what a search left out by the cosine of its last answer; at ef =
    n_ask the last ranks are where hnswlib misses most (a filter dropping an item's 125 nearest, k = 60:
    16 of 60 answers missed a better allowed item, none at twice the breadth)."""
    return max(int(similar_ef), SIMILAR_BREADTH * int(n_ask))


def context_vector(now: float, device: int = 0) -> np.ndarray:
    """The ranker's context columns (``hour``, ``weekday`` Monday=0, ``device`` code) at unix time ``now``."""
    days = np.floor(now / 86400.0)
    hour = np.floor((now - days * 86400.0) / 3600.0)
    weekday = (days + 3) % 7          # 1970-01-01 was a Thursday
    return np.array([hour, weekday, float(device)], np.float32)
