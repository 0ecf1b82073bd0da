"""Feature tables, popularity lists and histories computed from the interactions before ``now``.

Everything here is a function of (training interactions, catalogue, ``now``), so the same code builds
the ranker's training-time view (``now`` = the label cut) and the served bundle (``now`` = the data end).
"""
from __future__ import annotations

import numpy as np

from recserve._core.cross import FeatureSchema
from recserve._core.candidates import SOURCES

DAY = 86400.0
CONTEXT_COLUMNS = ["hour", "weekday", "device"]
ITEM_COLUMNS = ["price", "category", "creator", "created_days", "in_stock", "popularity", "trending",
                "views_7d", "views_30d", "purchases_7d", "purchases_30d", "ctr", "conversion",
                "avg_rating", "n_ratings"]
USER_BASE_COLUMNS = ["account_age_days", "n_events", "n_views", "n_clicks", "n_carts", "n_purchases",
                     "avg_spend", "days_since_last", "n_distinct_items"]


def vocab(values: np.ndarray, unknown: str | None = None):
    """(sorted vocabulary, codes); ``unknown`` values get code -1 and stay out of the vocabulary."""
    v = np.asarray(values, object)      # not .astype(str): a fixed-width copy costs rows x the longest value
    known = v != unknown if unknown is not None else np.ones(len(v), bool)
    voc, inv = np.unique(v[known], return_inverse=True)
    codes = np.full(len(v), -1, np.int64)
    codes[known] = inv
    return voc.astype(str), codes


EXTRA_PREFIX = "x_"     # extra input columns become item.x_<name> / user.x_<name> features


def make_schema(n_share: int, item_extra=(), user_extra=()) -> FeatureSchema:
    """``n_share``: the categories coded 0..n_share-1 get a user share column (``cat_share_<code>``)."""
    users = (USER_BASE_COLUMNS + [f"cat_share_{k}" for k in range(n_share)]
             + [EXTRA_PREFIX + c for c in user_extra])
    items = list(ITEM_COLUMNS) + [EXTRA_PREFIX + c for c in item_extra]
    return FeatureSchema(user_columns=users, item_columns=items, context_columns=CONTEXT_COLUMNS,
                         sources=list(SOURCES), price_column="price", spend_column="avg_spend",
                         category_column="category", category_share_prefix="cat_share_",
                         n_categories=n_share, created_column="created_days",
                         # the creation day gives the item's age (x.item_age_days); as a day number of its
                         # own it would let the ranker tell the label window's new items from the items new
                         # when it serves, long after
                         unranked_item_columns=["created_days"])


def decayed_weights(ts, event, now: float, event_weights, half_life_days: float) -> np.ndarray:
    """Each interaction's event weight, halved every ``half_life_days`` before ``now``: what a trending
    count sums (the global one here, each country's in ``trainer.countries``)."""
    return np.asarray(event_weights, np.float64)[event] * 0.5 ** (np.maximum(0.0, now - ts) / (half_life_days * DAY))


def popularity(item, ts, event, n_items, now, event_weights, half_life_days):
    pop = np.bincount(item, weights=np.asarray(event_weights, np.float64)[event], minlength=n_items)
    trend = np.bincount(item, weights=decayed_weights(ts, event, now, event_weights, half_life_days),
                        minlength=n_items)
    return np.log1p(pop).astype(np.float32), np.log1p(trend).astype(np.float32)


def ranked(scores: np.ndarray):
    order = np.lexsort((np.arange(len(scores)), -scores)).astype(np.int32)
    return order, scores[order].astype(np.float32)


def per_category(ranked_rows: np.ndarray, category: np.ndarray, n_cat: int):
    """CSR lists of each category's items in the order of ``ranked_rows`` (a ranked list of every item)."""
    cats = category[ranked_rows]
    order = np.argsort(cats, kind="stable")
    indptr = np.zeros(n_cat + 1, np.int64)
    np.cumsum(np.bincount(cats, minlength=n_cat), out=indptr[1:])
    return indptr, ranked_rows[order].astype(np.int32)


