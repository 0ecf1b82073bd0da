"""Hot reload, refusal of bad bundles, health transitions, graceful drain, auth tokens, startup failures."""
from __future__ import annotations

import json
import re
import shutil
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pbg

from srvutil import Server, copy_root, edited_version, new_version, replacement, set_current, wait_for, worker_pids

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(addr, service=""):
    with grpc.insecure_channel(addr) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


class Stream:
    """Threads sending Recommend continuously, each on its own connection; records versions and failures."""

    def __init__(self, server: Server, user: str, threads: int = 3):
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(server, user), daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, server, user):
        while not self.stop.is_set():
            ch = server.channel()  # fresh connections hit both workers
            stub = pbg.RecommenderStub(ch)
            for _ in range(10):
                try:
                    r = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=10)
                    self.versions.append(r.bundle_version)
                    if len(r.items) != 10:
                        self.failures.append(f"{len(r.items)} items")
                except grpc.RpcError as e:
                    self.failures.append(f"{e.code().name}: {e.details()}")
            ch.close()

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_hot_reload_under_load_and_bad_bundles_refused(demo_bundle, facts, tmp_path, start_server):
    root = copy_root(demo_bundle, tmp_path / "root")
    v1 = facts["version"]
    s = start_server(root, "--workers", "2", "--reload-interval", "0.2")
    stream = Stream(s, facts["user"])
    try:
        assert wait_for(lambda: len(stream.versions) > 20)
        new_version(root, v1, "v2")
        set_current(root, "v2")
        n = len(stream.versions)
        # both workers swap: a long run of v2 answers over fresh connections
        assert wait_for(lambda: len(stream.versions) > n + 60 and set(stream.versions[-60:]) == {"v2"}, 30)
        for kind in ("sha", "model"):
            name = f"v3-{kind}"
            new_version(root, "v2", name, corrupt=kind)
            set_current(root, name)
            n = len(stream.versions)
            assert wait_for(lambda: len(stream.versions) > n + 60, 30)
            time.sleep(1.0)  # several reload polls have refused it by now
            n = len(stream.versions)
            assert wait_for(lambda: len(stream.versions) > n + 30, 30)
            assert set(stream.versions[n:]) == {"v2"}, f"a {kind}-corrupt bundle must be refused"
            assert health(s.addr) == SERVING
        # a good version after refused ones is still picked up
        new_version(root, v1, "v4")
        set_current(root, "v4")
        n = len(stream.versions)
        assert wait_for(lambda: len(stream.versions) > n + 60 and set(stream.versions[-60:]) == {"v4"}, 30)
    finally:
        stream.join()
    assert not stream.failures, stream.failures[:5]
    assert {v1, "v2", "v4"} <= set(stream.versions)


