"""The event store against a plain-Python model of it, over random sequences of writes, prunes (whole, or
stopped after some transactions and finished) and forgets: every user's events, retired items and their
times, and the three retired databases agreeing with each other (one index key per item, the counts)."""
from __future__ import annotations

import random
import struct

import pytest

import recserve.events as E
from recserve.events import Event, EventStore

# ids that are prefixes of one another, past ASCII, and around the key separator
USERS = ["u", "u1", "u10", "u1\x7f", "é", "\U0001F600", "a" * 40, "a" * 41]
ITEMS = ["i", "i1", "i10", "ж", "\U0001F601", "y" * 30]


class Model:
    def __init__(self, per_user: int, cap: int):
        self.per_user, self.cap = per_user, cap
        self.events: dict[str, list] = {}        # user -> sorted [(ts, seq, type, item)]
        self.retired: dict[str, dict[str, float]] = {}
        self.seq = 0

    def record(self, events: list[Event]) -> None:
        touched = set()
        for e in events:
            mine = self.events.setdefault(e.user_id, [])
            if not e.server_time and any(x[0] == e.timestamp and x[2:] == (e.type, e.item_id) for x in mine):
                continue                                        # an exact repeat: kept once
            self.seq += 1
            mine.append((e.timestamp, self.seq, e.type, e.item_id))
            mine.sort()
            touched.add(e.user_id)
        for u in touched:
            mine, gone = self.events[u], {}
            while len(mine) > self.per_user:
                ts, _, _, item = mine.pop(0)
                gone[item] = max(ts, gone.get(item, ts))
            kept = self.retired.setdefault(u, {})
            for item, ts in gone.items():
                kept[item] = max(ts, kept.get(item, ts))
            while len(kept) > self.cap:         # the oldest go, ties by the id's bytes (the index's order)
                del kept[min(kept, key=lambda i: (kept[i], i.encode()))]

    def prune(self, before: float) -> None:
        for table in (self.events, self.retired):
            for u in list(table):
                if table is self.events:
                    table[u] = [x for x in table[u] if x[0] >= before]
                else:
                    table[u] = {i: t for i, t in table[u].items() if t >= before}

    def forget(self, users) -> None:
        for u in users:
            self.events.pop(u, None)
            self.retired.pop(u, None)


def _check(store: EventStore, model: Model, where: str) -> None:
    with store.env.begin() as txn:
        retired = {bytes(k): bytes(v) for k, v in txn.cursor(db=store._retired)}
        index = {bytes(k) for k in txn.cursor(db=store._rtime).iternext(values=False)}
        counts = {bytes(k): int.from_bytes(v, "big") for k, v in txn.cursor(db=store._rcount)}
    pairs = [k.split(b"\0", 1) for k in retired]
    assert index == {u + b"\0" + retired[u + b"\0" + i] + i for u, i in pairs}, where
    per_user: dict[bytes, int] = {}
    for u, _ in pairs:
        per_user[u] = per_user.get(u, 0) + 1
    assert {u: n for u, n in counts.items() if n} == per_user, where
    for u in USERS:
        assert store.recent_columns(u, 1000)[0] == [x[3] for x in model.events.get(u, [])], (where, u)
        p = u.encode() + b"\0"
        got = {k[len(p):].decode(): struct.unpack(">d", v)[0] for k, v in retired.items() if k.startswith(p)}
        assert got == model.retired.get(u, {}), (where, u)
        assert sorted(store.retired(u)) == sorted(got), (where, u)


@pytest.mark.parametrize("seed", range(40))
def test_the_store_follows_its_model(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    per_user, factor = rng.randint(1, 4), rng.choice([1, 1, 2, 3])
    monkeypatch.setattr(E, "RETIRED_FACTOR", factor)
    store = EventStore(tmp_path / "ev", map_size=64 << 20, per_user=per_user)
    model = Model(per_user, factor * per_user)
    users = rng.sample(USERS, rng.randint(2, len(USERS)))
    t = 0
    for step in range(rng.randint(20, 60)):
        op = rng.random()
        if op < 0.75:
            batch = []
            for _ in range(rng.randint(1, 6)):
                ts = float(rng.choice([rng.randint(0, 100), t, t + rng.random()]))
                batch.append(Event(rng.choice(users), rng.choice(ITEMS), rng.randint(0, 4), ts,
                                   server_time=rng.random() < 0.1))
                t += rng.randint(0, 3)
            store.record(batch, lambda u: rng.random() < 0.5)
            model.record(batch)
        elif op < 0.9:
            before, size = float(rng.randint(0, t + 5)), rng.choice([1, 2, 3, 10_000])
            if rng.random() < 0.3:          # stopped after a few transactions, then finished
                stop, calls = rng.randint(1, 4), []
                store.prune(before, batch=size, committed=lambda d, e, r: calls.append(1) or len(calls) < stop)
            store.prune(before, batch=size)
            model.prune(before)
        else:
            gone = rng.sample(users, rng.randint(1, 2))
            store.forget(gone)
            model.forget(gone)
        _check(store, model, f"seed {seed} step {step}")
    store.close()