def item_features(ds, item, ts, event, value, now, cat_codes, creator_codes, pop, trend) -> np.ndarray:
    n = ds.n_items
    cols = {}
    cols["price"] = ds.item_price
    cols["category"] = cat_codes
    cols["creator"] = creator_codes
    cols["created_days"] = ds.item_created / DAY
    cols["in_stock"] = ds.item_in_stock
    cols["popularity"] = pop
    cols["trending"] = trend
    for days in (7, 30):
        recent = ts >= now - days * DAY
        cols[f"views_{days}d"] = np.bincount(item[recent & (event == 0)], minlength=n)
        cols[f"purchases_{days}d"] = np.bincount(item[recent & (event == 3)], minlength=n)
    views = np.bincount(item[event == 0], minlength=n).astype(np.float64)
    clicks = np.bincount(item[event == 1], minlength=n)
    buys = np.bincount(item[event == 3], minlength=n)
    cols["ctr"] = (clicks + 0.1) / (views + 1.0)          # smoothed so unseen items are not 0/0
    cols["conversion"] = (buys + 0.01) / (views + 1.0)
    rated = (event == 4) & np.isfinite(value)
    n_r = np.bincount(item[rated], minlength=n).astype(np.float64)
    s_r = np.bincount(item[rated], weights=value[rated].astype(np.float64), minlength=n)
    cols["avg_rating"] = np.where(n_r > 0, s_r / np.maximum(n_r, 1), 0.0)
    cols["n_ratings"] = n_r
    extra = [np.asarray(v, np.float64) for v in ds.item_extra.values()]
    return np.column_stack([np.asarray(cols[c], np.float64) for c in ITEM_COLUMNS] + extra).astype(np.float32)


def user_features(ds, user, item, ts, event, now, cat_codes, n_share) -> np.ndarray:
    """One row per user; ``cat_share_k`` (k < ``n_share``) is the share of her events in category k."""
    n = ds.n_users
    signup = np.where(np.isfinite(ds.user_signup), ds.user_signup, np.nan)
    first = np.full(n, np.inf)
    np.minimum.at(first, user, ts)
    start = np.fmin(signup, first)
    age = np.where(np.isfinite(start), (now - start) / DAY, 0.0)
    counts = np.bincount(user, minlength=n).astype(np.float64)
    by_ev = [np.bincount(user[event == e], minlength=n) for e in range(4)]
    buy = event == 3
    spend = np.bincount(user[buy], weights=ds.item_price[item[buy]], minlength=n)
    avg_spend = np.where(by_ev[3] > 0, spend / np.maximum(by_ev[3], 1), 0.0)
    last = np.full(n, -np.inf)
    np.maximum.at(last, user, ts)
    since = np.where(np.isfinite(last), (now - last) / DAY, -1.0)
    key = np.unique(user.astype(np.int64) * ds.n_items + item)
    distinct = np.bincount((key // ds.n_items).astype(np.int64), minlength=n)
    shares = np.zeros((n, n_share))
    ic = cat_codes[item]
    tracked = ic < n_share
    np.add.at(shares, (user[tracked], ic[tracked]), 1.0)
    shares /= np.maximum(counts, 1)[:, None]
    base = np.column_stack([age, counts, *by_ev, avg_spend, since, distinct])
    extra = [np.asarray(v, np.float64)[:, None] for v in ds.user_extra.values()]
    return np.hstack([base, shares, *extra]).astype(np.float32)


def histories(user, item, ts, event, n_users, history_len=200):
    """CSR histories, oldest first, each bounded to its last ``history_len`` events."""
    order = np.lexsort((item, event, ts, user))      # the item breaks ties: the input's row order does not matter
    u, i, t, e = user[order], item[order], ts[order], event[order]
    counts = np.bincount(u, minlength=n_users)
    starts = np.zeros(n_users + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    pos_from_end = starts[u + 1] - np.arange(len(u)) - 1
    keep = pos_from_end < history_len
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.minimum(counts, history_len), out=indptr[1:])
    return indptr, i[keep].astype(np.int32), t[keep].astype(np.float64), e[keep].astype(np.int8)


def consumed(user, item, n_users: int, n_items: int, hist_indptr, hist_items):
    """The distinct items of the users whose bounded history (``histories``) misses some of them: (sorted
    user rows, CSR indptr over them, each one's sorted distinct item rows over all her interactions). Every
    other user's distinct items are her history's, so they are not stored twice."""
    n = np.int64(n_items)
    pairs = np.unique(user.astype(np.int64) * n + item)
    owner = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(hist_indptr))
    kept = np.unique(owner * n + np.asarray(hist_items, np.int64))
    # a history is a subset of the interactions: its distinct items are all of them when they number as many
    users = np.flatnonzero(np.bincount(pairs // n, minlength=n_users) != np.bincount(kept // n, minlength=n_users))
    rows = pairs[np.isin(pairs // n, users)]
    indptr = np.zeros(len(users) + 1, np.int64)
    np.cumsum(np.bincount(np.searchsorted(users, rows // n), minlength=len(users)), out=indptr[1:])
    return users.astype(np.int32), indptr, (rows % n).astype(np.int32)