def test_health_transitions_and_waiting_for_a_bundle(demo_bundle, facts, tmp_path, start_server):
    root = tmp_path / "empty"
    root.mkdir()
    s = start_server(root, "--workers", "1", "--reload-interval", "0.2", "--grace", "2")
    assert health(s.addr) == NOT_SERVING
    assert health(s.addr, "recserve.v1.Recommender") == NOT_SERVING
    with pytest.raises(grpc.RpcError) as e:
        s.stub().Recommend(pb.RecommendRequest(k=5), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # a corrupt first bundle keeps it NOT_SERVING
    shutil.copytree(demo_bundle / facts["version"], root / "base")
    new_version(root, "base", "bad", corrupt="sha")
    set_current(root, "bad")
    time.sleep(1.0)
    assert health(s.addr) == NOT_SERVING
    set_current(root, "base")
    assert wait_for(lambda: health(s.addr) == SERVING, 20)
    assert len(s.stub().Recommend(pb.RecommendRequest(k=5), timeout=5).items) == 5
    # SIGTERM: a watcher sees NOT_SERVING while the server drains
    ch = s.channel()
    watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
    seen = [next(watch).status]
    s.proc.send_signal(15)
    try:
        for r in watch:
            seen.append(r.status)
            if r.status == NOT_SERVING:
                break
    except grpc.RpcError:
        pass
    assert seen[0] == SERVING and NOT_SERVING in seen
    assert s.proc.wait(20) == 0


def test_graceful_shutdown_drains_in_flight_calls(shared_root, facts, start_server):
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--grace", "10",
                     env={"RECSERVE_DEBUG_DELAY_MS": "1500"})
    results, errors = [], []

    def call():
        try:
            r = s.stub().Recommend(pb.RecommendRequest(user_id=facts["user"], k=10), timeout=20)
            results.append(len(r.items))
        except grpc.RpcError as e:
            errors.append(e.code().name)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.7)  # all six are in flight (each takes 1.5 s)
    t0 = time.monotonic()
    s.proc.send_signal(15)
    for t in threads:
        t.join(30)
    assert s.proc.wait(30) == 0
    assert not errors and results == [10] * 6
    assert time.monotonic() - t0 < 8, "drain waits for in-flight calls, not for the whole grace period"
    with pytest.raises(grpc.RpcError) as e:  # and then it is gone
        s.stub().Recommend(pb.RecommendRequest(k=5), timeout=2)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_call_in_flight_does_not_keep_new_calls_coming_in(shared_root, facts, start_server):
    """Once no call has arrived for 50 ms after SIGTERM, new calls are refused while the long ones in flight
    finish: a call sent 0.6 s after SIGTERM, on a new connection, was served while two 6 s calls ran (the
    window stayed open for its whole 2 s whenever a call was in flight)."""
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--grace", "10",
                     env={"RECSERVE_DEBUG_DELAY_MS": "4000"})
    done: list = []

    def call(i):
        try:
            s.stub().Recommend(pb.RecommendRequest(user_id=f"u{i}", k=5), timeout=30)
            done.append("OK")
        except grpc.RpcError as e:
            done.append(e.code().name)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.7)                         # both in flight
    s.proc.send_signal(15)
    time.sleep(0.8)
    late = grpc.insecure_channel(s.addr, options=[("grpc.use_local_subchannel_pool", 1)])
    with pytest.raises(grpc.RpcError) as e:
        pbg.RecommenderStub(late).Recommend(pb.RecommendRequest(user_id="late", k=5), timeout=10)
    late.close()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    for t in threads:
        t.join(30)
    assert done == ["OK", "OK"] and s.proc.wait(30) == 0


def test_sigterm_serves_the_calls_already_received(shared_root, facts, start_server):
    """A burst on one connection, then SIGTERM: calls that gRPC had received while the worker was busy
    computing (no handler yet) are served, not cancelled by the server's stop."""
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--grace", "20",
                     "--max-concurrent-rpcs", "500")
    ch = s.channel()
    stub = pbg.RecommenderStub(ch)
    stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=5), timeout=10)     # connected, warm
    calls = [stub.Recommend.future(pb.RecommendRequest(user_id=f"u{i}", k=100, explain=i % 2 == 0), timeout=60)
             for i in range(300)]
    time.sleep(0.03)
    s.proc.send_signal(15)
    codes = []
    for c in calls:
        try:
            c.result()
            codes.append("OK")
        except grpc.RpcError as e:
            codes.append(e.code().name)
    ch.close()
    assert s.proc.wait(30) == 0
    assert codes == ["OK"] * 300, {c: codes.count(c) for c in set(codes)}


def test_calls_cut_by_the_grace_period_are_logged_as_such(shared_root, facts, start_server):
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--grace", "0.5",
                     "--log-level", "INFO", env={"RECSERVE_DEBUG_DELAY_MS": "5000"})
    errors = []

    def call():
        try:
            s.stub().Recommend(pb.RecommendRequest(user_id=facts["user"], k=10), timeout=20)
        except grpc.RpcError as e:
            errors.append(e.code())

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.7)
    s.proc.send_signal(15)
    t.join(30)
    assert s.proc.wait(30) == 0 and len(errors) == 1
    failed = [json.loads(line) for line in s.proc.stderr.read().splitlines()
              if line.startswith("{") and '"rpc_failed"' in line]
    assert [(f["method"], f["msg"]) for f in failed] == [
        ("Recommend", "Recommend: cut off by the shutdown's grace period")], failed


