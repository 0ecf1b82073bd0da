"""Event-store maintenance: ``prune`` (events older than a time) and ``forget`` (everything about users), as
methods and as ``recserve store``, beside a process that keeps the store open and serving."""
from __future__ import annotations

import random
import subprocess
import sys

import pytest

from recserve.events import Event, EventStore


def _raw(store: EventStore) -> dict:
    """The store's user databases, read with plain LMDB calls: {name: {key: value}}."""
    out = {}
    with store.env.begin() as txn:
        for name in (b"ev", b"users", b"ulast", b"ucount"):
            db = store.env.open_db(name, txn=txn, create=False)
            out[name.decode()] = {bytes(k): bytes(v) for k, v in txn.cursor(db=db)}
    return out


def _written(seed: int):
    rng = random.Random(seed)
    users = ["u1", "u10", "u1\x01", "u2", "ü", "v"] + [f"x{k}" for k in range(rng.randint(0, 6))]
    events = [Event(rng.choice(users), f"i{rng.randint(0, 9)}", rng.randint(0, 4), float(rng.randint(1, 1000)))
              for _ in range(rng.randint(1, 120))]
    return users, events


@pytest.mark.parametrize("seed", range(12))
def test_prune_deletes_exactly_the_old_events_in_any_batch_size(tmp_path, seed):
    users, events = _written(seed)
    rng = random.Random(seed + 100)
    before = float(rng.randint(0, 1001))
    batch = rng.choice([1, 2, 3, 7, 50, 10_000])
    store = EventStore(tmp_path / "ev", map_size=1 << 26, per_user=1000)
    store.record(events, known_user=lambda u: u.startswith("u"))       # other users are created
    stamps = {u: store.user_stamp(u) for u in users}
    deleted, emptied, _ = store.prune(before, batch=batch)
    keep = {u: sorted((e.timestamp, e.item_id) for e in events if e.user_id == u and e.timestamp >= before)
            for u in users}
    had = {e.user_id for e in events}
    assert deleted == sum(e.timestamp < before for e in events)
    assert emptied == sum(1 for u in had if not keep[u])
    for u in users:
        items, _, ts = store.recent_columns(u, 10_000)
        assert sorted(zip(ts.tolist(), items)) == keep[u]
        lost = any(e.user_id == u and e.timestamp < before for e in events)
        if not keep[u]:
            assert store.user_stamp(u) is None and not store.has_user(u)
        elif lost:
            assert store.user_stamp(u) > stamps[u]           # a worker's cached history is stale now
        else:
            assert store.user_stamp(u) == stamps[u]
    raw = _raw(store)
    counts = {}
    for k in raw["ev"]:
        u = k[:k.index(b"\0")]
        counts[u] = counts.get(u, 0) + 1
    assert {u: int.from_bytes(v, "big") for u, v in raw["ucount"].items()} == counts
    assert set(raw["ulast"]) == set(counts)
    assert set(raw["users"]) <= set(counts)
    assert store.prune(before, batch=batch) == (0, 0, 0)
    store.close()


def test_the_count_stays_right_after_a_prune_so_the_cap_keeps_the_newest(tmp_path):
    store = EventStore(tmp_path / "ev", per_user=4)
    store.record([Event("u", f"a{k}", 0, 100.0 + k) for k in range(4)], lambda u: True)
    assert store.prune(102.0) == (2, 0, 0)
    store.record([Event("u", "b0", 0, 200.0), Event("u", "b1", 0, 201.0)], lambda u: True)
    assert store.recent_columns("u", 10)[0] == ["a2", "a3", "b0", "b1"]         # 4 kept: none evicted
    store.record([Event("u", "b2", 0, 202.0)], lambda u: True)
    assert store.recent_columns("u", 10)[0] == ["a3", "b0", "b1", "b2"]
    with pytest.raises(ValueError, match="batch"):
        store.prune(1.0, batch=0)
    store.close()


