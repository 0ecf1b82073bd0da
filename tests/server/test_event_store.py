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
