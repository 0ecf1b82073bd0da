"""The supervisor and its workers: a replacement serves what its siblings serve, workers die with the
supervisor, SIGHUP looks at CURRENT at once."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from recserve.config import ServeConfig
from recserve.live import BundleHolder
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pbg

from srvutil import copy_root, metric, new_version, replacement, set_current, wait_for, worker_pids


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(server, user: str, seconds: float) -> tuple[dict[str, int], dict[str, int]]:
    """Recommends on fresh connections for ``seconds``: (versions that answered, errors by code and text)."""
    versions: dict[str, int] = {}
    errors: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            r = pbg.RecommenderStub(server.channel()).Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=5)
            versions[r.bundle_version] = versions.get(r.bundle_version, 0) + 1
        except grpc.RpcError as e:
            key = f"{e.code().name}: {e.details()[:40]}"
            errors[key] = errors.get(key, 0) + 1
    return versions, errors


def test_a_replacement_loads_its_siblings_version_when_current_names_a_refused_one(shared_root, tmp_path):
    """CURRENT names a bad version: a replacement (``inherit``) loads the one its siblings serve instead, and
    does not try again a version they refused whose files are unchanged; once its files change (a copy that
    was under way finishes, the manifest untouched), the siblings and the replacement all load it."""
    root = copy_root(shared_root, tmp_path / "root")
    good = (root / "CURRENT").read_text().strip()
    new_version(root, good, "v-bad", corrupt="model")
    set_current(root, "v-bad")
    cfg = ServeConfig(reload_interval=0)
    fresh = BundleHolder(str(root), cfg, None)                 # a first worker: nothing to fall back on
    assert not fresh.try_reload() and fresh.current is None
    reports = []
    holder = BundleHolder(str(root), cfg, None, report=lambda *a: reports.append(a[:2]), inherit=(good, None))
    assert holder.try_reload() and holder.current.version == good
    assert reports == [("refused", "v-bad"), ("loaded", good)] and holder.attempts == 2
    assert not holder.try_reload() and holder.attempts == 2    # refused and unchanged: not tried again
    holder.current.bundle.close()

    new_version(root, good, "v-late", corrupt="sha")           # refused while its files were being copied
    set_current(root, "v-late")
    sibling = BundleHolder(str(root), cfg, None, inherit=(good, None))
    assert sibling.try_reload() and sibling.current.version == good        # v-late refused, the fallback
    refused = sibling._refused
    assert refused[0] == "v-late"
    early = BundleHolder(str(root), cfg, None, inherit=(good, refused))
    assert early.try_reload() and early.current.version == good and early.attempts == 1     # not tried
    early.current.bundle.close()
    manifest = (root / "v-late" / "manifest.json").stat().st_mtime_ns
    shutil.copy2(root / good / "ranker.txt", root / "v-late" / "ranker.txt")     # the copy finishes
    assert (root / "v-late" / "manifest.json").stat().st_mtime_ns == manifest
    late = BundleHolder(str(root), cfg, None, inherit=(good, refused))
    assert late.try_reload() and late.current.version == "v-late" and late.attempts == 1
    assert sibling.try_reload() and sibling.current.version == "v-late"     # the sibling's next poll
    late.current.bundle.close()
    sibling.current.bundle.close()


def test_a_replacement_worker_serves_what_its_sibling_serves(shared_root, facts, tmp_path, start_server):
    """With CURRENT naming a refused version, a worker killed with SIGKILL is replaced by one that serves
    the sibling's version (before: it listened without a bundle and failed its calls with UNAVAILABLE).
    When no version can be loaded at all, the replacement exits before it listens and the sibling serves."""
    root = copy_root(shared_root, tmp_path / "root")
    good = (root / "CURRENT").read_text().strip()
    s = start_server(root, "--workers", "2", "--reload-interval", "0.2", "--events-dir", str(tmp_path / "ev"),
                     metrics=True)
    mport = s.metrics_port
    before: set[int] = set()
    assert wait_for(lambda: len(before.update(worker_pids(s, facts["user"])) or before) == 2, 30)
    new_version(root, good, "v-bad", corrupt="sha")
    set_current(root, "v-bad")

    def refused(n: int) -> bool:
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        return metric(text, "recserve_reloads_total", outcome="refused") >= n

    assert wait_for(lambda: refused(2), 30)
    os.kill(min(before), signal.SIGKILL)
    seen = replacement(s, facts["user"], before)
    assert seen, "no replacement worker answered"
    versions, errors = _answers(s, facts["user"], 3)
    assert set(versions) == {good} and not errors, (versions, errors)
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    assert metric(text, "recserve_reloads_total", outcome="started") == 3           # two workers, one respawn
    assert metric(text, "recserve_reloads_total", outcome="loaded") == 0            # no swap happened

    # repaired, the manifest unchanged: every worker, the replacement included, loads it at its next poll
    shutil.copy2(root / good / "ranker.txt", root / "v-bad" / "ranker.txt")

    def loaded(n: int) -> bool:
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        return metric(text, "recserve_reloads_total", outcome="loaded") >= n

    assert wait_for(lambda: loaded(2), 30)
    versions, errors = _answers(s, facts["user"], 2)
    assert set(versions) == {"v-bad"} and not errors, (versions, errors)

    shutil.rmtree(root / good)          # nothing loadable: the live workers keep their open bundle
    shutil.rmtree(root / "v-bad")
    newcomer = (seen - before).pop()
    os.kill(newcomer, signal.SIGKILL)
    versions, errors = _answers(s, facts["user"], 4)
    assert not [k for k in errors if "no bundle" in k], errors
    assert versions.get("v-bad", 0) > 0 and s.proc.poll() is None


def test_workers_exit_when_the_supervisor_dies(shared_root, facts, tmp_path, start_server):
    """SIGKILL of the supervisor: its workers drain and exit (parent-death signal) and free the port."""
    # a temporary directory of its own: any other recserve server this user starts meanwhile on the
    # machine would remove the dead supervisor's directory first (as it should)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    s = start_server(shared_root, "--workers", "2", "--events-dir", str(tmp_path / "ev"), env={"TMPDIR": str(tmp)})
    pids: set[int] = set()
    assert wait_for(lambda: len(pids.update(worker_pids(s, facts["user"])) or pids) == 2, 30)
    for ch in s.channels:
        ch.close()
    s.channels.clear()
    s.proc.kill()
    s.proc.wait(10)
    assert wait_for(lambda: not any(_alive(p) for p in pids), 20), "workers outlived their supervisor"
    # the port is free once the last thread of each worker is gone (a process whose main thread has exited
    # shows as a zombie while its other threads finish exiting and still hold its sockets)
    assert wait_for(lambda: _bindable(s.port), 10), f"port {s.port} still held after the workers exited"
    # its private directory is left behind; the next server's start removes it (its pid is gone)
    from recserve.supervisor import remove_stale_dirs

    left = [p.name for p in tmp.glob(f"recserve-share-{s.proc.pid}-*")]
    assert left and set(left) <= set(remove_stale_dirs(str(tmp)))
    assert not list(tmp.glob(f"recserve-share-{s.proc.pid}-*"))
    mine = tempfile.mkdtemp(prefix=f"recserve-share-{os.getpid()}-", dir=tmp)       # a live server's: kept
    assert mine.rsplit("/", 1)[1] not in remove_stale_dirs(str(tmp)) and os.path.isdir(mine)
    os.rmdir(mine)


def test_sighup_looks_at_current_at_once(shared_root, facts, tmp_path, start_server):
    """With a poll interval of an hour, SIGHUP makes every worker load the version CURRENT names now;
    the server keeps running."""
    root = copy_root(shared_root, tmp_path / "root")
    good = (root / "CURRENT").read_text().strip()
    s = start_server(root, "--workers", "2", "--reload-interval", "3600", "--events-dir", str(tmp_path / "ev"),
                     metrics=True)
    mport = s.metrics_port
    new_version(root, good, "v2")
    set_current(root, "v2")
    versions, _ = _answers(s, facts["user"], 1)
    assert set(versions) == {good}
    s.proc.send_signal(signal.SIGHUP)

    def all_v2() -> bool:
        v, errors = _answers(s, facts["user"], 0.5)
        return set(v) == {"v2"} and not errors

    assert wait_for(all_v2, 30)
    assert s.proc.poll() is None
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    assert metric(text, "recserve_reloads_total", outcome="loaded") == 2
    assert metric(text, "recserve_reloads_total", outcome="started") == 2
    assert metric(text, "recserve_bundle_loaded", version="v2") == 1          # max over live workers
    assert metric(text, "recserve_bundle_loaded", version=good) == 0


def test_sighup_tries_a_refused_version_again(shared_root, facts, tmp_path, start_server):
    """Polls do not try again a version refused with its files unchanged; a SIGHUP does, in every worker
    (an operator's one way to retry a refusal whose cause was outside the files), and the old version
    keeps answering."""
    root = copy_root(shared_root, tmp_path / "root")
    good = (root / "CURRENT").read_text().strip()
    s = start_server(root, "--workers", "2", "--reload-interval", "0.1", "--events-dir", str(tmp_path / "ev"),
                     metrics=True)

    def refused() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10).read().decode()
        return metric(text, "recserve_reloads_total", outcome="refused")

    new_version(root, good, "v-bad", corrupt="model")
    set_current(root, "v-bad")
    assert wait_for(lambda: refused() == 2, 30)
    time.sleep(1.0)                                     # ten polls each
    assert refused() == 2
    s.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: refused() == 4, 30)
    versions, errors = _answers(s, facts["user"], 0.5)
    assert set(versions) == {good} and not errors
    assert s.proc.poll() is None


def test_a_refusal_of_the_served_version_does_not_reach_replacements(shared_root, tmp_path):
    """Reports read out of order (one worker refused v while its sibling loaded v, a file still being
    copied): the supervisor keeps v as what replacements serve, and a replacement given v both as the
    version to serve and as refused still loads it."""
    from recserve.supervisor import Supervisor

    sup = Supervisor(ServeConfig(workers=2), 0, socket.socket())
    try:
        sup._take(1, {"loaded": "v3", "stamp": [1, 2, 3]})
        sup._take(2, {"refused": "v3", "stamp": [1, 2, 3]})
        assert sup._serving == "v3" and sup._refused is None
        sup._take(2, {"refused": "v4", "stamp": [4]})
        assert sup._refused == ("v4", (4,))
        sup._take(1, {"loaded": "v4", "stamp": [4]})
        assert sup._serving == "v4" and sup._refused is None
    finally:
        sup._sock.close()
    root = copy_root(shared_root, tmp_path / "root")
    good = (root / "CURRENT").read_text().strip()
    probe = BundleHolder(str(root), ServeConfig(reload_interval=0), None)
    holder = BundleHolder(str(root), ServeConfig(reload_interval=0), None, inherit=(good, (good, probe._stamp(good))))
    assert holder.try_reload() and holder.current.version == good and holder.attempts == 1
    holder.current.bundle.close()


def test_the_respawn_delay_doubles_per_slot(monkeypatch):
    """Two workers killed at once are both replaced after RESPAWN_MIN_S (before, a delay shared by all
    slots doubled for the second); only a slot whose replacements keep dying young waits longer."""
    from recserve.supervisor import Supervisor

    def dead_child() -> int:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        return pid

    def exited(pid: int) -> None:           # wait until the child is a zombie, leaving it to monitor() to reap
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)

    sup = Supervisor(ServeConfig(workers=2, share_work=0), 0, socket.socket())
    monkeypatch.setattr(sup, "_spawn", lambda slot, replacement=False: -1)     # nothing is forked again
    try:
        for slot in (0, 1):
            pid = dead_child()
            sup.pids.append(pid)
            sup._started[pid], sup._slot[pid] = time.monotonic() - 60, slot   # lived a minute: not young
            exited(pid)
        before = time.monotonic()
        sup.monitor()
        after = time.monotonic()
        # both replacements due RESPAWN_MIN_S after the monitor saw the deaths
        assert sorted(slot for _, slot in sup._due) == [0, 1], sup._due
        assert all(before + sup.RESPAWN_MIN_S <= due <= after + sup.RESPAWN_MIN_S for due, _ in sup._due), sup._due
        assert sup._backoff == {0: sup.RESPAWN_MIN_S, 1: sup.RESPAWN_MIN_S}
        sup._due.clear()
        for _ in range(2):                      # slot 0's replacements die young, twice
            pid = dead_child()
            sup.pids.append(pid)
            sup._started[pid], sup._slot[pid] = time.monotonic(), 0
            exited(pid)
            sup.monitor()
        assert sup._backoff == {0: 4 * sup.RESPAWN_MIN_S, 1: sup.RESPAWN_MIN_S}
    finally:
        sup._sock.close()


def test_a_replacement_serves_with_the_tokens_read_at_start(shared_root, facts, tmp_path, start_server):
    """The tokens file is read once: rewritten (or gone) while the server runs, a replacement worker still
    accepts the tokens its siblings accept, so whether a call passes never depends on the worker."""
    tokens = tmp_path / "tokens"
    tokens.write_text("read r-old\n")
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--tokens-file", str(tokens),
                     "--events-dir", str(tmp_path / "ev"))
    auth = (("authorization", "Bearer r-old"),)

    def pids(calls: int) -> set[int]:
        seen = set()
        for _ in range(calls):
            with s.channel() as ch:
                _, call = pbg.RecommenderStub(ch).Recommend.with_call(
                    pb.RecommendRequest(user_id=facts["user"], k=3), timeout=10, metadata=auth)
            seen.update(int(v) for k, v in call.trailing_metadata() if k == "recserve-worker")
        return seen

    before: set[int] = set()
    assert wait_for(lambda: len(before.update(pids(12)) or before) == 2, 30)
    tokens.write_text("read r-new\n")
    os.kill(min(before), signal.SIGKILL)
    seen: set[int] = set()

    def replaced() -> bool:
        try:
            seen.update(pids(12))
        except grpc.RpcError as exc:
            # the dead worker's queued connection (UNAVAILABLE), a slow start on a busy machine; never a
            # refused token
            assert exc.code() != grpc.StatusCode.UNAUTHENTICATED, exc
            return False
        return bool(seen - before)

    assert wait_for(replaced, 30, 0.5), "no replacement answered with the token read at start"
    tokens.unlink()
    assert len(pids(16)) == 2
    with pytest.raises(grpc.RpcError) as e:
        s.stub().Recommend(pb.RecommendRequest(k=3), timeout=10, metadata=(("authorization", "Bearer r-new"),))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_workers_end_is_said_in_words():
    """The respawn log line says "exit code 3" or "killed by SIGKILL", not the raw wait status."""
    from recserve.supervisor import how_it_ended

    pid = os.fork()
    if pid == 0:
        os._exit(3)
    assert how_it_ended(os.waitpid(pid, 0)[1]) == "exit code 3"
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    os.kill(pid, signal.SIGKILL)
    assert how_it_ended(os.waitpid(pid, 0)[1]) == "killed by SIGKILL"
    assert how_it_ended(-1) == "ended (status unknown)"


def test_a_worker_killed_for_overrunning_its_drain_is_logged(caplog):
    """The supervisor SIGKILLed a worker still running ``grace`` + ``drain_delay`` + 10 s after its SIGTERM
    without a word."""
    import logging
    import subprocess

    from recserve.supervisor import Supervisor

    sup = Supervisor(ServeConfig(workers=1), 0, socket.socket())
    stuck = subprocess.Popen(["sleep", "60"])     # a worker that does not end on its SIGTERM (stopped)
    os.kill(stuck.pid, signal.SIGSTOP)
    sup.pids.append(stuck.pid)
    try:
        with caplog.at_level(logging.WARNING, logger="recserve.server"):
            sup.wait(0.3)
        assert not _alive(stuck.pid)
        assert [r.getMessage() for r in caplog.records] == [
            f"worker {stuck.pid} had not exited 0.3 s after its SIGTERM: killed with SIGKILL"]
    finally:
        sup._sock.close()
        if stuck.poll() is None and _alive(stuck.pid):
            stuck.kill()
