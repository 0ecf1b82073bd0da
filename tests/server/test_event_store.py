"""The event store's reads: the last N events of one user, oldest first, never another user's."""
from __future__ import annotations

import numpy as np
import pytest

from recserve.events import Event, EventStore
from recserve.pipeline.history import Histories


def test_recent_columns_last_n_oldest_first(tmp_path):
    st = EventStore(tmp_path / "ev")
    evs = [Event("u1", f"i{k}", k % 5, 1000.0 + k) for k in range(30)]
    evs += [Event("u10", "x", 1, 5.0), Event("u", "y", 2, 7.0), Event("u1\x01", "z", 3, 9.0)]
    st.record(evs[::-1], known_user=lambda u: True)          # written newest first: order by time
    items, types, ts = st.recent_columns("u1", 12)
    assert items == [f"i{k}" for k in range(18, 30)]
    assert types.dtype == np.int8 and types.tolist() == [k % 5 for k in range(18, 30)]
    assert ts.dtype == np.float64 and ts.tolist() == [1000.0 + k for k in range(18, 30)]
    assert st.recent_columns("u10", 5)[0] == ["x"] and st.recent_columns("u", 5)[0] == ["y"]
    assert st.recent_columns("nobody", 5)[0] == [] and st.recent_columns("u1", 0)[0] == []
    assert [e.item_id for e in st.recent("u1", 3)] == ["i27", "i28", "i29"]
    assert st.recent("u1", 1)[0] == Event("u1", "i29", 4, 1029.0)


def test_event_item_rows_memo_matches_the_id_map_and_stays_bounded(demo_bundle, tmp_path, monkeypatch):
    import numpy as np

    from recserve.bundle import Bundle
    from recserve.pipeline.recommender import Recommender

    with Bundle.open(demo_bundle) as b:
        rec = Recommender(b, EventStore(tmp_path / "ev"))
        ids = [b.tables.id_of("item", r) for r in range(0, min(b.n_items, 60))]
        items = ids + ["no-such-item"] + ids[:10]
        want = b.tables.rows_of("item", items)
        np.testing.assert_array_equal(rec.histories.event_item_rows(items), want)
        np.testing.assert_array_equal(rec.histories.event_item_rows(items), want)    # from the memo
        assert rec.histories._event_rows["no-such-item"] == -1
        rec.histories._event_rows.clear()
        monkeypatch.setattr(Histories, "EVENT_ROWS_MAX", 40)
        rec.histories.event_item_rows(ids[:30])
        assert len(rec.histories._event_rows) == 30
        np.testing.assert_array_equal(rec.histories.event_item_rows(ids[30:60][::-1]), want[30:60][::-1])
        assert sorted(rec.histories._event_rows) == sorted(ids[30:60])     # 30 + 30 > 40: started over


def test_user_stamp_changes_with_every_write_of_the_user(tmp_path):
    store = EventStore(tmp_path / "ev")
    assert store.user_stamp("u1") is None
    store.record([Event("u1", "i1", 0, 100.0), Event("u2", "i2", 0, 100.0)], lambda u: True)
    s1 = store.user_stamp("u1")
    s2 = store.user_stamp("u2")
    assert s1 is not None and s2 is not None and s1 != s2
    store.record([Event("u2", "i3", 0, 50.0)], lambda u: True)          # an older timestamp: still a change
    assert store.user_stamp("u1") == s1 and store.user_stamp("u2") > s2


def test_long_event_histories_are_kept_until_the_user_writes_again(demo_bundle, tmp_path):
    import numpy as np

    from recserve.bundle import Bundle
    from recserve.pipeline.recommender import Recommender

    with Bundle.open(demo_bundle) as b:
        store = EventStore(tmp_path / "ev")
        rec = Recommender(b, store)
        items = [b.tables.id_of("item", r) for r in range(0, min(b.n_items, 50))]
        user = "heavy-user"
        n = Histories.CACHE_MIN_EVENTS + 8
        t0 = b.data_end + 1000.0           # after the bundle's data: in the history
        rec.record_events([Event(user, items[k % len(items)], 0, t0 + k) for k in range(n)])
        first = rec.histories.of(user, None)
        again = rec.histories.of(user, None)
        assert all(a is b_ for a, b_ in zip(first, again))                  # kept: the same arrays
        assert not first[0].flags.writeable
        np.testing.assert_array_equal(first[2], t0 + np.arange(n))
        # a write of the user -- even one dated before the newest event -- makes the next read fresh
        rec.record_events([Event(user, items[7], 2, t0 - 500.0)])
        fresh = rec.histories.of(user, None)
        assert fresh[0] is not first[0] and len(fresh[0]) == n + 1
        assert fresh[2][0] == t0 - 500.0 and fresh[1][0] == 2
        # a short history is read every time (nothing kept)
        rec.record_events([Event("light-user", items[0], 0, t0)])
        a1, a2 = rec.histories.of("light-user", None), rec.histories.of("light-user", None)
        assert a1[0] is not a2[0] and "light-user" not in rec.histories._cache


