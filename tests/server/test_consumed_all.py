"""Every item a user consumed in the bundle's data is excluded, however old: a heavy user's bundle history holds
only her newest ``history_len`` events, and the items she had only before them are consumed all the same.

The demo bundle's data (``synth(300, 200, seed=0)``) has a user with more training events than the bundle's
``history_len``, some of whose items are only in the events older than those it keeps of her.
"""
from __future__ import annotations

import numpy as np
import pytest

from recserve.bundle import Bundle
from recserve.events import Event, EventStore
from recserve.pipeline.messages import Filters, RecRequest


@pytest.fixture(scope="module")
def heavy(demo_bundle):
    """(bundle, user row, every item row she had in the training data, those only before her bounded history)."""
    from trainer.synth import synth

    ds, _ = synth(300, 200, seed=0)         # the demo bundle's data (tests/conftest.py)
    with Bundle.open(demo_bundle) as b:
        train = ds.ts < b.data_end
        counts = np.bincount(ds.user[train], minlength=ds.n_users)
        u = int(counts.argmax())
        assert counts[u] > int(b.params["history_len"])
        row = b.tables.row_of("user", str(ds.user_ids[u]))
        rows = b.tables.rows_of("item", [str(ds.item_ids[i]) for i in np.unique(ds.item[train & (ds.user == u)])])
        indptr = b.tables.array("hist_indptr")
        kept = set(np.asarray(b.tables.array("hist_items")[indptr[row]:indptr[row + 1]]).tolist())
        early = sorted(set(rows.tolist()) - kept)
        assert early, "no item of hers only before her newest history_len events"
        yield b, row, np.sort(rows), early


def test_her_consumed_items_are_every_item_of_her_data(heavy):
    from recserve.pipeline.recommender import Recommender

    b, row, rows, early = heavy
    rec = Recommender(b, None)
    h = rec.histories.of(b.tables.id_of("user", row), row)
    assert len(h[0]) == int(b.params["history_len"])          # the history stays bounded
    np.testing.assert_array_equal(h[3], rows)


@pytest.mark.parametrize("store", [False, True])
def test_items_she_had_only_before_her_bounded_history_are_never_recommended(heavy, tmp_path, store):
    """With ``exclude_consumed`` (the default) none of her items comes back, whichever k; without it, with k the
    whole catalogue, they do. With an event store, her real-time events add to the set."""
    from recserve.pipeline.recommender import Recommender

    b, row, rows, early = heavy
    uid = b.tables.id_of("user", row)
    events = EventStore(tmp_path / "ev") if store else None
    rec = Recommender(b, events)
    consumed = set(rows.tolist())
    if store:
        fresh = next(r for r in range(b.n_items) if r not in consumed)
        rec.record_events([Event(uid, b.tables.id_of("item", fresh), 3, b.data_end + 60.0)])
        consumed.add(fresh)
    now = b.data_end + 3600.0
    every = Filters(in_stock_only=False)
    for k in (10, 20, 50, b.n_items):
        got = b.tables.rows_of("item", [i.item_id for i in rec.recommend(
            RecRequest(user_id=uid, k=k, filters=every, timestamp=now)).items])
        assert len(got) and not set(got.tolist()) & consumed, k
    got = b.tables.rows_of("item", [i.item_id for i in rec.recommend(
        RecRequest(user_id=uid, k=b.n_items, filters=every, timestamp=now, exclude_consumed=False)).items])
    assert set(early) <= set(got.tolist())
    if events is not None:
        events.close()
