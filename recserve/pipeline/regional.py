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
from recserve._core.regional import RegionalTrending
from recserve.pipeline.candidates import EMPTY, interleave


class CountryTrending(RegionalTrending):
    """The per-country trending lists of one bundle (``None`` from :meth:`load` for a bundle without)."""

    def __init__(self, tables, trend_rows: np.ndarray, trend_scores: np.ndarray, trend_of_row: np.ndarray):
        super().__init__(tables.array("user_country"), tables.array("country_indptr"), tables.array("country_rows"),
                         tables.array("country_scores"), tables.array("country_weight"), trend_rows, trend_scores,
                         len(trend_of_row), trend_of_row)
        self.tables = tables
        self._cat_heads: dict = {}

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

    def in_categories(self, c: int, cats: np.ndarray, category: np.ndarray, allowed: np.ndarray | None,
                      gone: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Each of ``cats``' best items for country ``c`` that ``allowed`` keeps (None: all) and ``gone``
        (sorted) does not hold, then the categories interleaved so each is represented: ``(rows int32,
        scores float32)``, scored as the country scores them. Each category's order is read from a cached
        head (:meth:`category_head`), grown when the filter leaves too little of it."""
        rows, scores = [], []
        for k in cats:
            n = max(2 * int(limit), self.HEAD_MIN)
            while True:
                head, head_scores = self.category_head(c, int(k), category, n)
                keep = np.ones(len(head), bool) if allowed is None else allowed[head]
                if len(gone):
                    keep &= not_in_sorted(head, gone)
                if np.count_nonzero(keep) >= limit or len(head) < n:     # enough, or the whole category
                    break
                n *= 4
            at = np.flatnonzero(keep)[:limit]
            rows.append(head[at])
            scores.append(head_scores[at])
        if not rows:
            return EMPTY
        starts = np.cumsum([0] + [len(r) for r in rows[:-1]])
        turn = interleave([s + np.arange(len(r), dtype=np.int32) for s, r in zip(starts, rows)], limit)
        return np.concatenate(rows)[turn].astype(np.int32), np.concatenate(scores)[turn].astype(np.float32)

    def category_head(self, c: int, k: int, category: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` items of category ``k`` (``category``: each row's) in country ``c``'s whole ranked
        order, with their scores: :meth:`top` with the category's mask, cached per (country, category) as
        :meth:`head` is, so the mask is built only when a head grows. Shorter than ``n``: the whole
        category."""
        return self.cached_head(self._cat_heads, (c, k), n, lambda m: self.top(c, category == k, EMPTY[0], m))
