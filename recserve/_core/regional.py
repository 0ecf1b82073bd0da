"""Trending per country, as one ranked list per country: the trainer's ranker rows and the server's requests
read it through this one class, so that the popular source a ranker was trained on is the one it serves.

A bundle holds, for each country with enough users, the items its users interacted with, scored by their
shrunk trending count in that country (``trainer/countries.py``); every other item scores
``log1p(weight_c * expm1(trend))`` from its global trending score ``trend``. Those scores order the whole
catalogue for the country: by score, then the country's listed items before the others, then the order of
the country's list or of the global trending list. :meth:`RegionalTrending.top` reads only as much of the
two lists as its answer needs, and a shorter answer is always the head of a longer one.
"""
from __future__ import annotations

import numpy as np

from recserve._core.candidates import not_in_sorted

_NONE = np.zeros(0, np.int32)


class RegionalTrending:
    """The per-country lists of one bundle over its global trending list."""

    HEAD_MIN = 256      # the shortest head ranked at a time

    def __init__(self, user_code, indptr, rows, scores, weight, trend_rows, trend_scores, n_items: int,
                 trend_of_row: np.ndarray | None = None):
        """``user_code``: each user's country code (-1: none); ``indptr``/``rows``/``scores``: the countries'
        lists (CSR over the codes, best first); ``weight``: each country's ``weight_c``; ``trend_rows`` /
        ``trend_scores``: the global trending list, best first; ``trend_of_row``: each row's global trending
        score, when the caller has it already."""
        self.user_code = user_code
        self.indptr = indptr
        self.rows = rows
        self.scores = scores
        self.weight = weight
        self.trend_rows = trend_rows
        if trend_of_row is None:
            trend_of_row = np.zeros(int(n_items), np.float32)
            trend_of_row[np.asarray(trend_rows, np.int64)] = trend_scores
        self.trend_of_row = trend_of_row
        self._neg_trend = -np.asarray(trend_scores, np.float32)     # ascending, for the cut of the global list
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._heads: dict = {}          # cached_head: key -> (rows, scores, the length asked)

    def has_list(self, c: int) -> bool:
        return 0 <= c < len(self.indptr) - 1 and self.indptr[c + 1] > self.indptr[c]

    def user_list(self, user_row: int | None) -> int | None:
        """The code of the user's country if it has a list (None: none, or the user is not in the bundle)."""
        if user_row is None or not 0 <= user_row < len(self.user_code):
            return None
        c = int(self.user_code[user_row])
        return c if self.has_list(c) else None

    def _listed(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Country ``c``'s rows sorted by row, and their scores (built once per country)."""
        got = self._sorted.get(c)
        if got is None:
            a, b = int(self.indptr[c]), int(self.indptr[c + 1])
            order = np.argsort(self.rows[a:b], kind="stable")
            got = self._sorted[c] = (self.rows[a:b][order], self.scores[a:b][order])
        return got

    def score_of(self, c: int, rows: np.ndarray) -> np.ndarray:
        """Country ``c``'s trending score of each of ``rows`` (float64)."""
        rows = np.asarray(rows, np.int64)
        out = np.log1p(self.weight[c] * np.expm1(self.trend_of_row[rows].astype(np.float64)))
        listed, scores = self._listed(c)
        if len(rows) and len(listed):
            at = np.minimum(np.searchsorted(listed, rows), len(listed) - 1)
            hit = listed[at] == rows
            out[hit] = scores[at[hit]]
        return out

    def top(self, c: int, allowed: np.ndarray | None, gone: np.ndarray, limit: int):
        """The ``limit`` best items for country ``c`` that ``allowed`` keeps (None: all) and ``gone`` (sorted)
        does not hold: ``(rows int32, scores float32)`` best first."""
        if limit <= 0:
            return _NONE, np.zeros(0, np.float32)
        a, b = int(self.indptr[c]), int(self.indptr[c + 1])
        own = _first(self.rows[a:b], allowed, gone, limit, None)
        n = len(self.trend_rows)
        if len(own) == limit:
            # an item the country's users never took scores log1p(weight * expm1(trend)): only the global
            # list's head scores as high as the last of ``own``, and nothing below it can enter the answer
            floor = float(self.score_of(c, own[-1:])[0])
            need = np.log1p(np.expm1(floor) / self.weight[c]) * (1.0 - 1e-6)
            n = int(np.searchsorted(self._neg_trend, -need, side="right"))
        listed, _ = self._listed(c)
        other = _first(self.trend_rows[:n], allowed, gone, limit, lambda r: not_in_sorted(r, listed))
        rows = np.concatenate([own, other])
        scores = self.score_of(c, rows)
        best = np.argsort(-scores, kind="stable")[:limit]
        return rows[best].astype(np.int32), scores[best].astype(np.float32)

    def head(self, c: int, n: int):
        """The first ``n`` items of country ``c``'s whole ranked list (``top`` with no filter), from a
        per-country copy that grows by doubling: a read-only prefix."""
        return self.cached_head(self._heads, c, n, lambda m: self.top(c, None, _NONE, m))

    def cached_head(self, cache: dict, key, n: int, build) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` of the ``(rows, scores)`` that ``build(m)`` ranks (the first ``m``, fewer only when
        it has no more), from ``cache[key]``: built at ``HEAD_MIN`` items at least, doubled when a caller
        asks for more than it holds, and read-only."""
        got = cache.get(key)
        if got is None or (len(got[0]) < n and len(got[0]) == got[2]):     # short, and not the whole list
            m = max(int(n), 2 * (got[2] if got is not None else 0), self.HEAD_MIN)
            rows, scores = build(m)
            rows.flags.writeable = scores.flags.writeable = False
            got = (rows, scores, m)
            held = cache.get(key)       # another thread's, meanwhile: the longer one stays
            if held is None or held[2] < m:
                cache[key] = got
        return got[0][:n], got[1][:n]


def _first(rows: np.ndarray, allowed: np.ndarray | None, gone: np.ndarray, limit: int, keep) -> np.ndarray:
    """The first ``limit`` of ``rows`` that ``allowed``, ``gone`` and ``keep`` (a mask function, or None)
    let through."""
    out, have, i, step = [], 0, 0, max(2 * limit, 256)
    while have < limit and i < len(rows):
        r = rows[i:i + step]
        if allowed is not None:         # the cheap mask first: the searches run on what it keeps
            r = r[allowed[r]]
        if keep is not None:
            r = r[keep(r)]
        if len(gone):
            r = r[not_in_sorted(r, gone)]
        out.append(r)
        have += len(r)
        i += step
        step *= 2
    return np.concatenate(out)[:limit] if out else np.zeros(0, np.int32)


def order_reference(tables, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy reference of country ``c``'s whole ranked list, straight from a bundle's tables (what
    :meth:`RegionalTrending.top` and :meth:`RegionalTrending.head` return heads of): every item scored as the
    country scores it, best first, a listed item before an unlisted one on a tie, each in its own list's
    order. ``(rows int64, scores float64)``."""
    ip = np.asarray(tables.array("country_indptr"))
    listed = np.asarray(tables.array("country_rows")[ip[c]:ip[c + 1]])
    trend_rows = np.asarray(tables.array("trend_rows"))
    n = len(trend_rows)
    trend = np.zeros(n, np.float32)
    trend[trend_rows] = np.asarray(tables.array("trend_scores"))
    s = np.log1p(float(tables.array("country_weight")[c]) * np.expm1(trend.astype(np.float64)))
    s[listed] = np.asarray(tables.array("country_scores")[ip[c]:ip[c + 1]])
    pos = np.empty(n)
    pos[trend_rows] = np.arange(n)
    pos[listed] = np.arange(len(listed))
    unlisted = np.ones(n, bool)
    unlisted[listed] = False
    order = np.lexsort((pos, unlisted, -s))
    return order, s[order]
