"""The served history reads the event store's events from the bundle's data end on.

The normal loop: a bundle is served while a user's events are recorded through RecordEvents; the logs
then hold them too, and the next bundle is built from the logs. Served with that bundle, the events must
count once (as the trainer counts them), not once from the bundle and once from the store. Two real
bundles of the same synthetic data: ``early`` (the demo bundle: the newest tenth held out, its data ends
at the test cut) and ``rebuilt`` (everything, as a nightly rebuild from logs holding the recorded events).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from recserve._core import candidates as CC
from recserve.events import Event, EventStore
from recserve.pipeline.history import Histories
from recserve.pipeline.messages import Filters, RecRequest

sys.path.insert(0, str(Path(__file__).parent))
from srvutil import copy_root, set_current  # noqa: E402


@pytest.fixture(scope="module")
def loop(demo_bundle, tmp_path_factory):
    """(root, early version, rebuilt version, the data set): a root serving the demo bundle, and beside it
    a bundle rebuilt from the same data with nothing held out (CURRENT names the early one)."""
    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    root = copy_root(Path(demo_bundle), tmp_path_factory.mktemp("loop") / "root")
    early = (root / "CURRENT").read_text().strip()
    ds, _ = synth(300, 200, seed=0)          # the demo bundle's data (tests/conftest.py)
    rebuilt = build(ds, root, {"seed": 0, "factors": 16, "ranker_users": 300, "ranker_rounds": 60, "holdout": 0},
                    timer=Timer(verbose=False)).name
    set_current(root, early)
    return root, early, rebuilt, ds


def _open(root, version):
    from recserve.bundle import Bundle

    return Bundle.open(root / version)


def _recorded(b_early, b_rebuilt, ds, n_min=3):
    """(user id, her events as RecordEvents sent them): a user with a history in both bundles whose events
    after the early bundle's data end (held out of it, in the rebuilt one's) number at least ``n_min``,
    and all of whose events fit both bundles' history windows."""
    window = min(int(b_early.params["history_len"]), int(b_rebuilt.params["history_len"]))
    counts = np.bincount(ds.user, minlength=ds.n_users)
    late = np.bincount(ds.user[ds.ts >= b_early.data_end], minlength=ds.n_users)
    ok = np.flatnonzero((late >= n_min) & (counts - late > 0) & (counts <= window))
    assert len(ok), "no user with held-out events in the demo data"
    u = int(ok[np.argmax(late[ok])])
    m = (ds.user == u) & (ds.ts >= b_early.data_end)
    uid = str(ds.user_ids[u])
    events = [Event(uid, str(ds.item_ids[i]), int(e), float(t)) for i, e, t in zip(ds.item[m], ds.event[m], ds.ts[m])]
    return uid, events


def _as_set(h):
    """A history as a sorted list of (timestamp, event, row): the bundle and the store order ties alike only
    up to events of one timestamp."""
    rows, ev, ts = h[:3]
    return sorted(zip(ts.tolist(), ev.tolist(), rows.tolist()))


def _vector(rec, h, now):
    return CC.history_vector(rec.emb, h[0], h[1], h[2], now, rec.cparams)


def _top(rec, uid, now, k=10):
    res = rec.recommend(RecRequest(user_id=uid, k=k, timestamp=now))
    return [(i.item_id, round(i.score, 6)) for i in res.items]


