"""RecordEvents committed in groups: the writes that wait for the event store's write lock commit together,
one transaction and one fsync, each call's batch in a nested transaction of its own. Real LMDB stores, and a
real server whose store lock a second process holds."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from recserve.events import Event, EventStore
from recserve.pipeline.errors import DeadlineExceeded
from recserve.v1 import recommender_pb2 as pb
from test_stuck_writes import _write_lock_held


def _known(_user: str) -> bool:
    return False


def _txnid(store: EventStore) -> int:
    return store.env.info()["last_txnid"]


def test_one_commit_holds_every_batch_and_a_failed_batch_writes_nothing(tmp_path):
    st = EventStore(tmp_path / "ev")
    before = _txnid(st)

    def late():
        raise DeadlineExceeded("write")

    a = [Event("u1", "i1", 0, 100.0), Event("u2", "i2", 1, 101.0)]
    b = [Event("u3", "i3", 0, 102.0)]
    c = [Event("u1", "i1", 0, 100.0), Event("u1", "i4", 2, 103.0)]       # a repeat of a's first event
    outs = st.record_many([(a, _known, None), (b, _known, late), (c, _known, None)])
    assert _txnid(st) == before + 1                                     # one commit
    assert outs[0].accepted == 2 and outs[0].new_users == 2 and outs[0].duplicates == 0
    assert isinstance(outs[1], DeadlineExceeded)
    assert outs[2].accepted == 2 and outs[2].duplicates == 1 and outs[2].repeats == (0,) and outs[2].new_users == 0
    assert [e.item_id for e in st.recent("u1")] == ["i1", "i4"] and st.recent("u3") == []
    assert not st.has_user("u3") and st.stats()["events"] == 3
    # every batch failed: no commit at all
    assert all(isinstance(o, DeadlineExceeded) for o in st.record_many([(b, _known, late), (a, _known, late)]))
    assert _txnid(st) == before + 1 and st.stats()["events"] == 3
    with pytest.raises(DeadlineExceeded):                               # record() raises its batch's error
        st.record(b, _known, late)
    st.close()


def test_writes_waiting_for_the_lock_commit_together(shared_root, facts, start_server, tmp_path):
    """Eight RecordEvents wait while another process holds the store's write lock; once it lets go they
    commit in at most three transactions (the one a job was holding for, then the rest together), where
    each took its own before. Every call is answered and every event is kept."""
    ev = tmp_path / "ev"
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--threads", "4",
                     "--events-dir", str(ev))
    stub = s.stub()
    stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="warm", item_id=facts["items"][0],
                                                              type=pb.EVENT_TYPE_VIEW)]), timeout=30)
    probe = EventStore(ev, map_size=0)
    before = _txnid(probe)
    results: list = []

    def send(k: int) -> None:
        req = pb.RecordEventsRequest(events=[pb.Event(user_id=f"g{k}", item_id=facts["items"][k % 3],
                                                      type=pb.EVENT_TYPE_CLICK, timestamp=1_700_000_000 + k)])
        try:
            results.append(stub.RecordEvents(req, timeout=60).accepted)
        except grpc.RpcError as e:
            results.append(e.code().name)

    with _write_lock_held(ev):
        threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)                     # every call has reached the server and waits
        assert results == [] and s.proc.poll() is None
    for t in threads:
        t.join(60)
    assert results == [1] * 8
    commits = _txnid(probe) - before
    assert 1 <= commits <= 3, commits
    assert all(probe.recent(f"g{k}")[0].item_id == facts["items"][k % 3] for k in range(8))
    probe.close()


def test_writes_whose_drain_job_is_cancelled_at_stop_fail_and_do_not_hang():
    """The worker's stop shuts its pool down cancelling queued jobs: a drain job cancelled before it ran left
    its writes' futures pending for ever, and every later write waiting behind a job that never comes."""
    from concurrent import futures

    from recserve.groupcommit import GroupWriter

    pool = futures.ThreadPoolExecutor(max_workers=1)
    busy = threading.Event()
    pool.submit(busy.wait, 30)                        # the one thread is taken: the drain job queues
    gw = GroupWriter(pool)
    fut = gw.submit(None, [], None, lambda: False)
    pool.shutdown(wait=False, cancel_futures=True)
    busy.set()
    with pytest.raises(RuntimeError, match="stopped before the write was committed"):
        fut.result(10)
    assert not gw._running and not gw._waiting
