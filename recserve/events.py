"""The event store: recent user events and item state, in its own LMDB environment beside the bundles.

One environment (a directory, default ``<bundle root>/events``) shared by every worker process: each
process opens it after fork. Writes commit with fsync before the RPC replies (durable before reply), and
every read starts a fresh read transaction, so a write made through one worker is visible to the next
request in any worker. Keys are bundle-independent (string ids), so a hot reload keeps them.

Databases:
- ``ev``: ``user_id \\0 ts(>d) seq(>Q)`` -> ``type(b) item_id`` ; per user in time order.
- ``users``: ``user_id`` -> first-seen unix seconds (users created by events).
- ``items``: ``item_id`` -> JSON ``{"in_stock": bool, "price": float}`` (the latest update; it overrides
  every bundle's value until :meth:`EventStore.clear_items` deletes it).
- ``ulast``: ``user_id`` -> the ``seq`` of the user's latest written event (a stamp: a reader that cached
  a user's events knows they are still current while it is unchanged, whatever the new event's timestamp).
- ``meta``: ``seq`` (event counter), ``items_gen`` (bumped on every item update).
- ``ichanges``: ``items_gen(>Q)`` -> the item ids that update changed, one per line (the newest
  :data:`ITEM_CHANGES_KEPT`), so that a reader only re-reads what changed since the generation it has.
- ``ucount``: ``user_id`` -> how many events the user has in ``ev``.
- ``retired``: ``user_id \0 item_id`` -> ts(>d): the items of her events that retention deleted, each with
  the time of its newest such event: still consumed, so "exclude consumed" keeps dropping them;
  ``rtime``: ``user_id \0 ts(>d) item_id`` -> empty, the same in time order (what eviction and prune walk);
  ``rcount``: ``user_id`` -> how many items she has in ``retired``.

Retention: a user keeps her newest ``per_user`` events; a write that takes her past it deletes the oldest
in the same transaction, so the store grows with the number of users, not with time. The items of the
deleted events join her ``retired`` set (at most ``retired_per_user`` distinct items, the newest kept), so a
heavy user does not see what she bought long ago come back before the next bundle holds it; a write costs a
few keys per deleted event, whatever the set's size. Every process that writes the store (servers and
``recserve store``) must run a version that knows ``retired``: an older one deletes events without retiring
their items, and its ``forget`` leaves the user's retired items behind. A store whose ``retired`` holds
whole sets under bare user ids (their first layout) is converted when opened (``meta`` ``retired_keys``).
A store written without ``ucount`` counts a user's events once, on her next write.
:meth:`EventStore.prune` deletes events older than a time (and users left with none, and retired items as
old), :meth:`EventStore.forget` everything about given users (``recserve store prune`` / ``recserve store
forget``, safe beside a running server: LMDB serialises writers across processes).
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

import lmdb
import numpy as np

# event type codes, as in the bundle histories
VIEW, CLICK, CART, PURCHASE, RATING = range(5)
EVENT_NAMES = ["view", "click", "cart", "purchase", "rating"]


ITEM_CHANGES_KEPT = 4096      # item updates whose changed ids are kept for readers that are behind
RETIRED_FACTOR = 1            # distinct retired items kept per user, in units of ``per_user``


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    type: int        # 0..4
    timestamp: float  # unix seconds
    server_time: bool = False   # the timestamp is the server's clock (the client sent none): never a retry


class Pruned(NamedTuple):
    """What :meth:`EventStore.prune` deleted (committed)."""
    deleted: int        # events
    emptied: int        # users left with no event, removed
    retired: int        # retired items (of events retention had deleted)


class Recorded(NamedTuple):
    """What :meth:`EventStore.record` did with a batch."""
    accepted: int       # the batch's events (all valid: a bad batch writes nothing)
    new_users: int      # users the batch created
    duplicates: int     # exact repeats of an event the store holds (or of one earlier in the batch): kept once
    not_kept: int       # older than the newest ``per_user`` events of their user: deleted by retention
    repeats: tuple[int, ...] = ()   # the positions in the batch of the duplicates

    @property
    def kept(self) -> int:
        """The batch's events the store now holds."""
        return self.accepted - self.duplicates - self.not_kept