def test_each_user_keeps_her_newest_events_up_to_the_cap(tmp_path):
    """Beyond ``per_user`` events a write deletes the user's oldest (by time, then arrival), never another
    user's; the count survives reopening, and a store without counts is counted on the next write."""
    import lmdb

    store = EventStore(tmp_path / "ev", per_user=5)
    store.record([Event("u1", f"a{k}", 0, 100.0 + k) for k in range(4)], lambda u: True)
    store.record([Event("u2", "b", 0, 1.0), Event("u10", "c", 0, 1.0)], lambda u: True)
    store.record([Event("u1", f"a{k}", 0, 100.0 + k) for k in range(4, 9)], lambda u: True)
    assert store.recent_columns("u1", 100)[0] == [f"a{k}" for k in range(4, 9)]
    done = store.record([Event("u1", "old", 0, 1.0)], lambda u: True)  # older than all she has: dropped
    assert done == (1, 0, 0, 1, ())                                    # ... and the reply says so
    assert store.recent_columns("u1", 100)[0] == [f"a{k}" for k in range(4, 9)]
    assert store.recent_columns("u2", 100)[0] == ["b"] and store.recent_columns("u10", 100)[0] == ["c"]
    assert store.stats()["events"] == 7
    store.close()
    # counts dropped, as in a store written before they were kept: the next write counts the user
    env = lmdb.open(str(tmp_path / "ev"), max_dbs=6)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"ucount", txn=txn), delete=False)
    env.close()
    store = EventStore(tmp_path / "ev", per_user=3)
    store.record([Event("u1", "new", 0, 500.0)], lambda u: True)
    assert store.recent_columns("u1", 100)[0] == ["a7", "a8", "new"]
    done = store.record([Event("u1", f"n{k}", 0, 600.0 + k) for k in range(10)], lambda u: True)  # one batch
    assert store.recent_columns("u1", 100)[0] == ["n7", "n8", "n9"]
    assert done.not_kept == 7                                          # her older ones were not this batch's
    store.close()


def test_an_exact_repeat_of_a_stored_event_is_kept_once(tmp_path):
    """A retried batch (same user, item, type and timestamp) does not count its events twice, within a batch
    or across batches; events differing in any of the four are all kept."""
    store = EventStore(tmp_path / "ev")
    batch = [Event("u1", "a", 0, 100.0), Event("u1", "b", 0, 100.0), Event("u2", "a", 0, 100.0)]
    assert store.record(batch, lambda u: False) == (3, 2, 0, 0, ())
    again = store.record(batch + [Event("u1", "a", 0, 100.0)], lambda u: False)
    assert again == (4, 0, 4, 0, (0, 1, 2, 3))                          # ... and where the repeats are
    assert store.stats()["events"] == 3
    stamp = store.user_stamp("u1")
    differ = [Event("u1", "a", 1, 100.0), Event("u1", "a", 0, 100.5), Event("u1", "c", 0, 100.0),
              Event("u1", "c", 0, 100.0)]
    assert store.record(differ, lambda u: False) == (4, 0, 1, 0, (3,))
    assert store.stats()["events"] == 6 and store.user_stamp("u1") != stamp
    stamp = store.user_stamp("u1")
    store.record([Event("u1", "c", 0, 100.0)], lambda u: False)       # nothing new: her stamp stays
    assert store.user_stamp("u1") == stamp
    assert sorted(store.recent_columns("u1", 100)[0]) == ["a", "a", "a", "b", "c"]
    now = Event("u1", "c", 0, 100.0, server_time=True)                # stamped by the server: not a retry
    assert store.record([now, now], lambda u: False) == (2, 0, 0, 0, ())
    store.close()


def test_a_write_aborted_before_its_commit_writes_nothing(tmp_path):
    """``before_commit`` raising (a deadline that passed while the write waited) leaves the store as it was."""
    store = EventStore(tmp_path / "ev")
    store.record([Event("u1", "a", 0, 100.0)], lambda u: False)

    def late():
        raise TimeoutError("late")

    with pytest.raises(TimeoutError):
        store.record([Event("u1", "b", 0, 101.0), Event("new", "a", 0, 1.0)], lambda u: False, late)
    assert store.stats() == {"events": 1, "users": 1, "users_with_events": 1, "items": 0, "retired_items": 0}
    assert store.recent_columns("u1", 10)[0] == ["a"]
    store.close()


