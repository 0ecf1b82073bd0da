"""Trending per country: what a cold request from a country is ordered by, and the popular source of a
request with a history (``warm_trending``).

A user's country comes from ``users.(csv|parquet)``. For every country with at least ``min_users`` users who
interacted in the fit's window, the items those users interacted with are scored by their time-decayed,
event-weighted count ``D_c(i)`` (the global trending score's count, restricted to the country's users),
shrunk toward the global count ``D_g(i)`` so that a small country is mostly the global list::

    score_c(i) = log1p( S_c / (S_c + prior) * (D_c(i) + prior * D_g(i) / S_g) )

``S_c`` and ``S_g`` are the country's and the whole window's total decayed counts and ``prior`` is in the
same units (events, decayed). An item no user of the country interacted with has ``D_c(i) = 0``, so its
score is ``log1p(weight_c * D_g(i))`` with ``weight_c = S_c * prior / ((S_c + prior) * S_g)``: the lists hold
only the items with ``D_c(i) > 0`` and the server scores every other item from the global trending score.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.features import decayed_weights


@dataclass
class CountryLists:
    ids: list[str] = field(default_factory=list)        # every country named in the users file, sorted
    user_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))   # per user, -1 = none
    indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))      # CSR over the codes
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))        # best first per country
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))    # weight_c; 0 = no list

    @property
    def n_lists(self) -> int:
        return int(np.count_nonzero(np.diff(self.indptr)))


def user_codes(user_country: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The sorted distinct non-empty countries and each user's code in them (-1: none given)."""
    names = np.asarray(user_country, dtype=object).astype(str)
    ids = sorted(set(names.tolist()) - {""})
    lookup = {c: k for k, c in enumerate(ids)}
    return ids, np.array([lookup.get(c, -1) for c in names.tolist()], np.int32)


@dataclass
class CountryCounts:
    """What every prior's lists are made of: the users' countries, the global decayed count per item and
    its total, and the decayed count of every (country, item) pair of the countries with enough users."""
    ids: list[str]
    code: np.ndarray
    d_g: np.ndarray
    s_g: float
    pair_country: np.ndarray
    pair_item: np.ndarray
    pair_count: np.ndarray


def country_counts(user, item, ts, event, user_country, n_items: int, now: float, event_weights,
                   half_life_days: float, min_users: int) -> CountryCounts:
    """The decayed counts of the interactions ``(user, item, ts, event)`` at ``now``, per country with at least
    ``min_users`` users who interacted (none for ``min_users`` 0)."""
    ids, code = user_codes(user_country)
    w = decayed_weights(ts, event, now, event_weights, half_life_days)
    d_g = np.bincount(item, weights=w, minlength=n_items)
    none = CountryCounts(ids, code, d_g, float(d_g.sum()), np.zeros(0, np.int64), np.zeros(0, np.int32),
                         np.zeros(0, np.float64))
    if not ids or min_users <= 0 or len(item) == 0 or none.s_g <= 0:
        return none
    uc = code[user].astype(np.int64)
    # the countries with enough users who interacted
    active = np.unique(user)
    users_in = np.bincount(code[active][code[active] >= 0], minlength=len(ids))
    keep = (uc >= 0) & (users_in[np.maximum(uc, 0)] >= min_users) & (w > 0)
    if not keep.any():
        return none
    pair, inv = np.unique(uc[keep] * n_items + item[keep], return_inverse=True)
    return CountryCounts(ids, code, d_g, none.s_g, pair // n_items, (pair % n_items).astype(np.int32),
                         np.bincount(inv.ravel(), weights=w[keep]))


def lists_of(counts: CountryCounts, prior: float | None) -> CountryLists:
    """The per-country trending lists of ``counts`` shrunk by ``prior`` (none for ``prior`` None: every
    request takes the global list)."""
    n_c = len(counts.ids)
    indptr = np.zeros(n_c + 1, np.int64)
    weight = np.zeros(n_c, np.float64)
    if prior is None or len(counts.pair_count) == 0:
        return CountryLists(counts.ids, counts.code, indptr, np.zeros(0, np.int32), np.zeros(0, np.float32),
                            weight)
    pc, pi, d, d_g, s_g = counts.pair_country, counts.pair_item, counts.pair_count, counts.d_g, counts.s_g
    s_c = np.bincount(pc, weights=d, minlength=n_c)
    shrink = s_c / (s_c + prior)
    score = np.log1p(shrink[pc] * (d + prior * d_g[pi] / s_g))
    # per country, best first; ties by the global count (the global list's order), then by row
    order = np.lexsort((pi, -d_g[pi], -score, pc))
    np.cumsum(np.bincount(pc, minlength=n_c), out=indptr[1:])
    has = s_c > 0
    weight[has] = s_c[has] * prior / ((s_c[has] + prior) * s_g)
    return CountryLists(counts.ids, counts.code, indptr, pi[order], score[order].astype(np.float32), weight)


