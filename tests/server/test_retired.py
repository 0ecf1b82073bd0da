"""Items of the events that the store's retention deleted stay consumed: a user past ``--events-per-user``
keeps her newest events for the user vector, and every item she had is still excluded."""
from __future__ import annotations

import random
import struct
import time
import uuid

import pytest

import recserve.events as E
from recserve.events import Event, EventStore

def _retired_times(store: EventStore, user: str) -> dict[str, float]:
    """Her retired items and their times, read with plain LMDB calls; checks that the time index and the
    count agree with them."""
    import struct

    prefix = user.encode() + b"\0"
    with store.env.begin() as txn:
        by_item = {bytes(k[len(prefix):]).decode(): struct.unpack(">d", v)[0]
                   for k, v in txn.cursor(db=store._retired) if bytes(k).startswith(prefix)}
        by_time = [(struct.unpack(">d", k[len(prefix):len(prefix) + 8])[0], bytes(k[len(prefix) + 8:]).decode())
                   for k in txn.cursor(db=store._rtime).iternext(values=False) if bytes(k).startswith(prefix)]
        raw = txn.get(user.encode(), db=store._rcount)
    assert sorted(by_time) == sorted((t, i) for i, t in by_item.items())
    assert (int.from_bytes(raw, "big") if raw is not None else 0) == len(by_item)
    assert sorted(store.retired(user)) == sorted(by_item)
    return by_item


def test_deleted_events_items_are_retired_with_their_newest_time(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "RETIRED_FACTOR", 3)
    store = EventStore(tmp_path / "ev", per_user=3)
    store.record([Event("u", f"a{k % 4}", 0, 100.0 + k) for k in range(9)], lambda u: True)
    # kept: the newest three (a2, a3, a0 at 106..108); deleted: a0..a3 at 100..103, a0 and a1 at 104, 105
    assert store.recent_columns("u", 10)[0] == ["a2", "a3", "a0"]
    assert _retired_times(store, "u") == {"a0": 104.0, "a1": 105.0, "a2": 102.0, "a3": 103.0}
    done = store.record([Event("u", "old", 3, 1.0)], lambda u: True)   # dropped at once: still consumed
    assert done.not_kept == 1 and "old" in store.retired("u")
    assert store.retired("v") == [] and store.retired("") == []
    assert store.stats()["retired_items"] == 5
    store.close()


def test_the_retired_set_keeps_the_newest_items_up_to_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "RETIRED_FACTOR", 2)
    store = EventStore(tmp_path / "ev", per_user=2)
    assert store.retired_per_user == 4
    for k in range(12):
        store.record([Event("u", f"i{k}", 0, 100.0 + k)], lambda u: True)
    assert store.recent_columns("u", 10)[0] == ["i10", "i11"]
    assert _retired_times(store, "u") == {f"i{k}": 100.0 + k for k in range(6, 10)}
    store.record([Event("u", "i7", 0, 300.0), Event("u", "i20", 0, 301.0), Event("u", "i21", 0, 302.0)],
                 lambda u: True)          # i7 again, newer: kept with its new time, the oldest go
    assert _retired_times(store, "u") == {"i9": 109.0, "i10": 110.0, "i11": 111.0, "i7": 300.0}
    store.close()


def test_forget_deletes_the_retired_items(tmp_path):
    store = EventStore(tmp_path / "ev", per_user=1)
    store.record([Event("u", "a", 0, 1.0), Event("u", "b", 0, 2.0), Event("u1", "c", 0, 1.0),
                  Event("u1", "d", 0, 2.0)], lambda u: True)
    assert store.retired("u") == ["a"] and store.retired("u1") == ["c"]
    assert store.forget(["u"]) == (1, 1)
    assert _retired_times(store, "u") == {} and store.retired("u1") == ["c"]
    store.close()


@pytest.mark.parametrize("seed", range(12))
def test_prune_drops_the_retired_items_as_old_as_the_events_it_deletes(tmp_path, seed):
    """Against a model of the store: per user, the newest time of each item her deleted events had; in any
    batch size."""
    rng = random.Random(seed)
    per_user = rng.randint(1, 4)
    store = EventStore(tmp_path / "ev", per_user=per_user)
    users = [f"u{k}" for k in range(rng.randint(1, 9))] + ["u1\x01", "u10"]
    for t in range(rng.randint(1, 120)):
        u = rng.choice(users)
        store.record([Event(u, f"i{rng.randint(0, 9)}", 0, float(t))], lambda u: True)
    model = {u: _retired_times(store, u) for u in users}
    for u in users:
        kept = store.recent_columns(u, 100)[2]
        assert all(t <= kept.min() for t in model[u].values()) if len(kept) else not model[u]
    stamps = {u: store.user_stamp(u) for u in users}
    before = float(rng.randint(0, 120))
    pruned = store.prune(before, batch=rng.choice([1, 2, 3, 1000]))
    assert pruned.retired == sum(t < before for m in model.values() for t in m.values())
    for u in users:
        left = {i: t for i, t in model[u].items() if t >= before}
        assert _retired_times(store, u) == left
        if len(left) < len(model[u]) and store.user_stamp(u) is not None:
            assert store.user_stamp(u) > stamps[u]               # her cached history is stale
    store.close()