_TS = struct.Struct(">d")


def _count_keys(txn, db, prefix: bytes) -> int:
    """How many keys of ``db`` start with ``prefix`` (inside ``txn``)."""
    cur = txn.cursor(db=db)
    n = 0
    if cur.set_range(prefix):
        for k in cur.iternext(values=False):
            if not k.startswith(prefix):
                break
            n += 1
    return n


def _holds(cur, at: bytes, value: bytes) -> bool:
    """Whether the store holds ``value`` under a key starting ``at`` (user, timestamp): at most a few keys."""
    if not cur.set_range(at):
        return False
    for k, v in cur:
        if not k.startswith(at) or len(k) != len(at) + 8:
            return False
        if v == value:
            return True
    return False


DATABASES = ("retired", "rtime", "rcount", "ichanges", "ucount", "ulast", "ev", "users", "items", "meta")


class EventStore:
    def __init__(self, path: str | os.PathLike, map_size: int = 64 << 30, per_user: int = 1000,
                 readonly: bool = False, waiting=contextlib.nullcontext):
        """``map_size``: LMDB's map (address space; the file grows as it is used), the same in every process
        that opens the store (LMDB's set_mapsize from several processes corrupts it; 0: the size the store
        records, the largest any process gave it); ``per_user``: events kept per user (and
        ``RETIRED_FACTOR`` times as many distinct items of her deleted ones); ``readonly``: an existing store,
        opened without waiting for a writer (its writes fail); ``waiting``: a context manager entered around
        each wait for the write lock of the open and of the maintenance writes (a tool's Ctrl-C there)."""
        if per_user < 1:
            raise ValueError(f"per_user must be >= 1, got {per_user}")
        self.path = Path(path)
        self.per_user = int(per_user)
        self.retired_per_user = RETIRED_FACTOR * self.per_user
        self.waiting = waiting
        self._pid = os.getpid()
        if readonly:            # waits for no writer, and writes nothing: an older layout is left to writers
            if not self._open(map_size, readonly=True):
                raise ValueError(f"the store at {self.path} is in an older layout: a server started on it, or a "
                                 "writing `recserve store` command, converts it")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._open(map_size, readonly=False)
        self._convert_retired()

    def _open(self, map_size: int, readonly: bool) -> bool:
        """Open the environment and its databases. Opening a database takes a write transaction unless the
        environment is read-only, which waits for no writer; False (closed again) when a read-only store
        lacks a database or its retired items are in the first layout (opened to write, they are made)."""
        self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=10, sync=True, metasync=True,
                             max_readers=1024, lock=True, readonly=readonly, create=not readonly)
        try:
            self._check_whole()
        except ValueError:
            self.env.close()
            raise
        try:
            if readonly:
                for name in DATABASES:
                    setattr(self, f"_{name}", self.env.open_db(name.encode(), create=False))
            else:               # in a transaction of ours: py-lmdb's own holds the GIL while it waits
                with self._begin_write() as txn:
                    for name in DATABASES:
                        setattr(self, f"_{name}", self.env.open_db(name.encode(), txn=txn))
            with self.env.begin(db=self._meta) as txn:
                if readonly and txn.get(b"retired_keys") is None:
                    raise lmdb.NotFoundError("retired items in the first layout")
        except lmdb.NotFoundError:
            self.env.close()
            return False
        return True

    def _check_whole(self) -> None:
        """A ValueError unless the environment is an event store (or new and empty) whose file holds every
        page its last commit names: a truncated ``data.mdb`` (a half-finished copy) would crash the process
        with SIGBUS at its first read, and another LMDB (a bundle's tables) would get the store's databases
        written into it. Only the meta pages are read before the size is checked."""
        data = self.path / "data.mdb"
        need = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        size = data.stat().st_size
        if size < need:
            raise ValueError(f"{data} is truncated or damaged: {size} bytes, and its last commit needs {need}; "
                             "restore it from a copy or move it aside")
        with self.env.begin() as txn:
            if txn.get(b"ev") is None and txn.cursor().first():
                raise ValueError(f"{self.path} holds an LMDB environment that is not an event store (no 'ev' "
                                 "database); nothing was written to it")

    def _convert_retired(self) -> None:
        """A store whose ``retired`` database holds whole sets under bare user ids (the first layout: a
        count, the times, then the ids joined by newlines) gets them as one key per item, once."""
        with self.env.begin(db=self._meta) as txn:
            if txn.get(b"retired_keys") is not None:
                return
        with self._begin_write() as txn:
            if txn.get(b"retired_keys", db=self._meta) is not None:
                return                      # another process did it meanwhile
            sets = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self._retired) if b"\0" not in k]
            for u, raw in sets:
                txn.delete(u, db=self._retired)
                n = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
                ids = raw[4 + 8 * n:].split(b"\n") if n and len(raw) >= 4 + 8 * n else []
                if len(ids) == n:
                    ts = np.frombuffer(raw, ">f8", count=n, offset=4).tolist()
                    self._retire(txn, u, dict(zip(ids, ts)))
            txn.put(b"retired_keys", b"1", db=self._meta)

    def _begin_write(self):
        """A write transaction of the maintenance paths, its wait for the store's write lock (held by any
        writer's transaction) inside ``self.waiting()``: a tool waiting there can give up at once."""
        with self.waiting():
            return self.env.begin(write=True)

    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError("an EventStore cannot cross a fork: open it in each worker process")

    # -- writes ------------------------------------------------------------------------------------
    def record(self, events: Iterable[Event], known_user, before_commit=None) -> Recorded:
        """Append ``events`` in one fsynced transaction. ``known_user(id)`` says whether the bundle has
        the user; other users are created here. An exact repeat of an event the store holds (same user,
        item, type and timestamp, a client's retry) is kept once, unless its time is the server's.
        ``before_commit()``, when given, runs just before the commit and may raise to write nothing (a
        deadline that passed while waiting for the write lock)."""
        (out,) = self.record_many([(events, known_user, before_commit)])
        if isinstance(out, Exception):
            raise out
        return out

    def record_many(self, batches: list[tuple]) -> list:
        """Group commit: each ``(events, known_user, before_commit)`` as :meth:`record` writes it, all in one
        fsynced transaction, each in a nested one: a batch that fails, or whose ``before_commit()`` raises,
        writes nothing and the others commit. Per batch, its :class:`Recorded` or the exception it raised
        (nothing is committed when every batch failed); an error of the commit itself is raised."""
        self._check_pid()
        outs: list = []
        txn = self.env.begin(write=True)    # ended by hand: py-lmdb 1.x commits an aborted one on a with's exit
        try:
            for events, known_user, before_commit in batches:
                try:
                    with self.env.begin(write=True, parent=txn) as sub:
                        outs.append(self._append(sub, list(events), known_user, before_commit))
                except Exception as exc:  # noqa: BLE001 -- this batch's own failure, handed to its caller
                    outs.append(exc)
        except BaseException:
            txn.abort()
            raise
        if all(isinstance(o, Exception) for o in outs):
            txn.abort()
        else:
            txn.commit()
        return outs

    def _append(self, txn, events: list[Event], known_user, before_commit) -> Recorded:
        new_users = not_kept = 0
        seq0 = seq = int.from_bytes(txn.get(b"seq", db=self._meta) or b"\0" * 8, "big")
        cur = txn.cursor(db=self._ev)
        seen: set[bytes] = set()
        last: dict[bytes, int] = {}
        added: dict[bytes, int] = {}
        repeats = []
        for i, e in enumerate(events):
            u = e.user_id.encode()
            if u not in seen:
                seen.add(u)
                if not known_user(e.user_id) and txn.get(u, db=self._users) is None:
                    txn.put(u, struct.pack(">d", time.time()), db=self._users)
                    new_users += 1
            at = u + b"\0" + struct.pack(">d", e.timestamp)
            value = struct.pack(">b", e.type) + e.item_id.encode()
            if not e.server_time and _holds(cur, at, value):
                repeats.append(i)
                continue
            seq += 1
            last[u] = seq
            added[u] = added.get(u, 0) + 1
            txn.put(at + struct.pack(">Q", seq), value, db=self._ev)
        for u, s in last.items():
            txn.put(u, s.to_bytes(8, "big"), db=self._ulast)
            not_kept += self._trim(txn, u, added[u], seq0)
        txn.put(b"seq", seq.to_bytes(8, "big"), db=self._meta)
        if before_commit is not None:
            before_commit()
        return Recorded(len(events), new_users, len(repeats), not_kept, tuple(repeats))

    def _trim(self, txn, u: bytes, added: int, seq0: int = 0) -> int:
        """Count the user's new events and delete her oldest beyond ``per_user`` (inside the write).
        Returns how many of the deleted were written after ``seq0`` (this write's, older than all she keeps)."""
        raw = txn.get(u, db=self._ucount)
        prefix = u + b"\0"
        cur = txn.cursor(db=self._ev)
        if raw is None:         # a store written before counts were kept: count once
            n = _count_keys(txn, self._ev, prefix)
        else:
            n = int.from_bytes(raw, "big") + added
        mine = 0
        if n > self.per_user and cur.set_range(prefix):
            gone: dict[bytes, float] = {}
            for _ in range(n - self.per_user):       # the oldest first: keys sort by (user, time, seq)
                key = cur.key()
                if not key.startswith(prefix):
                    break
                mine += int.from_bytes(key[-8:], "big") > seq0
                ts = _TS.unpack_from(key, len(prefix))[0]
                item = bytes(cur.value()[1:])
                gone[item] = max(ts, gone.get(item, ts))
                if not cur.delete():
                    break
            n = self.per_user
            self._retire(txn, u, gone)
        txn.put(u, n.to_bytes(8, "big"), db=self._ucount)
        return mine

    def _retire(self, txn, u: bytes, gone: dict[bytes, float]) -> None:
        """Add the items of her deleted events to her retired set (inside the write): the newest time per
        item, the newest ``retired_per_user`` items kept. Touches a few keys per item, not the whole set."""
        prefix = u + b"\0"
        raw = txn.get(u, db=self._rcount)
        n = int.from_bytes(raw, "big") if raw is not None else 0
        for item, ts in gone.items():
            old = txn.get(prefix + item, db=self._retired)
            if old is None:
                n += 1
            elif len(old) == 8:
                if _TS.unpack(old)[0] >= ts:
                    continue
                txn.delete(prefix + bytes(old) + item, db=self._rtime)
            txn.put(prefix + item, _TS.pack(ts), db=self._retired)
            txn.put(prefix + _TS.pack(ts) + item, b"", db=self._rtime)
        if n > self.retired_per_user:
            cur = txn.cursor(db=self._rtime)
            if cur.set_range(prefix):
                while n > self.retired_per_user and cur.key().startswith(prefix):
                    n -= self._drop_retired(txn, prefix, cur.key())
                    cur.delete()
            if n > self.retired_per_user:       # her index ran out first: the count was wrong; recount
                n = _count_keys(txn, self._retired, prefix)
        txn.put(u, n.to_bytes(8, "big"), db=self._rcount)

    def _drop_retired(self, txn, prefix: bytes, time_key: bytes) -> int:
        """Delete the item of a ``rtime`` key from ``retired`` when it holds that time, or a damaged value (1);
        not when its time there is another (0: a stale index key left by a damaged value: only it goes)."""
        item = prefix + time_key[len(prefix) + 8:]
        value = txn.get(item, db=self._retired)
        if value == time_key[len(prefix):len(prefix) + 8] or (value is not None and len(value) != 8):
            txn.delete(item, db=self._retired)      # a damaged value goes with its index key
            return 1
        return 0

    def _forget_retired(self, txn, u: bytes) -> bool:
        """Delete her retired set (inside the write); whether she had one."""
        prefix = u + b"\0"
        had = txn.delete(u, db=self._rcount)
        for db in (self._retired, self._rtime):
            cur = txn.cursor(db=db)
            if cur.set_range(prefix):
                while cur.key().startswith(prefix) and cur.delete():
                    had = True
        return had

    def forget(self, user_ids: Iterable[str]) -> tuple[int, int]:
        """Delete everything the store keeps about these users (events, retired items, counts, stamps,
        first-seen), in one fsynced transaction: (events deleted, users who had anything). A worker that kept
        a user's long history sees her stamp gone and reads the store again. The bundle's own history of a
        user is not touched: it goes with the next bundle built without her data."""
        self._check_pid()
        n_events = n_users = 0
        with self._begin_write() as txn:
            cur = txn.cursor(db=self._ev)
            for uid in dict.fromkeys(user_ids):
                u = uid.encode()
                prefix = u + b"\0"
                n = 0
                if cur.set_range(prefix):
                    while cur.key().startswith(prefix) and cur.delete():
                        n += 1
                had = [txn.delete(u, db=db) for db in (self._users, self._ulast, self._ucount)]
                had.append(self._forget_retired(txn, u))
                n_events += n
                n_users += bool(n or any(had))
        return n_events, n_users

    def prune(self, before: float, batch: int = 10_000, committed=None) -> Pruned:
        """Delete every event with a timestamp before ``before`` (unix seconds), in fsynced transactions
        of at most ``batch`` deletions and users visited (writers wait for one transaction, not for the
        whole pass), then the retired items (of events retention deleted) whose newest time is before it,
        the same way: (events deleted, users left with none, whose records are removed as :meth:`forget`
        does, retired items deleted). A user whose events or retired items were deleted gets a new stamp, so
        no worker keeps serving them from its cache. ``committed(deleted, emptied, retired)``, when given,
        hears the totals after each transaction commits; when it returns False the pass stops there (the
        counts returned are what was committed)."""
        self._check_pid()
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        got = {"deleted": 0, "emptied": 0, "retired": 0, "user": 0}

        def event_user(txn, u: bytes, n: int, keeps: bool) -> bool:
            got["deleted"] += n
            if keeps:                                   # she keeps newer events
                raw = txn.get(u, db=self._ucount)
                if raw is not None:
                    txn.put(u, (int.from_bytes(raw, "big") - n).to_bytes(8, "big"), db=self._ucount)
                return True
            for db in (self._users, self._ulast, self._ucount):
                txn.delete(u, db=db)
            got["emptied"] += 1
            return False

        def retired_key(txn, prefix: bytes, key: bytes) -> None:
            got["user"] += self._drop_retired(txn, prefix, key)

        def retired_user(txn, u: bytes, n: int, keeps: bool) -> bool:
            n, got["user"] = got["user"], 0
            got["retired"] += n
            raw = txn.get(u, db=self._rcount)
            left = max((int.from_bytes(raw, "big") if raw is not None else 0) - n, 0)
            if left:
                txn.put(u, left.to_bytes(8, "big"), db=self._rcount)
            else:
                txn.delete(u, db=self._rcount)
            return txn.get(u, db=self._ulast) is not None

        def heard() -> bool:
            return committed is None or committed(got["deleted"], got["emptied"], got["retired"]) is not False

        if self._prune_walk(self._ev, before, batch, None, event_user, heard):
            self._prune_walk(self._rtime, before, batch, retired_key, retired_user, heard)
        return Pruned(got["deleted"], got["emptied"], got["retired"])

    def _prune_walk(self, db, before: float, batch: int, on_key, on_user, heard) -> bool:
        """Delete the keys ``user \\0 ts(>d) ...`` of ``db`` with a time before ``before``, user by user, in
        fsynced transactions of at most ``batch`` deletions and users visited. ``on_key(txn, prefix, key)``
        runs before each deletion; ``on_user(txn, user, deleted, keeps_some)`` after a user's, and returns
        whether she is to get a new stamp; ``heard()`` after each commit, False to stop (returned)."""
        resume = b""
        while resume is not None:
            with self._begin_write() as txn:
                seq = int.from_bytes(txn.get(b"seq", db=self._meta) or b"\0" * 8, "big")
                cur = txn.cursor(db=db)
                budget = batch
                found = cur.set_range(resume)
                resume = None
                while found:
                    key = cur.key()
                    u = key[:key.index(b"\0")]
                    prefix = u + b"\0"
                    n = 0
                    while budget > 0 and key.startswith(prefix) and _TS.unpack_from(key, len(prefix))[0] < before:
                        if on_key is not None:
                            on_key(txn, prefix, key)
                        cur.delete()                    # the cursor moves to the next key
                        n += 1
                        budget -= 1
                        key = cur.key()
                    if n and on_user(txn, u, n, key.startswith(prefix)):
                        seq += 1
                        txn.put(u, seq.to_bytes(8, "big"), db=self._ulast)
                    budget = max(budget - 1, 0)         # each user visited counts, deletions or not
                    if budget == 0:
                        old = key.startswith(prefix) and _TS.unpack_from(key, len(prefix))[0] < before
                        resume = key if old else u + b"\1"
                        break
                    found = cur.set_range(u + b"\1")   # her newer keys stay: the next user
                txn.put(b"seq", seq.to_bytes(8, "big"), db=self._meta)
            if not heard():
                return False
        return True

    def update_items(self, updates: Iterable[tuple[str, bool | None, float | None]]) -> int:
        """Apply (item_id, in_stock or None, price or None) updates in one fsynced transaction."""
        self._check_pid()
        updates = list(updates)
        n = 0
        with self.env.begin(write=True) as txn:
            for item_id, in_stock, price in updates:
                k = item_id.encode()
                raw = txn.get(k, db=self._items)
                state = json.loads(bytes(raw)) if raw is not None else {}
                if in_stock is not None:
                    state["in_stock"] = bool(in_stock)
                if price is not None:
                    state["price"] = float(price)
                txn.put(k, json.dumps(state).encode(), db=self._items)
                n += 1
            gen = int.from_bytes(txn.get(b"items_gen", db=self._meta) or b"\0" * 8, "big") + 1
            txn.put(b"items_gen", gen.to_bytes(8, "big"), db=self._meta)
            txn.put(gen.to_bytes(8, "big"), "\n".join(item_id for item_id, _, _ in updates).encode(),
                    db=self._ichanges)
            cur = txn.cursor(db=self._ichanges)
            while cur.first() and int.from_bytes(cur.key(), "big") <= gen - ITEM_CHANGES_KEPT:
                cur.delete()
        return n

    def clear_items(self, item_ids: Iterable[str] | None) -> int:
        """Delete the stored state of these items (None: of every item), in one fsynced transaction, so
        that they take their stock and price from the bundle again (after a catalogue refresh). Returns the
        number of states deleted. The generation moves without a list of changes: readers re-read the whole
        item state over their bundle's."""
        self._check_pid()
        n = 0
        with self._begin_write() as txn:
            if item_ids is None:
                n = txn.stat(self._items)["entries"]
                txn.drop(self._items, delete=False)
            else:
                n = sum(bool(txn.delete(i.encode(), db=self._items)) for i in dict.fromkeys(item_ids))
            if n:
                gen = int.from_bytes(txn.get(b"items_gen", db=self._meta) or b"\0" * 8, "big") + 1
                txn.put(b"items_gen", gen.to_bytes(8, "big"), db=self._meta)
        return n

    # -- reads -------------------------------------------------------------------------------------
    def recent(self, user_id: str, limit: int = 200) -> list[Event]:
        """The user's last ``limit`` events, oldest first."""
        items, types, ts = self.recent_columns(user_id, limit)
        return [Event(user_id, i, int(t), float(s)) for i, t, s in zip(items, types, ts)]

    def recent_columns(self, user_id: str, limit: int = 200) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The user's last ``limit`` events, oldest first, as columns: item ids, int8 event types and
        float64 timestamps (what a request needs, without an object per event)."""
        self._check_pid()
        prefix = user_id.encode() + b"\0"
        n = len(prefix)
        keys: list[bytes] = []
        vals: list[bytes] = []
        with self.env.begin(db=self._ev) as txn:
            cur = txn.cursor()
            if not cur.set_range(user_id.encode() + b"\1"):
                if not cur.last():
                    return [], np.zeros(0, np.int8), np.zeros(0, np.float64)
            else:
                if not cur.prev():
                    return [], np.zeros(0, np.int8), np.zeros(0, np.float64)
            for k, v in cur.iterprev():
                if len(keys) >= limit or not k.startswith(prefix):
                    break
                keys.append(k[n:n + 8])
                vals.append(v)
        keys.reverse()
        vals.reverse()
        ts = np.frombuffer(b"".join(keys), dtype=">f8").astype(np.float64)
        types = np.array([v[0] for v in vals], dtype=np.uint8).view(np.int8)
        return [v[1:].decode() for v in vals], types, ts

    def retired(self, user_id: str) -> list[str]:
        """The items of the user's events that retention deleted (see the module's note), in no order."""
        if not user_id:
            return []
        prefix = user_id.encode() + b"\0"
        n = len(prefix)
        with self.env.begin(db=self._retired) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return []
            out = []
            for k in cur.iternext(values=False):
                if not k.startswith(prefix):
                    break
                out.append(k[n:].decode("utf-8", "replace"))
            return out

    def user_stamp(self, user_id: str) -> int | None:
        """The ``seq`` of the user's latest written event (None: no event, or written by a store version
        that kept no stamps). It changes with every new event of the user."""
        with self.env.begin(db=self._ulast) as txn:
            raw = txn.get(user_id.encode())
        return None if raw is None else int.from_bytes(raw, "big")

    def has_user(self, user_id: str) -> bool:
        with self.env.begin(db=self._users) as txn:
            return txn.get(user_id.encode()) is not None

    def items_gen(self) -> int:
        with self.env.begin(db=self._meta) as txn:
            return int.from_bytes(txn.get(b"items_gen") or b"\0" * 8, "big")

    def item_states(self) -> tuple[int, dict[str, dict]]:
        """(generation, {item_id: state}) read in one transaction."""
        with self.env.begin() as txn:
            gen = int.from_bytes(txn.get(b"items_gen", db=self._meta) or b"\0" * 8, "big")
            states = {bytes(k).decode(): json.loads(bytes(v)) for k, v in txn.cursor(db=self._items)}
        return gen, states

    def item_changes(self, since: int) -> tuple[int, dict[str, dict] | None]:
        """(generation, {item_id: state} of the items updated after generation ``since``), read in one
        transaction; None instead of the dict when the store no longer holds (or never held) the list of
        every update since then: read :meth:`item_states` whole."""
        with self.env.begin() as txn:
            gen = int.from_bytes(txn.get(b"items_gen", db=self._meta) or b"\0" * 8, "big")
            ids: set[str] = set()
            for g in range(since + 1, gen + 1):
                raw = txn.get(g.to_bytes(8, "big"), db=self._ichanges)
                if raw is None:
                    return gen, None
                ids.update(bytes(raw).decode().split("\n"))
            states = {}
            for i in ids:
                raw = txn.get(i.encode(), db=self._items)
                if raw is not None:
                    states[i] = json.loads(bytes(raw))
        return gen, states

    def usage(self) -> tuple[int, int]:
        """(bytes of the pages ever used, the map's bytes): the store cannot grow past the map, and LMDB
        reuses freed pages before it takes new ones."""
        info, stat = self.env.info(), self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"], info["map_size"]

    def stats(self) -> dict:
        """events; users created by events (not in a bundle); users with events (stamped); item states;
        retired items (of events retention deleted), of all users."""
        with self.env.begin() as txn:
            return {"events": txn.stat(self._ev)["entries"], "users": txn.stat(self._users)["entries"],
                    "users_with_events": txn.stat(self._ulast)["entries"], "items": txn.stat(self._items)["entries"],
                    "retired_items": txn.stat(self._retired)["entries"]}

    def close(self) -> None:
        self.env.close()
