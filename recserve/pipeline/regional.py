"""Trending per country at request time: which country's list a request reads (``recserve._core.regional``
ranks them; ``trainer/countries.py`` builds them).

A request reads the list of its ``context.country``; when that country has none (too few users, or not in
the bundle) or the request gives none, the list of the user's own country from the users file; else the
global list. A cold request in trending
order is ordered by that list; a request with a history takes it as its popular source when the bundle's
ranker was trained so (``warm_trending``), per requested category under an ``include_categories`` filter
(each category's best items, consumed and unreleased ones left out, then the categories interleaved).
"""
from __future__ import annotations

import numpy as np

from recserve._core.candidates import not_in_sorted
from recserve._core.regional import RegionalTrending, first_kept
from recserve.pipeline.candidates import interleave

_EMPTY = np.zeros(0, np.int32)


class CountryTrending(RegionalTrending):
    """The per-country trending lists of one bundle (``None`` from :meth:`load` for a bundle without)."""

    def __init__(self, tables, trend_rows: np.ndarray, trend_scores: np.ndarray, trend_of_row: np.ndarray):
        super().__init__(tables.array("user_country"), tables.array("country_indptr"), tables.array("country_rows"),
                         tables.array("country_scores"), tables.array("country_weight"), trend_rows, trend_scores,
                         len(trend_of_row), trend_of_row)
        self.tables = tables
        self._cat_heads: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}

    @classmethod
    def load(cls, tables, trend_rows: np.ndarray, trend_scores: np.ndarray,
             trend_of_row: np.ndarray) -> "CountryTrending | None":
        """``trend_rows``/``trend_scores``: the global list, best first; ``trend_of_row``: each row's score."""
        return cls(tables, trend_rows, trend_scores, trend_of_row) if tables.has_array("country_indptr") else None

    def code(self, country: str, user_row: int | None) -> int | None:
        """The code of the list a request reads: its ``context.country``'s if that has one, else the user's
        own country's (the users file) if that has one, else None (the global list)."""
        if country:
            c = self.tables.row_of("country", country)
            if c is not None and self.has_list(c):
                return c
        return self.user_list(user_row)

    def in_categories(self, c: int, cats: np.ndarray, cat_indptr: np.ndarray, cat_rows: np.ndarray,
                      category: np.ndarray, allowed: np.ndarray | None, gone: np.ndarray,
                      limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Each of ``cats``' best items for country ``c`` that ``allowed`` keeps (None: all) and ``gone``
        (sorted) does not hold, then the categories interleaved so each is represented: ``(rows int32,
        scores float32)``, scored as the country scores them. ``cat_rows[cat_indptr[k]:cat_indptr[k + 1]]``:
        category ``k``'s items in global trending order. Each category's order is read from a cached head
        (:meth:`category_head`), grown when the filter leaves too little of it."""
        rows, scores = [], []
        for k in cats:
            n = max(2 * int(limit), self.HEAD_MIN)
            while True:
                head, head_scores = self.category_head(c, int(k), cat_indptr, cat_rows, category, n)
                keep = np.ones(len(head), bool) if allowed is None else allowed[head]
                if len(gone):
                    keep &= not_in_sorted(head, gone)
                if np.count_nonzero(keep) >= limit or len(head) < n:     # enough, or the whole category
                    break
                n *= 4
            at = np.flatnonzero(keep)[:limit]
            rows.append(head[at])
            scores.append(head_scores[at])
        turn = interleave([np.arange(len(r), dtype=np.int32) + sum(map(len, rows[:j])) for j, r in enumerate(rows)],
                          limit)
        return (np.concatenate(rows)[turn].astype(np.int32) if rows else np.zeros(0, np.int32),
                np.concatenate(scores)[turn].astype(np.float32) if rows else np.zeros(0, np.float32))

    def category_head(self, c: int, k: int, cat_indptr: np.ndarray, cat_rows: np.ndarray, category: np.ndarray,
                      n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` items of category ``k`` in country ``c``'s whole ranked order (the order of
        :meth:`top`: the country's listed items of ``k`` and its unlisted ones, which score in the global
        order, so only the first ``n`` of those can enter), with their scores: read-only, cached per
        (country, category) and grown by doubling, as :meth:`head` is. Shorter than ``n``: the whole
        category."""
        got = self._cat_heads.get((c, k))
        if got is None or (len(got[0]) < n and len(got[0]) == got[2]):
            m = max(int(n), 2 * (got[2] if got is not None else 0), self.HEAD_MIN)
            a, b = int(self.indptr[c]), int(self.indptr[c + 1])
            listed, _ = self._listed(c)
            own = first_kept(self.rows[a:b], None, _EMPTY, m, lambda r: category[r] == k)
            other = first_kept(cat_rows[cat_indptr[k]:cat_indptr[k + 1]], None, _EMPTY, m,
                               lambda r: not_in_sorted(r, listed))
            rows = np.concatenate([own, other])
            scores = self.score_of(c, rows)
            best = np.argsort(-scores, kind="stable")[:m]
            rows, scores = rows[best].astype(np.int32), scores[best].astype(np.float32)
            rows.flags.writeable = scores.flags.writeable = False
            got = (rows, scores, m)
            held = self._cat_heads.get((c, k))      # another thread's, meanwhile: the longer one stays
            if held is None or held[2] < m:
                self._cat_heads[(c, k)] = got
        return got[0][:n], got[1][:n]