def test_forget_deletes_the_named_users_only(tmp_path):
    store = EventStore(tmp_path / "ev")
    store.record([Event(u, "i", 1, 10.0 + k) for k, u in enumerate(["u1", "u1", "u10", "u1\x01", "u", "u2"])],
                 known_user=lambda u: u == "u2")
    assert store.forget(["u1", "u2", "u1", "nobody"]) == (3, 2)
    assert store.recent_columns("u1", 10)[0] == [] and store.user_stamp("u1") is None
    assert not store.has_user("u1") and store.user_stamp("u2") is None
    for other in ["u10", "u1\x01", "u"]:
        assert store.recent_columns(other, 10)[0] == ["i"] and store.has_user(other)
    assert store.forget([]) == (0, 0) and store.forget(["nobody"]) == (0, 0)
    store.record([Event("u1", "j", 1, 5.0)], lambda u: False)               # she may come back
    assert store.recent_columns("u1", 10)[0] == ["j"] and store.has_user("u1")
    raw = _raw(store)
    assert int.from_bytes(raw["ucount"][b"u1"], "big") == 1
    store.close()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "recserve.cli", "store", *args], capture_output=True, text=True,
                          timeout=120)


def test_store_cli_forgets_and_prunes_beside_an_open_store_that_keeps_serving(demo_bundle, tmp_path):
    """The CLI writes from another process while a Recommender holds the store open: its next request
    reads the store again (a forgotten user's consumed items are recommendable again)."""
    import time

    from recserve.bundle import Bundle
    from recserve.pipeline.messages import RecRequest
    from recserve.pipeline.recommender import Recommender

    ev = tmp_path / "ev"
    with Bundle.open(demo_bundle) as b:
        store = EventStore(ev, map_size=1 << 30)
        rec = Recommender(b, store)
        user = "walk-in"
        first = [i.item_id for i in rec.recommend(RecRequest(user_id=user, k=5)).items]
        now = time.time()
        rec.record_events([Event(user, first[0], 3, now - 40 * 86400), Event(user, first[1], 3, now)])
        rec.record_events([Event("other", first[2], 3, now - 40 * 86400)])

        def servable():     # every item the answer may hold (k = the catalogue: nothing left out by rank)
            return [i.item_id for i in rec.recommend(RecRequest(user_id=user, k=b.n_items)).items]

        after = servable()
        assert first[0] not in after and first[1] not in after                   # consumed: excluded

        r = _cli("prune", "--events-dir", str(ev), "--older-than-days", "30")
        assert r.returncode == 0, r.stderr
        assert "deleted 2 events older than 30 days; 1 users left with none were removed; 0 retired items as " \
               "old were deleted" in r.stdout
        assert rec.store.recent_columns(user, 10)[0] == [first[1]] and not rec.store.has_user("other")
        after = servable()
        assert first[0] in after and first[1] not in after

        r = _cli("forget", "--events-dir", str(ev), user, "nobody")
        assert r.returncode == 0, r.stderr
        assert "forgot 2 users: 1 events deleted (1 had records in the store)" in r.stdout
        assert [i.item_id for i in rec.recommend(RecRequest(user_id=user, k=5)).items] == first
        r = _cli("stats", "--events-dir", str(ev))
        assert r.returncode == 0 and str(ev) in r.stdout
        store.close()


def test_store_cli_clears_item_states_so_the_bundle_values_return(demo_bundle, tmp_path):
    """Stock and price set by UpdateItems override every bundle until cleared: a Recommender holding the
    store open serves the bundle's values again after ``recserve store clear-items`` in another process."""
    from recserve.bundle import Bundle
    from recserve.pipeline.messages import RecRequest
    from recserve.pipeline.recommender import Recommender

    ev = tmp_path / "ev"
    with Bundle.open(demo_bundle) as b:
        store = EventStore(ev, map_size=1 << 30)
        rec = Recommender(b, store)
        first = [i.item_id for i in rec.recommend(RecRequest(k=5)).items]
        rec.update_items([(first[0], False, None), (first[1], False, None), (first[2], None, 1.0)])
        after = [i.item_id for i in rec.recommend(RecRequest(k=5)).items]
        assert first[0] not in after and first[1] not in after

        r = _cli("clear-items", "--events-dir", str(ev))
        assert r.returncode == 2 and "item ids or --all" in r.stderr, r.stderr
        r = _cli("clear-items", "--events-dir", str(ev), first[0], "--all")
        assert r.returncode == 2 and "item ids or --all" in r.stderr, r.stderr
        r = _cli("clear-items", "--events-dir", str(ev), first[0], first[0], "nosuch")
        assert r.returncode == 0 and "cleared 1 item states" in r.stdout, r.stderr
        after = [i.item_id for i in rec.recommend(RecRequest(k=5)).items]
        assert first[0] in after and first[1] not in after
        assert store.stats()["items"] == 2
        r = _cli("clear-items", "--events-dir", str(ev), "--all")
        assert r.returncode == 0 and "cleared 2 item states" in r.stdout, r.stderr
        assert [i.item_id for i in rec.recommend(RecRequest(k=5)).items] == first
        assert store.stats()["items"] == 0
        store.close()