def test_a_stopped_prune_stops_in_the_retired_pass_too(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "RETIRED_FACTOR", 10)
    store = EventStore(tmp_path / "ev", per_user=1)
    store.record([Event("u", f"i{k}", 0, float(k)) for k in range(6)], lambda u: True)
    assert len(store.retired("u")) == 5
    calls = []
    store.prune(3.0, batch=2, committed=lambda d, e, r: calls.append((d, e)) or len(calls) < 2)
    assert calls == [(0, 0), (0, 0)]                   # the events' pass (none to prune), two retired items
    assert sorted(store.retired("u")) == ["i2", "i3", "i4"]
    store.prune(3.0)
    assert sorted(store.retired("u")) == ["i3", "i4"]
    store.close()


def test_a_malformed_retired_value_breaks_nothing(tmp_path, monkeypatch):
    """A value of the wrong size (a damaged store) is overwritten by the next retirement of its item; reads,
    writes, eviction and prune go on, and the stale index key left behind deletes nothing."""
    monkeypatch.setattr(E, "RETIRED_FACTOR", 2)
    store = EventStore(tmp_path / "ev", per_user=1)
    store.record([Event("u", "a", 0, 1.0), Event("u", "b", 0, 2.0)], lambda u: True)
    with store.env.begin(write=True) as txn:
        txn.put(b"u\0a", b"bad", db=store._retired)
    assert store.retired("u") == ["a"]
    store.record([Event("u", "a", 0, 3.0), Event("u", "c", 0, 4.0)], lambda u: True)
    with store.env.begin() as txn:                  # the stale index key (1.0, a) is still there
        assert txn.get(b"u\0" + struct.pack(">d", 1.0) + b"a", db=store._rtime) is not None
        assert txn.get(b"u\0a", db=store._retired) == struct.pack(">d", 3.0)
    assert sorted(store.retired("u")) == ["a", "b"]
    store.record([Event("u", "d", 0, 5.0)], lambda u: True)      # retires c: evicts b, not the new a
    assert sorted(store.retired("u")) == ["a", "c"]
    store.prune(3.5)
    assert sorted(store.retired("u")) == ["c"]
    store.close()


def test_a_heavy_users_old_items_stay_excluded_past_the_retention(demo_bundle, tmp_path):
    """With 6 events kept per user (and 6 retired items), 12 new events: the 6 deleted ones' items are still
    excluded, for a user of the bundle and for one the store created."""
    from recserve.bundle import Bundle
    from recserve.pipeline.messages import Filters, RecRequest
    from recserve.pipeline.recommender import Recommender

    with Bundle.open(demo_bundle) as b:
        rec = Recommender(b, EventStore(tmp_path / "ev", per_user=6))
        known = b.tables.id_of("user", 0)
        now = time.time()
        for user in (known, "new-" + uuid.uuid4().hex):
            def answer() -> set[str]:
                req = RecRequest(user_id=user, k=b.n_items, filters=Filters(in_stock_only=False), timestamp=now)
                return {i.item_id for i in rec.recommend(req).items}

            bought = sorted(answer())[:12]
            rec.record_events([Event(user, i, 3, now - 100 + k) for k, i in enumerate(bought)])
            assert len(rec.store.recent_columns(user, 100)[0]) == 6 and len(rec.store.retired(user)) == 6
            assert not answer() & set(bought)