def test_a_full_event_store_refuses_the_write_and_keeps_what_it_had(tmp_path):
    import lmdb
    import pytest

    store = EventStore(tmp_path / "ev", map_size=1 << 20, per_user=100_000)
    batch = 0
    with pytest.raises(lmdb.MapFullError):
        while batch < 10_000:
            store.record([Event(f"user-{batch}-{k}", "item", 0, 1.0) for k in range(200)], lambda u: True)
            batch += 1
    assert batch > 0 and store.stats()["events"] == 200 * batch        # the failed batch left nothing
    store.close()


def test_consumed_items_stay_excluded_past_the_history_window(demo_bundle, tmp_path):
    """The user vector reads the newest ``history_len`` events, but "exclude consumed" drops every item
    the bundle history or the event store holds for the user: before, a user at the window's size saw
    her oldest consumed items again after new events, and a back-dated purchase was not excluded."""
    import time

    import numpy as np

    from recserve.bundle import Bundle
    from recserve.pipeline.messages import Filters, RecRequest
    from recserve.pipeline.recommender import Recommender

    with Bundle.open(demo_bundle) as b:
        indptr = np.asarray(b.tables.array("hist_indptr"))
        user_row = int(np.argmax(np.diff(indptr)))
        user = b.tables.id_of("user", user_row)
        trained = {b.tables.id_of("item", int(r))
                   for r in b.tables.array("hist_items")[indptr[user_row]:indptr[user_row + 1]]}
        n = len(trained)
        rec = Recommender(b, EventStore(tmp_path / "ev"), {"history_len": n})     # she fills the window
        others = [b.tables.id_of("item", r) for r in range(b.n_items) if b.tables.id_of("item", r) not in trained]
        now = time.time()

        def answer() -> list[str]:
            req = RecRequest(user_id=user, k=b.n_items, filters=Filters(in_stock_only=False), timestamp=now)
            return [i.item_id for i in rec.recommend(req).items]

        assert not trained & set(answer())
        rec.record_events([Event(user, i, 0, now - 100 + k) for k, i in enumerate(others[:30])])
        got = answer()
        assert not trained & set(got) and not set(others[:30]) & set(got)
        assert len(rec.histories.of(user, user_row)[0]) == n                # the vector's window did not grow
        back = [i for i in got if i not in trained][0]
        rec.record_events([Event(user, back, 3, 1.0)])                  # a purchase dated 1970
        assert back not in answer()


def test_item_changes_list_what_each_update_changed_while_kept(tmp_path, monkeypatch):
    import recserve.events as E

    monkeypatch.setattr(E, "ITEM_CHANGES_KEPT", 5)
    store = EventStore(tmp_path / "ev")
    assert store.item_changes(0) == (0, {})
    store.update_items([("a", False, None), ("b", None, 3.0)])
    store.update_items([("a", True, 2.5)])
    assert store.item_changes(0) == (2, {"a": {"in_stock": True, "price": 2.5}, "b": {"price": 3.0}})
    assert store.item_changes(1) == (2, {"a": {"in_stock": True, "price": 2.5}})
    assert store.item_changes(2) == (2, {})
    for g in range(8):
        store.update_items([(f"i{g}", False, None)])
    assert store.item_changes(4) == (10, None)         # updates 5.. are no longer all listed: read it whole
    assert store.item_changes(6)[1] == {f"i{g}": {"in_stock": False} for g in range(4, 8)}


def test_an_item_snapshot_built_from_changes_equals_one_built_whole(demo_bundle, tmp_path):
    """A worker applies only the items updated since its snapshot: the same snapshot as reading every
    item state (before: every update re-read and re-parsed the state of every item ever updated)."""
    import numpy as np

    from recserve.bundle import Bundle
    from recserve.pipeline.recommender import Recommender

    rng = np.random.default_rng(0)
    with Bundle.open(demo_bundle) as b:
        store = EventStore(tmp_path / "ev")
        live = Recommender(b, store)
        whole = store.item_states
        reads = []
        store.item_states = lambda: reads.append(1) or whole()
        ids = [b.tables.id_of("item", r) for r in range(b.n_items)]
        for _ in range(30):
            picks = rng.choice(len(ids), 5, replace=False)
            live.update_items([(ids[i], bool(rng.random() < 0.5), float(rng.integers(1, 100))) for i in picks])
            live._refresh_items()
        assert len(reads) == 1                      # the first snapshot only; then the changes
        fresh = Recommender(b, store)._refresh_items()
        snap = live._refresh_items()
        np.testing.assert_array_equal(snap.feats, fresh.feats)
        np.testing.assert_array_equal(snap.price, fresh.price)
        np.testing.assert_array_equal(snap.in_stock, fresh.in_stock)
        assert live._items_gen == 30
