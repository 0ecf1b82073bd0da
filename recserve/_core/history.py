"""A user's history as the candidate sources read it (``recserve._core.candidates``), in one pass.

:func:`history_seeds` gives, for a history (item rows oldest first, with their timestamps):

* ``seen``: its distinct rows, sorted (what exclusion and :func:`drop_seen` test against);
* ``recent``: its last ``n_recent`` distinct rows, newest first (the item-to-item source's seeds);
* ``session``: the last ``n_session`` distinct rows of its latest session, newest first (the session
  source's seeds), a session being the events after the last gap longer than ``session_gap`` seconds.

:func:`drop_seen` removes negative rows (padding) and seen rows from a ranked list, keeping its order.
The numpy references beside them are what the kernels are tested against.
"""
from __future__ import annotations

import numpy as np

from recserve._core import _history
from recserve._core._validate import f32_1d, integer, rows_1d

_EMPTY32 = np.zeros(0, np.int32)


def history_seeds(hist_items, hist_ts, n_recent: int, n_session: int, session_gap: float):
    """(seen, recent, session): int32 arrays, see the module docstring (a negative count: none)."""
    n_recent, n_session = integer(n_recent, "n_recent"), integer(n_session, "n_session")
    rows = rows_1d(hist_items, "history rows")
    ts = np.ascontiguousarray(hist_ts, np.float64)
    if ts.shape != rows.shape:
        raise ValueError(f"{len(rows)} history rows but timestamps of shape {ts.shape}")
    if len(rows) == 0:
        return _EMPTY32, _EMPTY32, _EMPTY32
    return _history.history_seeds(rows, ts, max(n_recent, 0), max(n_session, 0), float(session_gap))


def drop_seen(rows, scores, seen_sorted):
    """(int32 rows, float32 scores) without negative rows and the rows of ``seen_sorted`` (sorted, unique)."""
    r = rows_1d(rows, "rows")
    s = f32_1d(scores, "scores")
    if len(s) != len(r):
        raise ValueError(f"{len(r)} rows but {len(s)} scores")
    seen = rows_1d(seen_sorted, "seen rows")
    if len(seen) > 1 and not (seen[1:] > seen[:-1]).all():    # the kernel binary-searches it
        raise ValueError("seen rows must be sorted and unique")
    return _history.drop_seen(r, s, seen)


# -- numpy references ------------------------------------------------------------------------------------
def recent_distinct_reference(hist_items, n: int) -> np.ndarray:
    """The last ``n`` distinct items of a history, newest first."""
    h = np.asarray(hist_items, np.int64)[::-1]
    _, first = np.unique(h, return_index=True)
    return h[np.sort(first)][:n].astype(np.int32)


def history_seeds_reference(hist_items, hist_ts, n_recent: int, n_session: int, session_gap: float):
    hist = np.asarray(hist_items, np.int64)
    ts = np.asarray(hist_ts, np.float64)
    seen = np.unique(hist).astype(np.int32)
    recent = recent_distinct_reference(hist, max(n_recent, 0))
    if len(hist):
        gaps = np.diff(ts) > session_gap
        start = int(np.flatnonzero(gaps)[-1]) + 1 if gaps.any() else 0
        session = recent_distinct_reference(hist[start:], max(n_session, 0))
    else:
        session = _EMPTY32
    return seen, recent, session


def drop_seen_reference(rows, scores, seen_sorted):
    rows = np.asarray(rows)
    keep = (rows >= 0) & ~np.isin(rows, seen_sorted)
    return rows[keep].astype(np.int32), np.asarray(scores)[keep].astype(np.float32)