def test_events_the_rebuilt_bundle_holds_are_read_once(loop, tmp_path):
    """Recorded while the early bundle served, then built into the next: served from the rebuilt bundle and
    the store, her history, user vector and recommendations are the rebuilt bundle's alone (the trainer's),
    while the early bundle, whose data ends before them, reads them from the store."""
    from recserve.pipeline.recommender import Recommender
    from trainer.build import artifacts_from_bundle

    root, early, rebuilt, ds = loop
    with _open(root, early) as a, _open(root, rebuilt) as b:
        uid, events = _recorded(a, b, ds)
        store = EventStore(tmp_path / "ev")
        Recommender(a, store).record_events(events)          # as they happened, while the early bundle served
        row_a, row_b = a.tables.row_of("user", uid), b.tables.row_of("user", uid)
        served_b = Recommender(b, store)
        alone_b = Recommender(b, None)
        h = served_b.histories.of(uid, row_b)
        h_alone = alone_b.histories.of(uid, row_b)
        assert len(h[0]) == len(h_alone[0])                  # not len + len(events)
        for got, want in zip(h, h_alone):
            np.testing.assert_array_equal(got, want)
        now = b.data_end + 3600.0
        art = artifacts_from_bundle(b)
        items, ts, ev = art.history(row_b)
        trained = CC.history_vector(art.item_emb, items, ev, ts, now, b.params)
        np.testing.assert_allclose(_vector(served_b, h, now), trained, rtol=0, atol=1e-6)
        assert _top(served_b, uid, now) == _top(alone_b, uid, now)
        # the early bundle does not hold them: it reads them from the store, and then holds what the
        # rebuilt bundle holds
        h_a = Recommender(a, store).histories.of(uid, row_a)
        h_a_alone = Recommender(a, None).histories.of(uid, row_a)
        assert len(h_a[0]) == len(h_a_alone[0]) + len(events)
        assert _as_set(h_a) == _as_set(h_alone)
        store.close()


def test_events_after_the_data_end_still_move_the_history(loop, tmp_path):
    """An event dated at or after the bundle's data end is new to it: it joins the history and moves the user
    vector (the bundle holds the events dated before its data end, not at it); one a second earlier does
    not, but it still excludes its item as consumed."""
    from recserve.pipeline.recommender import Recommender

    root, early, rebuilt, ds = loop
    with _open(root, rebuilt) as b:
        store = EventStore(tmp_path / "ev")
        rec, alone = Recommender(b, store), Recommender(b, None)
        indptr = np.asarray(b.tables.array("hist_indptr"))
        row = int(np.flatnonzero(np.diff(indptr) > 2)[0])
        uid = b.tables.id_of("user", row)
        mine = set(np.asarray(b.tables.array("hist_items")[indptr[row]:indptr[row + 1]]).tolist())
        others = [b.tables.id_of("item", r) for r in range(b.n_items) if r not in mine]
        now = b.data_end + 3600.0
        base = alone.histories.of(uid, row)
        v0 = _vector(alone, base, now)
        # back-dated (never in the logs): taken to be in the bundle, so read by no history
        rec.record_events([Event(uid, others[0], 3, b.data_end - 1.0)])
        h = rec.histories.of(uid, row)
        for got, want in zip(h[:3], base[:3]):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(_vector(rec, h, now), v0, rtol=0, atol=1e-6)
        assert b.tables.row_of("item", others[0]) in h[3]            # consumed all the same
        answer = rec.recommend(RecRequest(user_id=uid, k=b.n_items, filters=Filters(in_stock_only=False),
                                          timestamp=now))
        assert others[0] not in {i.item_id for i in answer.items}
        # at the data end and after it: new
        rec.record_events([Event(uid, others[1], 1, b.data_end), Event(uid, others[2], 3, b.data_end + 60.0)])
        h = rec.histories.of(uid, row)
        assert len(h[0]) == len(base[0]) + 2
        assert h[0][-2:].tolist() == [b.tables.row_of("item", others[1]), b.tables.row_of("item", others[2])]
        assert h[2][-2:].tolist() == [b.data_end, b.data_end + 60.0]
        assert float(_vector(rec, h, now) @ v0) < 0.9999                  # the vector moved
        store.close()


