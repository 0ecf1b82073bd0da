"""New items for a cold request: the items created within ``new_item_days`` of the request's time, so that
the novelty boost (``novelty_boost``) reaches users with no history, whose only other candidates are the
trending ones (a new item has had little time to trend). A user with a history meets new items through the
ANN search (the trainer places them beside their category and creator) and her items' neighbours."""
from __future__ import annotations

import numpy as np

NEW_SOURCE = "new"      # the candidate source a cold answer names for them


class NewItems:
    """The items by creation time: the exact times that decide their release (``Bundle.item_created``, in
    days), so that an item released a second before the request is among them (the float32
    ``created_days`` feature is some 80 s off at today's day numbers)."""

    def __init__(self, created_days: np.ndarray, trend_of_row: np.ndarray):
        days = np.asarray(created_days, np.float64)
        days = np.where(np.isnan(days), -np.inf, days)      # unknown: always there, never new
        idx = np.int32 if len(days) < 2**31 else np.int64
        self.order = np.argsort(days, kind="stable").astype(idx)
        self.days = days[self.order]
        # each item's place in the order a cold answer takes new items: the most trending first, the newest
        # among equals (unique, so a partial selection is as deterministic as a sort)
        rank = np.lexsort((-days, -np.asarray(trend_of_row, np.float64)))
        self.place = np.empty(len(days), idx)
        self.place[rank] = np.arange(len(days), dtype=idx)

    def rows(self, now: float, new_days: float, k: int, allowed, excluded: np.ndarray) -> np.ndarray:
        """Up to ``k`` rows of items created within ``new_days`` days before unix time ``now``, so released at
        it (as the novelty boost counts them), ``allowed`` (a mask, or None) and not in ``excluded``; the most
        trending first, the newest among equals. Costs the number of new items and of ``excluded``, not the
        catalogue's."""
        now_days = now / 86400.0
        lo = int(np.searchsorted(self.days, now_days - new_days, side="left"))
        hi = int(np.searchsorted(self.days, now_days, side="right"))
        rows = self.order[lo:hi]
        if allowed is not None:
            rows = rows[allowed[rows]]
        need = k + len(excluded)            # enough to leave k once the excluded are dropped
        if len(rows) > need:
            rows = rows[np.argpartition(self.place[rows], need - 1)[:need]]
        rows = rows[~np.isin(rows, excluded)]
        return rows[np.argsort(self.place[rows])][:k].astype(np.int64)
