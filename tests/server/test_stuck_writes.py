"""Writes that wait for the event store's write lock, held by another process (``recserve store prune``
between batches, a store tool suspended with Ctrl-Z): their calls end at their deadline without holding the
worker's bound on calls in flight, reads are never refused because of them, new writes are refused with
UNAVAILABLE once such orphaned writes fill their bound, and a drain does not wait for them past its grace
period. Real servers, a real LMDB lock held by a real second process."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import grpc

from recserve.config import ServeConfig
from recserve.events import EventStore
from recserve.v1 import recommender_pb2 as pb
from srvutil import wait_for

# another process takes the store's write lock and holds it until its stdin closes
_LOCK = """
import lmdb, sys
env = lmdb.open(sys.argv[1], map_size=int(sys.argv[2]), max_dbs=8, max_readers=1024)
txn = env.begin(write=True)
print("locked", flush=True)
sys.stdin.read()
txn.abort()
"""


@contextlib.contextmanager
def _write_lock_held(events_dir):
    p = subprocess.Popen([sys.executable, "-c", _LOCK, str(events_dir), str(ServeConfig().events_map_mb << 20)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield p
    finally:
        p.stdin.close()
        p.wait(30)


def _code(fn, *args, **kw) -> str:
    try:
        fn(*args, **kw)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def _event(facts, user="stuck-writer"):
    return pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=facts["items"][0],
                                                   type=pb.EVENT_TYPE_VIEW)])


def test_writes_stuck_on_the_store_lock_never_refuse_reads(shared_root, facts, start_server, tmp_path):
    ev = tmp_path / "ev"
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--max-concurrent-rpcs", "2",
                     "--threads", "3", "--events-dir", str(ev))
    stub = s.stub()
    stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=30)      # connected
    with _write_lock_held(ev):
        for _ in range(2):
            assert _code(stub.RecordEvents, _event(facts), timeout=0.5) == "DEADLINE_EXCEEDED"
        update = pb.UpdateItemsRequest(items=[pb.ItemUpdate(item_id=facts["items"][1], price=7.25)])
        assert _code(stub.UpdateItems, update, timeout=0.5) == "DEADLINE_EXCEEDED"
        # the writes still wait for the lock, past their calls: reads are answered all the same, as many
        # at once as the bound on calls in flight (2) lets in
        for _ in range(3):
            futs = [stub.Recommend.future(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=30),
                    stub.SimilarItems.future(pb.SimilarItemsRequest(item_id=facts["items"][0], k=3), timeout=30)]
            assert [_code(f.result) for f in futs] == ["OK"] * 2
        # the three orphaned writes fill their bound (--threads): a new write is refused at once, saying why
        refused = []

        def refused_now():
            try:
                stub.RecordEvents(_event(facts), timeout=0.5)
            except grpc.RpcError as e:
                refused.append(e)
                return e.code() == grpc.StatusCode.UNAVAILABLE
            return False

        assert wait_for(refused_now, 20), [e.code().name for e in refused]
        assert "still wait for the event store" in refused[-1].details()
        assert _code(stub.Recommend, pb.RecommendRequest(user_id=facts["user"], k=3), timeout=30) == "OK"
    # the lock is free: the orphaned RecordEvents wrote nothing (their calls had ended before they could
    # commit), the orphaned UpdateItems did, and writes are taken again
    assert wait_for(lambda: _code(stub.RecordEvents, _event(facts, "after"), timeout=10) == "OK", 20)
    store = EventStore(ev, map_size=0)
    try:
        assert wait_for(lambda: store.item_states()[1].get(facts["items"][1], {}).get("price") == 7.25, 20)
        assert store.stats()["events"] == 1
    finally:
        store.close()


def test_a_drain_does_not_wait_for_writes_stuck_on_the_store_lock(shared_root, facts, start_server, tmp_path):
    ev = tmp_path / "ev"
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--events-dir", str(ev),
                     "--grace", "1")
    stub = s.stub()
    stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=30)
    with _write_lock_held(ev):
        for _ in range(2):
            assert _code(stub.RecordEvents, _event(facts), timeout=0.5) == "DEADLINE_EXCEEDED"
        t0 = time.monotonic()
        rc = s.terminate(60)
        took = time.monotonic() - t0
        err = s.proc.stderr.read()
    assert rc == 0
    # the worker drained and exited with the lock still held: it left the writes behind (and said so)
    # rather than being killed by the supervisor at grace + 10 s
    assert '"writes_abandoned"' in err, err[-2000:]
    assert took < 10, took