@pytest.mark.parametrize("who", ["unknown", "in the user table, no interactions"])
def test_a_user_the_bundle_holds_no_history_of_has_every_event_read(loop, tmp_path, who):
    """A user's events back-filled through RecordEvents, all dated before the bundle's data end: the bundle
    holds none of them (it does not know her, or knows her from its user table alone), so they are her
    history and she is no cold start."""
    from recserve.pipeline.recommender import Recommender

    root, early, rebuilt, ds = loop
    with _open(root, early) as b:          # its users whose interactions are all held out have none in it
        store = EventStore(tmp_path / "ev")
        rec = Recommender(b, store)
        if who == "unknown":
            uid = "backfilled-new-user"
            assert b.tables.row_of("user", uid) is None
        else:
            empty = np.flatnonzero(np.diff(np.asarray(b.tables.array("hist_indptr"))) == 0)
            assert len(empty), "the demo data has no user without interactions"
            uid = b.tables.id_of("user", int(empty[0]))
        row = b.tables.row_of("user", uid)
        assert not rec.has_history(uid)
        items = [b.tables.id_of("item", r) for r in range(4)]
        rec.record_events([Event(uid, i, 3, b.data_end - 86400.0 * (5 - n)) for n, i in enumerate(items)])
        h = rec.histories.of(uid, row)
        assert [b.tables.id_of("item", int(r)) for r in h[0]] == items
        now = b.data_end + 3600.0
        answer = rec.recommend(RecRequest(user_id=uid, k=10, filters=Filters(in_stock_only=False), timestamp=now))
        assert not answer.cold_start and answer.items
        assert not {i.item_id for i in answer.items} & set(items)
        store.close()


def test_a_reload_moves_the_boundary_with_the_bundle_each_request_leased(loop, tmp_path, monkeypatch):
    """The store is shared across a hot reload, the boundary is not: a request leased before the reload reads
    the store with the early bundle's data end, one leased after with the rebuilt bundle's, and a history
    a worker kept (same store stamp, no write in between) under the early bundle is not served under the
    rebuilt one."""
    from recserve.config import ServeConfig
    from recserve.live import BundleHolder

    monkeypatch.setattr(Histories, "CACHE_MIN_EVENTS", 1)           # every history with events is kept
    root, early, rebuilt, ds = loop
    with _open(root, early) as a, _open(root, rebuilt) as b:
        uid, events = _recorded(a, b, ds)
    store = EventStore(tmp_path / "ev")
    holder = BundleHolder(str(root), ServeConfig(reload_interval=0), store)
    assert holder.try_reload() and holder.current.version == early
    try:
        with holder.lease() as rec_a:
            rec_a.record_events(events)
            row_a = rec_a.tables.row_of("user", uid)
            h_a = rec_a.histories.of(uid, row_a)
            assert uid in rec_a.histories._cache and rec_a.histories.of(uid, row_a)[0] is h_a[0]
            n_a = len(rec_a.histories.of(uid, row_a)[0])
            stamp = store.user_stamp(uid)
            set_current(root, rebuilt)
            assert holder.try_reload() and holder.current.version == rebuilt
            with holder.lease() as rec_b:
                assert rec_b is not rec_a and store.user_stamp(uid) == stamp
                row_b = rec_b.tables.row_of("user", uid)
                h_b = rec_b.histories.of(uid, row_b)
                indptr = np.asarray(rec_b.tables.array("hist_indptr"))
                assert len(h_b[0]) == indptr[row_b + 1] - indptr[row_b]      # the rebuilt bundle's, once
                np.testing.assert_array_equal(h_b[2], rec_b.tables.array("hist_ts")[indptr[row_b]:indptr[row_b + 1]])
                assert _as_set(h_b) == _as_set(h_a)                        # the same events, counted once
            # the request leased before the reload still reads with its bundle's boundary
            assert len(rec_a.histories.of(uid, row_a)[0]) == n_a
        with holder.lease() as rec_b:
            now = rec_b.bundle.data_end + 60.0
            rec_b.record_events([Event(uid, events[0].item_id, 1, now)])
            h = rec_b.histories.of(uid, row_b)
            assert len(h[0]) == len(h_b[0]) + 1 and h[2][-1] == now
    finally:
        if holder.current is not None:
            holder.current.bundle.close()
        set_current(root, early)
        store.close()
