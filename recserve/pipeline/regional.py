"""Trending per country: the order of a cold request from a country (``trainer/countries.py`` builds it).

A bundle holds, for each country with enough users, the items its users interacted with, scored by their
shrunk trending count in that country; every other item scores ``log1p(weight_c * expm1(trend))`` from the
global trending score. A cold request's country is its ``context.country``, or else the user's country from
the users file; a country without a list (too few users, or not in the bundle) takes the global list.
"""
from __future__ import annotations

import numpy as np

from recserve._core.candidates import not_in_sorted
from recserve.pipeline.candidates import EMPTY


class CountryTrending:
    """The per-country trending lists of one bundle (``None`` from :meth:`load` for a bundle without)."""

    def __init__(self, tables, trend_of_row: np.ndarray, trend_scores: np.ndarray):
        self.tables = tables
        self.user_code = tables.array("user_country")
        self.indptr = tables.array("country_indptr")
        self.rows = tables.array("country_rows")
        self.scores = tables.array("country_scores")
        self.weight = tables.array("country_weight")
        self.trend_of_row = trend_of_row
        self._neg_trend = -np.asarray(trend_scores, np.float32)     # ascending, for the cut of the global list
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def load(cls, tables, trend_of_row: np.ndarray, trend_scores: np.ndarray) -> "CountryTrending | None":
        """``trend_of_row``: each row's global trending score; ``trend_scores``: the global list's, best first."""
        return cls(tables, trend_of_row, trend_scores) if tables.has_array("country_indptr") else None

    def code(self, country: str, user_row: int | None) -> int | None:
        """The code of the request's country (``context.country``, else the user's) if it has a list."""
        if country:
            c = self.tables.row_of("country", country)
        elif user_row is not None:
            c = int(self.user_code[user_row])
        else:
            return None
        if c is None or c < 0 or self.indptr[c + 1] == self.indptr[c]:
            return None
        return c

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

    def top(self, c: int, trend_rows: np.ndarray, allowed: np.ndarray | None, gone: np.ndarray, limit: int):
        """The ``limit`` best items for country ``c`` that ``allowed`` keeps (None: all) and ``gone`` (sorted)
        does not hold: ``(rows int32, scores float32)`` best first. Reads the country's list and the global
        trending list (``trend_rows``, best first, the list of the scores given at load) only as far as
        needed."""
        if limit <= 0:
            return EMPTY
        a, b = int(self.indptr[c]), int(self.indptr[c + 1])
        own = _first(self.rows[a:b], allowed, gone, limit, None)
        n = len(trend_rows)
        if len(own) == limit:
            # an item the country's users never took scores log1p(weight * expm1(trend)): only the global
            # list's head scores as high as the last of ``own``, and nothing below it can enter the answer
            floor = float(self.score_of(c, own[-1:])[0])
            need = np.log1p(np.expm1(floor) / self.weight[c]) * (1.0 - 1e-6)
            n = int(np.searchsorted(self._neg_trend, -need, side="right"))
        listed, _ = self._listed(c)
        other = _first(trend_rows[:n], allowed, gone, limit, lambda r: not_in_sorted(r, listed))
        rows = np.concatenate([own, other])
        scores = self.score_of(c, rows)
        best = np.argsort(-scores, kind="stable")[:limit]
        return rows[best].astype(np.int32), scores[best].astype(np.float32)


def _first(rows: np.ndarray, allowed: np.ndarray | None, gone: np.ndarray, limit: int, keep) -> np.ndarray:
    """The first ``limit`` of ``rows`` that ``allowed``, ``gone`` and ``keep`` (a mask function, or None)
    let through."""
    out, have, i, step = [], 0, 0, max(2 * limit, 256)
    while have < limit and i < len(rows):
        r = rows[i:i + step]
        ok = np.ones(len(r), bool) if keep is None else keep(r)
        if allowed is not None:
            ok &= allowed[r]
        if len(gone):
            ok &= not_in_sorted(r, gone)
        out.append(r[ok])
        have += int(ok.sum())
        i += step
        step *= 2
    return np.concatenate(out)[:limit] if out else np.zeros(0, np.int32)