@pytest.mark.parametrize("args, says", [
    (["stats", "--events-dir", "{missing}"], "no event store at"),
    (["stats"], "--bundle ROOT or --events-dir DIR is required"),
    (["prune", "--events-dir", "{missing}"], "--older-than-days"),
    (["prune", "--events-dir", "{missing}", "--older-than-days", "-1"], "must be in [0, 1e6]"),
    (["forget", "--events-dir", "{missing}"], "users"),
    (["stats", "--config", "{missing}/recserve.toml"], "No such file"),
])
def test_store_cli_refuses_with_exit_2_and_creates_nothing(tmp_path, args, says, monkeypatch):
    for k in ("RECSERVE_BUNDLE", "RECSERVE_EVENTS_DIR", "RECSERVE_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    missing = tmp_path / "nowhere"
    r = _cli(*[a.format(missing=missing) for a in args])
    assert r.returncode == 2 and says in r.stderr.strip().splitlines()[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not missing.exists()


def test_store_cli_keeps_the_servers_map_size_and_says_when_the_store_is_full(tmp_path):
    """The CLI opens the store with the map size it records: it never grows the file past the map of the
    process serving it (whose every read would then fail), and a full store is one line saying what to do."""
    import time

    import lmdb

    ev = tmp_path / "ev"
    store = EventStore(ev, map_size=1 << 20)                           # a server with a 1 MiB map
    old = time.time() - 40 * 86400
    with pytest.raises(lmdb.MapFullError):                             # filled with 40-day-old events
        for b in range(2000):
            store.record([Event(f"f{b % 300}", f"i{k}", 1, old + b) for k in range(50)], lambda u: False)
    held = store.stats()["events"]
    r = _cli("prune", "--events-dir", str(ev), "--older-than-days", "30")
    assert r.returncode == 1 and r.stderr.strip() == (
        f"recserve store: {ev} is full, and deleting needs free pages too: restart the server with a larger "
        f"--events-map-mb, then run this again; nothing was changed"), r.stderr
    assert store.stats()["events"] == held and len(store.recent_columns("f0", 5)[0]) == 5     # still reads
    with store.env.begin():         # a reader keeps the pages batches free: the first batch commits, the next
        r = _cli("prune", "--events-dir", str(ev), "--older-than-days", "30", "--batch", "1")     # finds none
    gone = held - store.stats()["events"]
    assert r.returncode == 1 and gone > 0 and r.stderr.strip().endswith(
        f"run this again; {gone} events were deleted, 0 users removed and 0 retired items deleted before "
        "(committed), the rest is as it was"), (gone, r.stderr)
    store.close()
    store = EventStore(ev, map_size=4 << 20, per_user=100_000)         # restarted with a larger map
    r = _cli("prune", "--events-dir", str(ev), "--older-than-days", "30", "--batch", "1000")
    assert r.returncode == 0, r.stderr
    assert store.stats()["events"] == 0 and store.env.info()["map_size"] == 4 << 20
    store.record([Event("back", "item", 0, 1.0)], lambda u: True)      # the server still reads and writes
    assert store.recent_columns("back", 5)[0] == ["item"]
    store.close()


def test_ctrl_c_during_prune_says_what_was_committed(tmp_path):
    import signal
    import time

    ev = tmp_path / "ev"
    store = EventStore(ev, map_size=1 << 30)
    store.record([Event(f"u{k % 500}", "item", 0, 1.0 + k) for k in range(20_000)], lambda u: True)
    p = subprocess.Popen([sys.executable, "-m", "recserve.cli", "store", "prune", "--events-dir", str(ev),
                          "--older-than-days", "1", "--batch", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while store.stats()["events"] == 20_000 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    gone = 20_000 - store.stats()["events"]
    assert p.returncode == 130 and "Traceback" not in err, err
    assert 0 < gone < 20_000 and err.strip() == (
        f"recserve store: interrupted; {gone} events were deleted, {gone // 40} users removed and 0 retired "
        f"items deleted before (committed), the rest is as it was"), (gone, err)
    store.close()


def _store_files(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_the_store_tool_and_the_server_refuse_an_lmdb_that_is_not_an_event_store(tmp_path):
    """A bundle's tables.lmdb given as the events directory: ``stats`` called it "an older layout" that a
    writer converts, and ``forget`` (or a server) wrote the store's ten databases into it."""
    import lmdb

    other = tmp_path / "other"
    env = lmdb.open(str(other), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"item:1", b"row")
    env.close()
    data = (other / "data.mdb").read_bytes()
    says = f"recserve store: {other} holds an LMDB environment that is not an event store (no 'ev' database)"
    for args in (["stats"], ["forget", "u1"], ["clear-items", "--all"], ["prune", "--older-than-days", "1"]):
        r = _cli(*args, "--events-dir", str(other))
        assert r.returncode == 2 and r.stderr.startswith(says) and r.stderr.count("\n") == 1, r.stderr
    with pytest.raises(ValueError, match="not an event store"):
        EventStore(other)                                   # as a server worker opens it
    assert (other / "data.mdb").read_bytes() == data
    EventStore(tmp_path / "new").close()                   # a new, empty environment is a store to make


def test_a_truncated_store_is_refused_with_its_sizes_not_a_bus_error(tmp_path):
    """A half-finished copy of ``data.mdb``: every ``recserve store`` command died of SIGBUS (exit 135,
    no message), as a server worker would at its first read."""
    ev, cut = tmp_path / "ev", tmp_path / "cut"
    store = EventStore(ev, map_size=1 << 26)
    store.record([Event(f"u{k % 300}", f"i{k % 50}", 0, 1.0 + k) for k in range(20_000)], lambda u: False)
    store.close()
    cut.mkdir()
    (cut / "data.mdb").write_bytes((ev / "data.mdb").read_bytes()[:16384])
    for args in (["stats"], ["forget", "u1"], ["clear-items", "--all"], ["prune", "--older-than-days", "1"]):
        r = _cli(*args, "--events-dir", str(cut))
        assert r.returncode == 2 and r.stderr.startswith(
            f"recserve store: {cut / 'data.mdb'} is truncated or damaged: 16384 bytes, and its last commit "
            "needs ") and r.stderr.count("\n") == 1, r.stderr
    with pytest.raises(ValueError, match="is truncated or damaged"):
        EventStore(cut)
    assert EventStore(ev, map_size=1 << 26).stats()["events"] == 20_000        # the whole file still opens


def test_an_error_after_the_change_says_the_change_was_committed(tmp_path, monkeypatch, capsys):
    """A failing read after ``forget`` committed (its stats line) said "...; nothing was changed" while the
    user was gone."""
    import lmdb

    from recserve.cli import main

    ev = tmp_path / "ev"
    store = EventStore(ev, map_size=1 << 24)
    store.record([Event("u1", "a", 0, 1.0)], lambda u: False)
    store.close()

    def full(self):
        raise lmdb.ReadersFullError("mdb_txn_begin: MDB_READERS_FULL")

    monkeypatch.setattr(EventStore, "stats", full)
    for k in ("RECSERVE_BUNDLE", "RECSERVE_EVENTS_DIR", "RECSERVE_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    assert main(["store", "forget", "--events-dir", str(ev), "u1"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("forgot 1 users: 1 events deleted")
    assert err.strip().endswith("MDB_READERS_FULL; the change above was committed"), err
    monkeypatch.setattr(EventStore, "stats", full)
    assert main(["store", "stats", "--events-dir", str(ev)]) == 1      # a read: it changed nothing
    assert capsys.readouterr().err.strip().endswith("MDB_READERS_FULL; nothing was changed")
    monkeypatch.undo()
    assert not EventStore(ev, map_size=1 << 24).has_user("u1")
