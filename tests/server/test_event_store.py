"""The event store's reads: the last N events of one user, oldest first, never another user's."""
from __future__ import annotations

import numpy as np

from recserve.events import Event, EventStore


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
        np.testing.assert_array_equal(rec._event_item_rows(items), want)
        np.testing.assert_array_equal(rec._event_item_rows(items), want)    # from the memo
        assert rec._event_rows["no-such-item"] == -1
        rec._event_rows.clear()
        monkeypatch.setattr(Recommender, "EVENT_ROWS_MAX", 40)
        rec._event_item_rows(ids[:30])
        assert len(rec._event_rows) == 30
        np.testing.assert_array_equal(rec._event_item_rows(ids[30:60][::-1]), want[30:60][::-1])
        assert sorted(rec._event_rows) == sorted(ids[30:60])     # 30 + 30 > 40: started over
