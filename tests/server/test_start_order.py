"""A worker's start: it listens only once its bundle is loaded, and a SIGTERM to the whole process group
while it starts is a stop, not a failed start."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from recserve.config import ServeConfig
from recserve.live import BundleHolder
from recserve.server import InProcessWorker
from srvutil import ROOT, free_port


def test_a_worker_listens_only_once_its_bundle_is_loaded(shared_root, tmp_path, monkeypatch):
    """gRPC listens as soon as a port is added, and the port was added before the bundle was loaded: the
    kernel queued connections for a respawned worker still loading (calls waited for the load beside an
    idle sibling) or reset them when it then could not load."""
    loading, go = threading.Event(), threading.Event()
    real = BundleHolder.try_reload

    def slow(self, *args, **kw):
        loading.set()
        go.wait(60)                     # the load, held here while the test looks at the port
        return real(self, *args, **kw)

    monkeypatch.setattr(BundleHolder, "try_reload", slow)
    port = free_port()
    cfg = ServeConfig(bundle=str(shared_root), port=port, workers=0, reload_interval=0,
                      events_dir=str(tmp_path / "ev"))
    started: dict = {}
    t = threading.Thread(target=lambda: started.setdefault("w", InProcessWorker(cfg, port)), daemon=True)
    t.start()
    try:
        assert loading.wait(60)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        go.set()
        t.join(60)
    w = started["w"]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()       # loaded: listening
    finally:
        w.stop(0)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_a_sigterm_to_the_group_while_workers_start_is_a_stop(shared_root, tmp_path, delay):
    """systemd's stop (KillMode=control-group) or ``kill -TERM -PGID`` soon after the workers were forked
    killed them mid-start, and the supervisor exited 1: "a worker failed to start: it exited"."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "recserve.cli", "serve", "--bundle", str(shared_root), "--port", "0",
                          "--workers", "2", "--events-dir", str(tmp_path / "ev"), "--log-level", "WARNING"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_children(p.pid)) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.002)
        assert len(_children(p.pid)) == 2
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, err[-2000:]
    assert "failed to start" not in err


@contextlib.contextmanager
def _starting_behind_the_store_lock(root, tmp_path, workers: int = 1):
    """``recserve serve`` in a process group of its own, its workers held in their start: another writer holds
    the event store's write lock, in the middle of its transaction (as a `recserve store prune` would).
    Yields the process once its workers wait for the lock."""
    from recserve.events import EventStore

    store = EventStore(tmp_path / "ev", map_size=1 << 26)
    txn = store.env.begin(write=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "recserve.cli", "serve", "--bundle", str(root), "--port", "0",
                          "--workers", str(workers), "--events-dir", str(tmp_path / "ev"), "--events-map-mb", "64",
                          "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_children(p.pid)) < workers and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.01)
        time.sleep(1.0)                         # the workers wait for the lock by now
        yield p
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        txn.abort()
        store.close()


def test_a_worker_waiting_for_the_event_stores_lock_still_stops(shared_root, tmp_path):
    """A worker opening the event store waits for its write lock, GIL held: a stop of the group must still
    end it, not wait for the lock's holder."""
    with _starting_behind_the_store_lock(shared_root, tmp_path) as p:
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
        took = time.monotonic() - t0
    assert p.returncode == 0 and took < 10, (p.returncode, took, err[-2000:])


def test_a_worker_killed_while_it_starts_by_a_signal_the_server_did_not_get_is_a_failed_start(shared_root,
                                                                                              tmp_path):
    with _starting_behind_the_store_lock(shared_root, tmp_path) as p:
        os.kill(_children(p.pid)[0], signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
    assert p.returncode == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == "recserve serve: a worker failed to start: it was killed by SIGTERM"
