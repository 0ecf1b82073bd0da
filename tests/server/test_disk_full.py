"""A disk that refuses the event store's writes: UNAVAILABLE with the reason, nothing of the call written,
writes again once there is room (it was INTERNAL "internal error (Error)")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import pytest

from recserve.events import Event, EventStore
from recserve.v1 import recommender_pb2 as pb

from srvutil import ROOT, Server

# a writer whose files may not grow past 1 MiB (SIGXFSZ ignored: the write fails, as on a full disk)
CHILD = """
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
from recserve.events import Event, EventStore
from recserve.service import status_of
st = EventStore(sys.argv[1], map_size=64 << 20)
ok = 0
try:
    while True:
        st.record([Event(f"u{ok}-{k}", f"i{k}", 1, 1.7e9 + k) for k in range(5)], lambda u: False)
        ok += 1
except Exception as exc:
    code, msg = status_of(exc)
    print(json.dumps({"batches": ok, "code": code.name, "message": msg, "type": type(exc).__name__}))
"""


def test_a_write_the_disk_refuses_is_unavailable_and_leaves_the_store_whole(tmp_path):
    p = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "ev")], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["batches"] > 100 and out["code"] == "UNAVAILABLE", out
    assert out["message"] == ("the event store's disk failed (mdb_txn_commit: Input/output error; full, or failing): "
                              "nothing of this call was written; retry later"), out
    st = EventStore(tmp_path / "ev", map_size=64 << 20)       # without the limit: every acknowledged batch, whole
    assert st.stats()["events"] == 5 * out["batches"]
    st.record([Event("after", "i1", 1, 1.7e9)], lambda u: False)
    assert st.stats()["events"] == 5 * out["batches"] + 1


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only: skipped where it cannot be mounted, saying so)."""
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip() or r.returncode}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_full_disk_over_grpc(shared_root, small_disk):
    s = Server(shared_root, "--workers", "1", "--events-dir", str(small_disk / "ev"))
    try:
        stub = s.stub()
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (1 << 20))
        acked, err = 0, None
        for b in range(5000):
            evs = [pb.Event(user_id=f"d{b}-{k}", item_id="i1", type=pb.EVENT_TYPE_VIEW, timestamp=time.time())
                   for k in range(5)]
            try:
                stub.RecordEvents(pb.RecordEventsRequest(events=evs), timeout=10)
                acked += 1
            except grpc.RpcError as exc:
                err = exc
                break
        assert err is not None and acked > 0, acked
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
        assert err.details().startswith("the event store's disk failed (mdb_txn_commit: "), err.details()
        assert "nothing of this call was written; retry later" in err.details()
        assert len(stub.Recommend(pb.RecommendRequest(user_id="d0-0", k=5), timeout=10).items) == 5  # reads go on
        filler.unlink()
        stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="after", item_id="i1",
                                                                  type=pb.EVENT_TYPE_VIEW,
                                                                  timestamp=time.time())]), timeout=10)
    finally:
        assert s.terminate() == 0
    st = EventStore(small_disk / "ev")
    assert st.stats()["events"] == 5 * acked + 1            # every acknowledged batch whole, the failed one absent
    st.close()
    log = s.proc.stderr.read()
    assert "the event store's disk failed" in log and "Traceback" not in log, log[-3000:]


def test_only_disk_errors_are_called_so():
    import lmdb

    from recserve.service import disk_fault

    assert disk_fault(lmdb.DiskError("mdb_txn_commit: No space left on device"))
    assert disk_fault(lmdb.Error("mdb_txn_commit: Input/output error"))
    assert not disk_fault(lmdb.MapFullError("full")) and not disk_fault(lmdb.CorruptedError("x"))
    assert not disk_fault(OSError("x"))
