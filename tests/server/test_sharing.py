"""Work sharing between workers (recserve.sharing): forwarded Recommends answer exactly as local ones, errors
keep their status, and a sibling that cannot take a call is skipped. Real Unix sockets, a real pipeline over
the demo bundle, and a real 2-worker server over one gRPC connection."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from recserve.pipeline.errors import DeadlineExceeded, InvalidArgument, NoBundle
from recserve.pipeline.messages import RecRequest
from recserve.pipeline.recommender import Recommender
from recserve.scheduling import HEAVY, ComputeSlot
from recserve.sharing import RETRY_S, STALE_S, UNAVAILABLE, Board, Group, Sharing
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pbg
from srvutil import metric

NOW = 1_700_000_000.0


def _ids(result):
    return [(it.item_id, round(it.score, 6)) for it in result.items]


def test_board_starts_unavailable_and_shows_loads():
    b = Board(3)
    assert list(b.loads) == [UNAVAILABLE] * 3
    assert not any(b.alive(w) for w in range(3))        # no heartbeat yet
    b.set(1, 0)
    b.beat(2)
    assert b.loads[1] == 0 and b.loads[2] == UNAVAILABLE and b.alive(2) and not b.alive(1)
    assert not b.alive(2, time.monotonic() + STALE_S)
    with pytest.raises(ValueError):
        Board(0)


def test_group_hands_each_worker_the_shared_board_and_cleans_up():
    g = Group(2)
    w1 = g.member(1)
    assert w1.board is g.board and set(w1.peers) == {0}
    assert (os.stat(g.directory).st_mode & 0o777) == 0o700      # the sockets' directory: this user only
    w1.serving(True)
    assert g.board.loads[1] == UNAVAILABLE                    # its share socket does not listen yet
    w1._shown = True                                          # (as once it listens: the next test)
    w1.publish(0)
    assert g.board.loads[1] == 0
    g.gone(1)                                                 # the supervisor saw it die
    assert g.board.loads[1] == UNAVAILABLE
    g.remove()
    assert not os.path.exists(g.directory)


def test_forwarded_recommend_answers_as_the_local_pipeline(bundle, facts, tmp_path):
    rec = Recommender(bundle, None)
    calls = []

    async def compute(req, started=None):
        started()
        calls.append(req.user_id)
        return rec.recommend(req)

    async def main():
        board = Board(2)
        front, sibling = Sharing(board, 0, tmp_path), Sharing(board, 1, tmp_path)
        await sibling.start(compute)
        try:
            assert await front.forward(RecRequest(user_id=facts["user"], k=10)) is None   # not serving yet
            sibling.serving(True)
            req = RecRequest(user_id=facts["user"], k=10, timestamp=NOW)
            res, pid = await front.forward(req)
            assert _ids(res) == _ids(rec.recommend(req)) and len(res.items) == 10
            assert res.bundle_version == rec.version and pid > 0
            sibling.publish(1)                      # busy: not idle, nothing is sent
            assert await front.forward(req) is None
            sibling.publish(0)
            with pytest.raises(InvalidArgument) as e:     # the sibling's pipeline error, same field
                await front.forward(RecRequest(user_id=facts["user"], k=100_000))
            assert e.value.field == "k"
            with pytest.raises(DeadlineExceeded):
                await front.forward(RecRequest(user_id=facts["user"], deadline=time.monotonic() - 1))
            assert front.forwarded == 1 and len(calls) == 3
        finally:
            await sibling.close()
            await front.close()
        assert board.loads[1] == UNAVAILABLE

    asyncio.run(main())


def test_a_sibling_that_cannot_take_the_call_is_skipped(bundle, facts, tmp_path):
    rec = Recommender(bundle, None)

    async def no_bundle(req, started=None):
        started()
        raise NoBundle()

    async def main():
        board = Board(2)
        front = Sharing(board, 0, tmp_path)
        board.set(1, 0)                             # shows idle, but nothing listens on its socket
        board.beat(1)
        assert await front.forward(RecRequest(k=5)) is None
        assert front.idle_sibling() is None         # skipped for a while after failing
        await asyncio.sleep(RETRY_S + 0.05)
        board.beat(1)
        assert front.idle_sibling() == 1
        sibling = Sharing(board, 1, tmp_path)       # up, but without a bundle
        await sibling.start(no_bundle)
        sibling.serving(True)
        try:
            assert await front.forward(RecRequest(k=5)) is None
        finally:
            await sibling.close()
        sibling = Sharing(board, 1, tmp_path)       # the slot's next worker rebinds the same socket

        async def compute(req, started=None):
            started()
            return rec.recommend(req)

        await sibling.start(compute)
        sibling.serving(True)
        await asyncio.sleep(RETRY_S + 0.05)
        try:
            res, _ = await front.forward(RecRequest(k=5, timestamp=NOW))
            assert len(res.items) == 5
        finally:
            await sibling.close()

    asyncio.run(main())


def _burst(stub, user, n):
    """``n`` concurrent Recommends over one connection: (items, front pid, computing pid or None) each."""
    futs = [stub.Recommend.future(pb.RecommendRequest(user_id=user, k=10, context=pb.Context(timestamp=NOW)),
                                  timeout=30) for _ in range(n)]
    out = []
    for f in futs:
        r = f.result()
        md = dict(f.trailing_metadata())
        out.append(([(it.item_id, round(it.score, 5)) for it in r.items], md["recserve-worker"],
                    md.get("recserve-computed-by")))
    return out


@pytest.mark.parametrize("share", ["1", "0"])
def test_one_connection_loads_both_workers_only_with_work_sharing(start_server, shared_root, facts, share):
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--share-work", share, metrics=True)
    mport = s.metrics_port
    stub = pbg.RecommenderStub(s.channel())          # one channel: one connection, one worker
    got = _burst(stub, facts["user"], 8) + _burst(stub, facts["user"], 64) + _burst(stub, facts["user"], 64)
    fronts = {g[1] for g in got}
    computed = [g[2] for g in got if g[2] is not None]
    assert len(fronts) == 1
    assert len({tuple(g[0]) for g in got}) == 1 and len(got[0][0]) == 10    # the same answer wherever
    if share == "1":
        assert computed and not (set(computed) & fronts), "no Recommend ran on the idle sibling"
    else:
        assert not computed
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    assert metric(text, "recserve_forwarded_total") == len(computed)
    assert metric(text, "recserve_requests_total", method="Recommend", code="OK") == len(got)


def test_share_work_flag_is_validated(start_server, shared_root):
    with pytest.raises(RuntimeError):
        start_server(shared_root, "--workers", "2", "--share-work", "2")


def test_siblings_see_a_worker_only_while_it_listens_and_is_not_loading(tmp_path):
    async def compute(req, started=None):
        raise AssertionError("no call is sent here")

    async def main():
        board = Board(2)
        w = Sharing(board, 1, tmp_path)
        w.serving(True)                 # a worker's start: its bundle is loaded before its socket listens
        assert board.loads[1] == UNAVAILABLE
        await w.start(compute)
        try:
            assert board.loads[1] == 0 and board.alive(1)
            w.publish(2)
            assert board.loads[1] == 2
            w.loading(True)             # a bundle load pauses its loop: siblings send nothing meanwhile
            assert board.loads[1] == UNAVAILABLE
            w.publish(0)
            assert board.loads[1] == UNAVAILABLE
            w.loading(False)
            assert board.loads[1] == 0
        finally:
            await w.close()
        assert board.loads[1] == UNAVAILABLE

    asyncio.run(main())


class _ThreadSibling:
    """A sibling worker on an event loop of its own, in a thread: its loop can stall while the front's runs.
    Its compute takes its own slot, says it started, then runs ``body(req)``."""

    def __init__(self, board, directory, body):
        self.started, self.unstall, self.cancelled = threading.Event(), threading.Event(), threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sharing = Sharing(board, 1, directory)
        slot = ComputeSlot()

        async def compute(req, started=None):
            try:
                async with slot.hold(HEAVY, req.deadline):
                    started()
                    self.started.set()
                    return await body(req)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

        async def start():
            await self.sharing.start(compute)
            self.sharing.serving(True)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def stall(self) -> threading.Event:
        """Stop its loop (as a long GIL hold or SIGSTOP would) until ``unstall``; set once it has stopped."""
        stalled = threading.Event()

        def block():
            stalled.set()
            self.unstall.wait(60)

        self.loop.call_soon_threadsafe(block)
        return stalled

    def close(self):
        self.unstall.set()
        asyncio.run_coroutine_threadsafe(self.sharing.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _until(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.005)


def _front(board, tmp_path, rec):
    """A front worker's sharing, its compute slot, a local compute through it, and a call holding the slot
    until the returned event is set."""
    front, slot = Sharing(board, 0, tmp_path), ComputeSlot()

    async def local(req, unless=None):
        async with slot.hold(HEAVY, req.deadline, unless):
            return rec.recommend(req)

    release = asyncio.Event()

    async def other_call():
        async with slot.hold(HEAVY):
            await release.wait()

    return front, slot, local, release, asyncio.ensure_future(other_call())


def test_a_call_sent_to_a_stalled_sibling_runs_here_once_the_fronts_slot_frees(bundle, facts, tmp_path):
    rec = Recommender(bundle, None)
    sib_rec = Recommender(bundle, None)
    board = Board(2)

    async def body(req):
        return sib_rec.recommend(req)

    sib = _ThreadSibling(board, tmp_path, body)
    req = RecRequest(user_id=facts["user"], k=10, timestamp=NOW)

    async def main():
        front, slot, local, release, other = _front(board, tmp_path, rec)
        await _until(lambda: slot.load() == 1)
        stalled = sib.stall()
        await asyncio.get_running_loop().run_in_executor(None, stalled.wait)
        board.beat(1)                               # its loop stopped just after its last heartbeat
        fwd = asyncio.ensure_future(front.forward(req, local))
        await _until(lambda: slot.waiting() == 1)   # sent to the sibling, and waiting for the slot here too
        release.set()                               # this worker's slot frees before the sibling starts it
        res, by = await fwd
        assert by is None and not sib.unstall.is_set()      # computed here, the sibling still stalled
        assert _ids(res) == _ids(rec.recommend(req))
        await other
        await front.close()

    try:
        asyncio.run(main())
        sib.unstall.set()
        assert not sib.started.wait(1.0)            # taken back: the sibling, running again, drops the call
    finally:
        sib.close()


def test_a_sibling_that_stalls_in_a_forwarded_call_loses_it_and_is_skipped(bundle, facts, tmp_path):
    rec = Recommender(bundle, None)
    board = Board(2)
    sib = None

    async def body(req):
        sib.unstall.wait(60)                        # its loop stalls inside the call (blocks its thread)
        return rec.recommend(req)

    sib = _ThreadSibling(board, tmp_path, body)
    req = RecRequest(user_id=facts["user"], k=10, timestamp=NOW)

    async def main():
        front, slot, local, release, other = _front(board, tmp_path, rec)
        await _until(lambda: slot.load() == 1)
        fwd = asyncio.ensure_future(front.forward(req, local))
        await asyncio.get_running_loop().run_in_executor(None, sib.started.wait, 30)
        await _until(lambda: slot.waiting() == 0)   # its acknowledgement withdrew the wait here
        release.set()
        await other
        res, by = await fwd                         # its heartbeat stops: taken back, computed here
        assert by is None and not sib.unstall.is_set()
        assert _ids(res) == _ids(rec.recommend(req))
        assert front.idle_sibling() is None         # and skipped for a while
        await front.close()

    try:
        asyncio.run(main())
    finally:
        sib.close()


def test_a_forwarded_call_the_client_cancels_stops_in_the_sibling(bundle, facts, tmp_path):
    rec = Recommender(bundle, None)
    board = Board(2)
    finished = threading.Event()

    async def body(req):
        for _ in range(3000):                       # a long call, pausing between its stages
            await asyncio.sleep(0.01)
        finished.set()
        return rec.recommend(req)

    sib = _ThreadSibling(board, tmp_path, body)

    async def main():
        front = Sharing(board, 0, tmp_path)
        fwd = asyncio.ensure_future(front.forward(RecRequest(user_id=facts["user"], k=10, timestamp=NOW)))
        await asyncio.get_running_loop().run_in_executor(None, sib.started.wait, 30)
        fwd.cancel()                                # the client went away
        with pytest.raises(asyncio.CancelledError):
            await fwd
        await front.close()

    try:
        asyncio.run(main())
        assert sib.cancelled.wait(30) and not finished.is_set()
    finally:
        sib.close()


def _workers(server) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_stopped_sibling_does_not_hold_the_calls_forwarded_to_it(start_server, shared_root, facts):
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--cpu-affinity", "off")
    stub = pbg.RecommenderStub(s.channel())         # one connection: one front worker
    _, call = stub.Recommend.with_call(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=30)
    front = int(dict(call.trailing_metadata())["recserve-worker"])
    sibling = next(w for w in _workers(s) if w != front)
    os.kill(sibling, signal.SIGSTOP)                # a debugger, or a loop paused as long
    try:
        for _ in range(3):
            # the first keeps the front busy, so the second would go to the (idle-looking) sibling
            futs = [stub.Recommend.future(pb.RecommendRequest(user_id=facts["user"], k=100, explain=True),
                                          timeout=20),
                    stub.Recommend.future(pb.RecommendRequest(user_id=facts["user"], k=10), timeout=20)]
            for f in futs:
                assert len(f.result().items) > 0
                assert "recserve-computed-by" not in dict(f.trailing_metadata())
    finally:
        os.kill(sibling, signal.SIGCONT)
