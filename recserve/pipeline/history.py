"""A user's history as a request reads it: the bundle's training history and her real-time events.

:meth:`Histories.of` gives the newest ``history_len`` events (what the user vector and the item-to-item
seeds read) and every item she consumed, however old (what "exclude consumed" drops): the bundle's
history of a user is cut to her newest ``history_len`` events, so the bundle also stores the distinct
items of the users whose history misses some (the ``consumed_*`` tables; a bundle without them: the
history's). A long event history is kept per user while the event store's stamp for her is unchanged, and
event item ids map to rows through a bounded memo, so that a heavy user costs a lookup rather than a
re-read per request.

The bundle holds every event of its users dated before its data end (``Bundle.data_end``, the trainer's
``now``), the events recorded in real time and logged since included. So the history reads the store's
events from the data end on: an event of the store dated before it is taken to be in the bundle already
(read twice, it would weigh double and push older events out of the window), a back-dated event that never
reached the logs included; a user with no history in the bundle (unknown to it, or in its user table
without interactions) has none of her events in it, so all of them are read. Every stored event still
counts as consumed (a set cannot hold an item twice), and so do the items of the events the store's
retention deleted (``EventStore.retired``).
The boundary is the bundle's, so it moves with a reload: a :class:`Histories`, and the histories it keeps,
belong to one bundle's pipeline.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

from recserve._core import candidates as CC


class Histories:
    EVENT_ROWS_MAX = 1 << 18     # entries of the id -> row memo before it starts over
    CACHE_USERS = 4096           # users whose histories are kept
    CACHE_MIN_EVENTS = 32        # real-time events below which reading them again is as cheap as a lookup

    def __init__(self, tables, store, history_len: int, data_end: float = -math.inf):
        """``tables``: the bundle's (``hist_*`` arrays, the item id map); ``store``: the event store or None;
        ``data_end``: the bundle's data end (unix seconds): the store's events dated before it are in the
        bundle's history already, only the later ones join it."""
        self.tables = tables
        self.store = store
        self.history_len = int(history_len)
        self.data_end = float(data_end)
        self.indptr = tables.array("hist_indptr")
        self.items = tables.array("hist_items")
        self.ts = tables.array("hist_ts")
        self.event = tables.array("hist_event")
        # the consumed items of the users whose bounded history misses some; a bundle built before these
        # tables were written has none, and its users' consumed items are their histories'
        have = tables.has_array("consumed_users")
        self.consumed_users, self.consumed_indptr, self.consumed_items = (
            (tables.array(n) for n in ("consumed_users", "consumed_indptr", "consumed_items")) if have
            else (None, None, None))
        # item id -> row of the ids met in real-time events (a user's events are read on every request)
        self._event_rows: dict[str, int] = {}
        # user -> (event stamp, history arrays) for users with long event histories, current while the
        # store's stamp for the user is unchanged (any worker's write changes it)
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, user_id: str, user_row: int | None):
        """(rows, event codes, timestamps, consumed): the newest ``history_len`` events, oldest first, from
        the bundle history and the store's events dated from the data end on, and the sorted rows of every
        item in the bundle history or the store. Read-only arrays. The stamp is read before the events, so a
        write in between only costs a re-read."""
        if self.store is None or not user_id:
            return self._read(user_id, user_row)[:4]
        stamp = self.store.user_stamp(user_id)
        if stamp is not None:
            with self._lock:
                hit = self._cache.get(user_id)
                if hit is not None and hit[0] == stamp:
                    self._cache.move_to_end(user_id)
                    return hit[1]
        out = self._read(user_id, user_row)
        for a in out[:4]:
            a.flags.writeable = False
        if stamp is not None and out[4] >= self.CACHE_MIN_EVENTS:
            with self._lock:
                self._cache[user_id] = (stamp, out[:4])
                self._cache.move_to_end(user_id)
                while len(self._cache) > self.CACHE_USERS:
                    self._cache.popitem(last=False)
        return out[:4]

    def event_item_rows(self, items: list[str]) -> np.ndarray:
        """int32 rows of event item ids (-1 unknown): a memo of this bundle's id map, so a long event
        history costs a dict lookup per event rather than an LMDB lookup."""
        memo = self._event_rows
        got = [memo.get(i, -2) for i in items]
        miss = [i for i, g in zip(items, got) if g == -2]
        if not miss:
            return np.array(got, np.int32)
        if len(memo) + len(miss) > self.EVENT_ROWS_MAX:
            memo.clear()
        found = self.tables.rows_of("item", miss)
        memo.update(zip(miss, found.tolist()))
        return np.array([memo.get(i, -1) if g == -2 else g for i, g in zip(items, got)], np.int32)

    def _read(self, user_id: str, user_row: int | None):
        """(rows, events, timestamps, consumed, number of real-time events read) from the bundle and the
        event store: every item of her bundle data (the bundle's stored set when her history, bounded, misses
        some), every event the store keeps for the user (``--events-per-user``) and the items of the events
        that retention deleted count as consumed, while the first three hold the newest ``history_len`` of
        the bundle's and of the store's dated from the data end on."""
        rows, ev, ts = [], [], []
        earlier = None          # rows consumed only: store events dated before the data end, retired items
        stored = None           # her bundle's consumed rows, when her bundle history misses some
        n_bundle = n_events = 0
        if user_row is not None:
            a, b = int(self.indptr[user_row]), int(self.indptr[user_row + 1])
            n_bundle = b - a
            rows.append(np.asarray(self.items[a:b], np.int32))
            ev.append(np.asarray(self.event[a:b], np.int8))
            ts.append(np.asarray(self.ts[a:b], np.float64))
            stored = CC.stored_consumed(self.consumed_users, self.consumed_indptr, self.consumed_items, user_row)
        if self.store is not None and user_id:
            items, types, times = self.store.recent_columns(user_id, max(self.store.per_user, self.history_len))
            n_events = len(items)
            if items:
                r = self.event_item_rows(items)
                keep = r >= 0
                # only a user with a history in the bundle has her events before its data end in it: one it
                # does not know, or knows from the user table alone (new since, or back-filled through
                # RecordEvents), has all of hers read here
                before = times < self.data_end if n_bundle else None
                if before is not None and before.any():
                    earlier = r[keep & before]
                    keep &= ~before
                rows.append(r[keep])
                ev.append(types[keep])
                ts.append(times[keep])
                retired = self.store.retired(user_id)      # her items of events retention deleted
                if retired:
                    r = self.event_item_rows(retired)
                    r = r[r >= 0]
                    earlier = r if earlier is None else np.concatenate([earlier, r])
        if not rows:
            return (np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.float64), np.zeros(0, np.int32), 0)
        rows, ev, ts = np.concatenate(rows), np.concatenate(ev), np.concatenate(ts)
        # the stored set holds every row of her bundle history: only the store's rows join it
        own = rows if stored is None else np.concatenate([stored, rows[n_bundle:]])
        consumed = CC.sorted_unique(own if earlier is None else np.concatenate([own, earlier]))
        if len(rows) > 1 and np.any(np.diff(ts) < 0):
            o = np.argsort(ts, kind="stable")
            rows, ev, ts = rows[o], ev[o], ts[o]
        n = self.history_len
        return rows[-n:], ev[-n:], ts[-n:], consumed, n_events
