"""Items of the events that the store's retention deleted stay consumed: a user past ``--events-per-user``
keeps her newest events for the user vector, and every item she had is still excluded."""
from __future__ import annotations

import random
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recserve.events as E
from recserve.events import Event, EventStore, pack_retired, unpack_retired

_ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_ids, st.floats(allow_nan=False, allow_infinity=False), max_size=30))
def test_pack_and_unpack_are_inverse(items):
    assert unpack_retired(pack_retired(items)) == items


def test_deleted_events_items_are_retired_with_their_newest_time(tmp_path):
    store = EventStore(tmp_path / "ev", per_user=3)
    store.record([Event("u", f"a{k % 4}", 0, 100.0 + k) for k in range(9)], lambda u: True)
    # kept: the newest three (a2, a3, a0 at 106..108); deleted: a0..a3 at 100..103, a0 and a1 at 104, 105
    assert store.recent_columns("u", 10)[0] == ["a2", "a3", "a0"]
    assert sorted(store.retired("u")) == ["a0", "a1", "a2", "a3"]
    with store.env.begin() as txn:
        raw = txn.get(b"u", db=store._retired)
    assert unpack_retired(raw) == {"a0": 104.0, "a1": 105.0, "a2": 102.0, "a3": 103.0}
    done = store.record([Event("u", "old", 3, 1.0)], lambda u: True)   # dropped at once: still consumed
    assert done.not_kept == 1 and "old" in store.retired("u")
    assert store.retired("v") == [] and store.retired("") == []
    store.close()


def test_the_retired_set_keeps_the_newest_items_up_to_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "RETIRED_FACTOR", 2)
    store = EventStore(tmp_path / "ev", per_user=2)
    assert store.retired_per_user == 4
    for k in range(12):
        store.record([Event("u", f"i{k}", 0, 100.0 + k)], lambda u: True)
    assert store.recent_columns("u", 10)[0] == ["i10", "i11"]
    assert sorted(store.retired("u")) == ["i6", "i7", "i8", "i9"]
    store.close()


def test_forget_deletes_the_retired_items(tmp_path):
    store = EventStore(tmp_path / "ev", per_user=1)
    store.record([Event("u", "a", 0, 1.0), Event("u", "b", 0, 2.0), Event("u1", "c", 0, 1.0),
                  Event("u1", "d", 0, 2.0)], lambda u: True)
    assert store.retired("u") == ["a"] and store.retired("u1") == ["c"]
    assert store.forget(["u"]) == (1, 1)
    assert store.retired("u") == [] and store.retired("u1") == ["c"]
    store.close()


@pytest.mark.parametrize("seed", range(8))
def test_prune_drops_the_retired_items_as_old_as_the_events_it_deletes(tmp_path, seed):
    """Against a model of the store: per user, the newest time of each item her deleted events had."""
    rng = random.Random(seed)
    per_user = rng.randint(1, 4)
    store = EventStore(tmp_path / "ev", per_user=per_user)
    users = [f"u{k}" for k in range(rng.randint(1, 9))]
    model: dict[str, dict[str, float]] = {u: {} for u in users}
    for t in range(rng.randint(1, 80)):
        u = rng.choice(users)
        store.record([Event(u, f"i{rng.randint(0, 9)}", 0, float(t))], lambda u: True)
    for u in users:
        kept = store.recent_columns(u, 100)[2]
        with store.env.begin() as txn:
            raw = txn.get(u.encode(), db=store._retired)
        model[u] = unpack_retired(raw) if raw is not None else {}
        assert all(t <= kept.min() for t in model[u].values()) if len(kept) else not model[u]
    stamps = {u: store.user_stamp(u) for u in users}
    before = float(rng.randint(0, 80))
    store.prune(before, batch=rng.choice([1, 2, 1000]))
    for u in users:
        left = {i for i, t in model[u].items() if t >= before}
        assert set(store.retired(u)) == left
        if len(left) < len(model[u]) and store.user_stamp(u) is not None:
            assert store.user_stamp(u) > stamps[u]               # her cached history is stale
    store.close()


def test_a_heavy_users_old_items_stay_excluded_past_the_retention(demo_bundle, tmp_path):
    """With 3 events kept per user, 12 new events: the 9 deleted ones' items are still excluded, for a user
    of the bundle and for one the store created."""
    from recserve.bundle import Bundle
    from recserve.pipeline.messages import Filters, RecRequest
    from recserve.pipeline.recommender import Recommender

    with Bundle.open(demo_bundle) as b:
        rec = Recommender(b, EventStore(tmp_path / "ev", per_user=3))
        known = b.tables.id_of("user", 0)
        now = time.time()
        for user in (known, "new-" + uuid.uuid4().hex):
            def answer() -> set[str]:
                req = RecRequest(user_id=user, k=b.n_items, filters=Filters(in_stock_only=False), timestamp=now)
                return {i.item_id for i in rec.recommend(req).items}

            bought = sorted(answer())[:12]
            rec.record_events([Event(user, i, 3, now - 100 + k) for k, i in enumerate(bought)])
            assert len(rec.store.recent_columns(user, 100)[0]) == 3
            assert not answer() & set(bought)


def test_over_grpc_a_user_past_the_retention_gets_none_of_her_items_back(start_server, shared_root, tmp_path):
    """A real two-worker server keeping 2 events per user: 10 purchases, then Recommends over fresh
    connections (both workers) return none of the 10."""
    from recserve.v1 import recommender_pb2 as pb

    s = start_server(shared_root, "--workers", "2", "--events-per-user", "2", "--events-dir", str(tmp_path / "ev"))
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