def test_drain_delay_keeps_serving_while_health_says_not_serving(shared_root, facts, start_server, tmp_path):
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--drain-delay", "3",
                     "--events-dir", str(tmp_path / "ev"))
    assert health(s.addr) == SERVING
    t0 = time.monotonic()
    s.proc.send_signal(15)
    assert wait_for(lambda: health(s.addr) == NOT_SERVING, 2.5, 0.05), "health did not turn NOT_SERVING"
    # still answering on new connections, in both workers' turn
    for _ in range(4):
        assert len(s.stub().Recommend(pb.RecommendRequest(user_id=facts["user"], k=5), timeout=5).items) == 5
    assert time.monotonic() - t0 < 3, "the checks above took the whole delay: nothing shown"
    assert s.proc.wait(30) == 0 and time.monotonic() - t0 >= 3


def test_auth_tokens(shared_root, facts, tmp_path, start_server):
    tokens = tmp_path / "tokens"
    tokens.write_text("# scope token\nread r-secret\nwrite w-secret\n")
    s = start_server(shared_root, "--workers", "1", "--tokens-file", str(tokens), "--reload-interval", "0")
    stub = s.stub()
    rec = pb.RecommendRequest(user_id=facts["user"], k=5)
    ev = pb.RecordEventsRequest(events=[pb.Event(user_id="auth-user", item_id=facts["items"][1],
                                                 type=pb.EVENT_TYPE_CLICK)])

    def code(fn, req, token):
        md = [("authorization", f"Bearer {token}")] if token else None
        try:
            fn(req, metadata=md, timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    assert code(stub.Recommend, rec, None) == grpc.StatusCode.UNAUTHENTICATED
    assert code(stub.Recommend, rec, "wrong") == grpc.StatusCode.UNAUTHENTICATED
    assert code(stub.Recommend, rec, "r-secret") == grpc.StatusCode.OK
    assert code(stub.RecordEvents, ev, "r-secret") == grpc.StatusCode.PERMISSION_DENIED
    assert code(stub.UpdateItems, pb.UpdateItemsRequest(items=[pb.ItemUpdate(item_id=facts["items"][1])]),
                "r-secret") == grpc.StatusCode.PERMISSION_DENIED
    assert code(stub.RecordEvents, ev, "w-secret") == grpc.StatusCode.OK
    assert code(stub.Recommend, rec, "w-secret") == grpc.StatusCode.OK
    assert health(s.addr) == SERVING  # health needs no token


def test_startup_refuses_a_corrupt_current_bundle(demo_bundle, facts, tmp_path):
    root = copy_root(demo_bundle, tmp_path / "root")
    new_version(root, facts["version"], "bad", corrupt="sha")
    set_current(root, "bad")
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        Server(root, "--workers", "1")


def test_an_unreadable_current_is_refused_and_polling_goes_on(demo_bundle, facts, tmp_path, start_server):
    """CURRENT replaced by a symlink to a version directory, or by bytes that are not UTF-8: refused (the
    live bundle keeps serving) and the poller carries on, so a good CURRENT written next is loaded without
    a SIGHUP. At start, such a CURRENT is a bad bundle: one line, exit 2."""
    import os
    import subprocess
    import sys

    root = copy_root(demo_bundle, tmp_path / "root")
    v1 = facts["version"]
    s = start_server(root, "--workers", "1", "--reload-interval", "0.2")

    def version():
        r = pbg.RecommenderStub(s.channels[0] if s.channels else s.channel()).Recommend(
            pb.RecommendRequest(user_id=facts["user"], k=5), timeout=10)
        return r.bundle_version

    live = v1
    for n, bad in enumerate(("symlink", "bytes")):
        tmp = root / ".CURRENT.bad"
        if bad == "symlink":
            os.symlink(v1, tmp)
        else:
            tmp.write_bytes(b"\xff\xfe\n")
        os.replace(tmp, root / "CURRENT")
        time.sleep(0.6)                     # a few polls meet it
        assert version() == live and health(s.addr) == SERVING
        live = f"v-next-{n}"
        new_version(root, v1, live)
        set_current(root, live)
        assert wait_for(lambda: version() == live, 15), f"not reloaded after an unreadable CURRENT ({bad})"
    os.symlink(v1, root / ".CURRENT.bad")
    os.replace(root / ".CURRENT.bad", root / "CURRENT")
    out = subprocess.run([sys.executable, "-m", "recserve.cli", "serve", "--bundle", str(root), "--port", "0"],
                         capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert re.search(r"recserve serve: .*CURRENT cannot be read as a version name", out.stderr), out.stderr


def test_crashed_worker_is_replaced_and_serves(start_server, shared_root, facts, tmp_path):
    """A worker killed with SIGKILL is replaced by a new one that serves, and stays (no restart
    loop): afterwards exactly the survivor and the replacement answer."""
    import os
    import signal

    s = start_server(shared_root, "--workers", "2", "--events-dir", str(tmp_path / "ev"))
    before = set()
    assert wait_for(lambda: len(before.update(worker_pids(s, facts["user"])) or before) == 2, 30)
    pinned = len(os.sched_getaffinity(0)) >= 2           # --cpu-affinity auto pins 2 workers on >= 2 CPUs
    if pinned:
        cpus = {pid: os.sched_getaffinity(pid) for pid in before}
        assert all(len(c) == 1 for c in cpus.values()) and len(set(map(frozenset, cpus.values()))) == 2, cpus
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    survivors = before - {victim}
    seen = replacement(s, facts["user"], before)
    assert seen, "no replacement worker answered"
    new = seen - before
    if pinned:                                       # the replacement takes the dead worker's CPU
        assert [os.sched_getaffinity(pid) for pid in new] == [cpus[victim]]
    time.sleep(2.0)                                  # a restart loop would have replaced it again
    again: set[int] = set()
    assert wait_for(lambda: len(again.update(worker_pids(s, facts["user"], 12)) or again) == 2, 30)
    assert again == survivors | new, f"workers changed again: {before} -> {new} -> {again}"
    assert s.proc.poll() is None


def test_an_open_health_watch_does_not_hold_the_drain(shared_root, facts, start_server, tmp_path):
    """A health Watch stream sees NOT_SERVING and is then closed: it does not keep the server for
    the whole grace period, while a call in flight still finishes."""
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--grace", "20",
                     "--events-dir", str(tmp_path / "ev"), env={"RECSERVE_DEBUG_DELAY_MS": "1500"})
    ch = grpc.insecure_channel(s.addr)
    watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == SERVING
    slow = s.stub().Recommend.future(pb.RecommendRequest(user_id=facts["user"], k=5), timeout=20)
    time.sleep(0.5)                      # the Recommend is in flight (1.5 s)
    t0 = time.monotonic()
    s.proc.send_signal(15)
    seen = []
    with pytest.raises(grpc.RpcError):
        for msg in watch:
            seen.append(msg.status)
    assert NOT_SERVING in seen
    assert len(slow.result(timeout=20).items) == 5
    assert s.proc.wait(30) == 0
    assert time.monotonic() - t0 < 10, "the drain waited for the Watch stream"
    ch.close()


def test_open_health_watches_are_bounded_per_worker(shared_root, facts, start_server, tmp_path):
    """Watch streams stay open until their client closes them and are not Recommender calls: beyond
    --max-health-watches a new one is refused, Check and Recommend still answer, and a closed stream
    frees its place."""
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--max-health-watches", "3",
                     "--events-dir", str(tmp_path / "ev"))
    ch = grpc.insecure_channel(s.addr)
    stub = health_pb2_grpc.HealthStub(ch)
    watches = [stub.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(3)]
    assert [next(w).status for w in watches] == [SERVING] * 3
    with pytest.raises(grpc.RpcError) as exc:
        next(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-health-watches" in exc.value.details()
    assert health(s.addr) == SERVING
    assert len(s.stub().Recommend(pb.RecommendRequest(user_id=facts["user"], k=5), timeout=10).items) == 5
    watches[0].cancel()
    assert wait_for(lambda: _watch_opens(stub), 10), "a closed Watch did not free its place"
    for w in watches[1:]:
        w.cancel()
    ch.close()


def _watch_opens(stub) -> bool:
    w = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    try:
        return next(w).status == SERVING
    except grpc.RpcError:
        return False
    finally:
        w.cancel()


def test_a_respawned_worker_takes_calls_only_with_a_bundle_and_its_gauge_dies_with_it(
        shared_root, facts, tmp_path, start_server):
    """A replacement worker loads the bundle before it listens (no UNAVAILABLE "no bundle" while its
    sibling could answer), and the dead worker's bundle-version gauge is dropped with it."""
    import os
    import signal
    import urllib.request

    from srvutil import metric

    root = copy_root(shared_root, tmp_path / "root")
    good = (root / "CURRENT").read_text().strip()
    s = start_server(root, "--workers", "2", "--reload-interval", "0.2", metrics=True)
    mport = s.metrics_port
    before = set()
    assert wait_for(lambda: len(before.update(worker_pids(s, facts["user"])) or before) == 2, 30)
    os.kill(min(before), signal.SIGKILL)
    codes: dict[str, int] = {}
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            pbg.RecommenderStub(s.channel()).Recommend(pb.RecommendRequest(user_id=facts["user"], k=5), timeout=5)
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.RpcError as e:
            key = f"{e.code().name}: {e.details()[:30]}"
            codes[key] = codes.get(key, 0) + 1
    assert not [k for k in codes if "no bundle" in k], codes
    seen: set[int] = set()
    assert wait_for(lambda: len(seen.update(worker_pids(s, facts["user"], 12)) or seen - before) >= 1, 30)
    new_version(root, good, "v2")
    set_current(root, "v2")

    def only_v2() -> bool:
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        return (metric(text, "recserve_bundle_loaded", version="v2") == 1
                and metric(text, "recserve_bundle_loaded", version=good) == 0)

    assert wait_for(only_v2, 30), "a version no worker serves is still reported as loaded"


@pytest.mark.parametrize("key, value, says", [
    ("event_weights", [1, 2], "params.event_weights"),
    ("history_len", 0, "params.history_len"),
    ("cap", -5, "params.cap"),
    ("ef", "many", "params.ef"),
    ("quotas", {}, "params.quotas"),
    ("session_gap", -1, "params.session_gap"),
    ("mmr_lambda", 3, "params.mmr_lambda"),
    ("max_per_creator", -1, "params.max_per_creator"),
    ("decay_short", -1, "params.decay_short"),
    ("half_life_days", -5, "params.half_life_days"),
    ("alpha", 7, "params.alpha"),
    # each below passed verify, then failed Recommender.__init__ or every Recommend
    ("quotas", {"ann": 100, "i2i": 80, "popular": 40}, "params.quotas: no quota for session"),
    ("quotas", {"ann": 100, "i2i": 80, "session": 40, "popular": 40, "video": 5}, "unknown source 'video'"),
    ("quotas", {"ann": 10**12, "i2i": 80, "session": 40, "popular": 40}, "params.quotas: ann must be an integer "
                                                                            "in [0, 100000]"),
    ("ranker_engine", "turbo", "params.ranker_engine: one of forest, lightgbm"),
    ("cold_order", "random", "params.cold_order: one of trending, ranker"),
    ("cold_trending", "city", "params.cold_trending: one of country, global"),
    ("warm_trending", "city", "params.warm_trending: one of country, global"),
    ("candidates", -5, "params.candidates: an integer in [1, 100000]"),
    ("novelty_boost", None, "params.novelty_boost: a number in [0, 1000]"),
    ("max_per_creator", 10**12, "params.max_per_creator: an integer in [0, 10000]"),
    ("event_weights", [1e39, 2.0, 3.0, 5.0, 4.0], "params.event_weights"),
    ("history_len", 10**30, "params.history_len"),
    ("ef", None, "params.ef"),
    pytest.param("decay_long", 10**400, "params.decay_long", id="decay_long-int-beyond-float"),
])
def test_a_hand_edited_manifest_with_unusable_params_is_refused(shared_root, tmp_path, key, value, says):
    """A manifest edited and sealed again (its digest matches): serving parameters no request could use refuse
    the bundle at load
    (before, event_weights of the wrong length loaded and failed every Recommend of a user with history;
    a quotas map without ``session`` loaded and failed every Recommend with ``KeyError: 'session'``)."""
    root, holder, good = edited_version(shared_root, tmp_path / "root", lambda m: m["params"].update({key: value}))
    set_current(root, "v-edited")
    assert not holder.try_reload()
    assert holder.current.version == good and says in holder.last_error, holder.last_error
    holder.current.bundle.close()
    from recserve.bundle import BundleError, verify

    with pytest.raises(BundleError, match=re.escape(says)):        # and `recserve-train verify` says so
        verify(root / "v-edited")
    from recserve.bundle import Bundle
    from recserve.pipeline.recommender import Recommender

    with Bundle.open(root / "v-edited", verify=False) as b:       # unverified: the pipeline refuses it too
        with pytest.raises(ValueError, match=re.escape(says)):
            Recommender(b, None)