def test_over_grpc_a_user_past_the_retention_gets_none_of_her_items_back(start_server, shared_root, tmp_path):
    """A real two-worker server keeping 5 events per user (and 5 retired items): 10 purchases, then
    Recommends over fresh connections (both workers) return none of the 10."""
    from recserve.v1 import recommender_pb2 as pb

    s = start_server(shared_root, "--workers", "2", "--events-per-user", "5", "--events-dir", str(tmp_path / "ev"))
    user = "heavy-" + uuid.uuid4().hex
    first = s.stub().Recommend(pb.RecommendRequest(user_id=user, k=50), timeout=10)
    bought = [i.item_id for i in first.items][:10]
    now = time.time()
    r = s.stub().RecordEvents(pb.RecordEventsRequest(events=[
        pb.Event(user_id=user, item_id=i, type=pb.EVENT_TYPE_PURCHASE, timestamp=now - 100 + k)
        for k, i in enumerate(bought)]), timeout=10)
    assert r.accepted == 10
    for _ in range(8):
        ch = s.channel()
        from recserve.v1 import recommender_pb2_grpc as pbg

        resp = pbg.RecommenderStub(ch).Recommend(pb.RecommendRequest(user_id=user, k=50), timeout=10)
        ch.close()
        assert len(resp.items) == 50 and not {i.item_id for i in resp.items} & set(bought)


def test_a_store_of_the_first_layout_is_converted_once(tmp_path):
    """Whole sets under bare user ids (the layout of the first version of retired items) become one key per
    item when the store is opened, and are then kept, pruned and forgotten like any."""
    store = EventStore(tmp_path / "ev", per_user=3)
    store.record([Event("v", "x", 0, 9.0)], lambda u: True)
    with store.env.begin(write=True) as txn:
        packed = (2).to_bytes(4, "big") + struct.pack(">2d", 1.0, 2.0) + "a\nb".encode()
        txn.put(b"u", packed, db=store._retired)
        txn.put(b"w", b"\x00\x00\x00\x05junk", db=store._retired)        # damaged: dropped
        txn.delete(b"retired_keys", db=store._meta)
    store.close()
    store = EventStore(tmp_path / "ev", per_user=3)
    assert _retired_times(store, "u") == {"a": 1.0, "b": 2.0} and _retired_times(store, "w") == {}
    assert store.stats()["retired_items"] == 2
    with store.env.begin() as txn:
        assert txn.get(b"u", db=store._retired) is None and txn.get(b"retired_keys", db=store._meta) == b"1"
    store.prune(1.5)
    assert _retired_times(store, "u") == {"b": 2.0}
    store.forget(["u"])
    assert store.stats()["retired_items"] == 0
    store.close()


def test_damaged_entries_heal(tmp_path, monkeypatch):
    """A damaged value that is never retired again goes with its index key (eviction or prune), and a count
    above the real number is recounted when eviction runs out of items (what that eviction took is lost:
    the set and its count agree again, and later items are kept)."""
    monkeypatch.setattr(E, "RETIRED_FACTOR", 2)
    store = EventStore(tmp_path / "ev", per_user=1)
    store.record([Event("u", "a", 0, 1.0), Event("u", "b", 0, 2.0), Event("u", "c", 0, 3.0)], lambda u: True)
    with store.env.begin(write=True) as txn:
        txn.put(b"u\0a", b"bad", db=store._retired)
    store.prune(10.0)
    assert _retired_times(store, "u") == {}
    store.record([Event("v", "a", 0, 1.0), Event("v", "b", 0, 2.0)], lambda u: True)
    with store.env.begin(write=True) as txn:
        txn.put(b"v", (7).to_bytes(8, "big"), db=store._rcount)
    store.record([Event("v", "c", 0, 3.0)], lambda u: True)
    assert _retired_times(store, "v") == {}                             # the count agrees with it
    store.record([Event("v", "d", 0, 4.0), Event("v", "e", 0, 5.0)], lambda u: True)
    assert _retired_times(store, "v") == {"c": 3.0, "d": 4.0}
    store.close()


def test_a_prune_in_batches_of_one_visits_every_user_and_ends(tmp_path):
    """The batch counts users visited as well as deletions: a thousand users with nothing old, in batches
    of one, still end the pass (a user with nothing to delete is never resumed at)."""
    store = EventStore(tmp_path / "ev", per_user=1)
    store.record([Event(f"u{k}", "a", 0, 100.0 + k % 3) for k in range(1000)], lambda u: True)
    store.record([Event("u5", "b", 0, 200.0)], lambda u: True)          # u5 retires "a" at 105
    commits = []
    assert store.prune(50.0, batch=1, committed=lambda d, e, r: commits.append(d) is None) == (0, 0, 0)
    assert len(commits) > 1000 and store.retired("u5") == ["a"]
    assert store.prune(150.0, batch=1) == (999, 999, 1)
    assert store.retired("u5") == [] and store.recent_columns("u5", 5)[0] == ["b"]
    store.close()