def country_lists(user, item, ts, event, user_country, n_items: int, now: float, event_weights,
                  half_life_days: float, min_users: int, prior: float | None) -> CountryLists:
    """The per-country trending lists of the interactions ``(user, item, ts, event)`` at ``now`` (none for
    ``prior`` None: every request takes the global list)."""
    return lists_of(country_counts(user, item, ts, event, user_country, n_items, now, event_weights,
                                   half_life_days, min_users), prior)


PRIOR_GRID = (10.0, 100.0, 1000.0, 10000.0, 100000.0)
MIN_TUNE_USERS = 50


def tune_prior(ds, fit_mask: np.ndarray, label_mask: np.ndarray, label_cut: float, n_items: int, event_weights,
               half_life_days: float, min_users: int, default: float | None, k: int = 50, max_users: int = 5000,
               seed: int = 0) -> tuple[float | None, dict]:
    """The ``prior`` (None: no country lists, the global list for everyone) whose lists, fitted before
    ``label_cut``, give the users who are new in the label window (no interaction before it) the best
    recall@k of their label items, a new user ranked by her country's list. ``default`` is kept when fewer
    than ``MIN_TUNE_USERS`` new users come from a country with a list; the global list wins ties."""
    fu, fi, ft, fe = ds.user[fit_mask], ds.item[fit_mask], ds.ts[fit_mask], ds.event[fit_mask]
    warm = np.zeros(ds.n_users, bool)
    warm[fu] = True
    lm = label_mask & ~warm[ds.user]
    counts = country_counts(fu, fi, ft, fe, ds.user_country, n_items, label_cut, event_weights, half_life_days,
                            min_users)
    lists = {p: lists_of(counts, p) for p in PRIOR_GRID}
    some = lists[PRIOR_GRID[0]]
    has_list = np.diff(some.indptr) > 0
    users = np.unique(ds.user[lm])
    if has_list.any() and len(users):
        users = users[(some.user_code[users] >= 0) & has_list[np.maximum(some.user_code[users], 0)]]
    else:       # no country has a list (no users file, no country column, too few users): nothing to tune
        users = users[:0]
    info: dict = {"metric": f"recall@{k} of the label window's new users, by their country's list",
                  "users": int(len(users)), "grid": []}
    if len(users) < MIN_TUNE_USERS:
        info["chosen"] = default
        info["kept_default"] = f"fewer than {MIN_TUNE_USERS} new users from a country with a list"
        return default, info
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    truth_of = {}
    for u, i in zip(ds.user[lm].tolist(), ds.item[lm].tolist()):
        truth_of.setdefault(u, set()).add(i)
    d_g = counts.d_g
    k = min(k, n_items)

    def recall(top_of) -> float:
        got = []
        for u in users.tolist():
            top = set(top_of(int(some.user_code[u])).tolist())
            truth = truth_of[u]
            got.append(len(top & truth) / min(len(truth), k))
        return float(np.mean(got))

    glob = _top(d_g, k)
    results = {None: recall(lambda c: glob)}
    asked = np.unique(some.user_code[users])      # the countries the tuning's users come from
    for p, cl in lists.items():
        tops = {}
        for c in asked.tolist():
            a, b = int(cl.indptr[c]), int(cl.indptr[c + 1])
            score = np.log1p(cl.weight[c] * d_g)
            score[cl.rows[a:b]] = cl.scores[a:b]
            tops[c] = _top(score, k)
        results[p] = recall(tops.__getitem__)
    info["grid"] = [{"prior": p, f"recall@{k}": round(r, 4)} for p, r in results.items()]
    best = max(results.items(), key=lambda pr: (pr[1], pr[0] is None))[0]
    info["chosen"] = best
    return best, info


def _top(score: np.ndarray, k: int) -> np.ndarray:
    """The rows of the ``k`` highest scores, best first, in one pass over the catalogue (ties by row among
    them; a tie at the k-th score is broken arbitrarily)."""
    part = np.argpartition(-score, k - 1)[:k] if k < len(score) else np.arange(len(score))
    return part[np.lexsort((part, -score[part]))]
