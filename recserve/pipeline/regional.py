"""Trending per country at request time: which country's list a request reads (``recserve._core.regional``
ranks them; ``trainer/countries.py`` builds them).

A request reads the list of its ``context.country``; when that country has none (too few users, or not in
the bundle) or the request gives none, the list of the user's own country from the users file; else the
global list. A cold request in trending
order is ordered by that list; a request with a history takes it as its popular source when the bundle's
ranker was trained so (``warm_trending``), per requested category under an ``include_categories`` filter.
"""
from __future__ import annotations

import numpy as np

from recserve._core.regional import RegionalTrending
from recserve.pipeline.candidates import interleave


class CountryTrending(RegionalTrending):
    """The per-country trending lists of one bundle (``None`` from :meth:`load` for a bundle without)."""

    def __init__(self, tables, trend_rows: np.ndarray, trend_scores: np.ndarray, trend_of_row: np.ndarray):
        super().__init__(tables.array("user_country"), tables.array("country_indptr"), tables.array("country_rows"),
                         tables.array("country_scores"), tables.array("country_weight"), trend_rows, trend_scores,
                         len(trend_of_row), trend_of_row)
        self.tables = tables

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

    def in_categories(self, c: int, cats: np.ndarray, allowed: np.ndarray, category: np.ndarray, gone: np.ndarray,
                      limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The best items of each of ``cats`` for country ``c`` that ``allowed`` keeps and ``gone`` (sorted)
        does not hold, interleaved so each category is represented (as the global per-category lists are):
        ``(rows int32, scores float32)``, scored as the country scores them."""
        rows = interleave([self.top(c, allowed & (category == k), gone, limit)[0] for k in cats], limit)
        return rows, self.score_of(c, rows).astype(np.float32)
