"""Work sharing between workers (recserve.sharing): forwarded Recommends answer exactly as local ones, errors
keep their status, and a sibling that cannot take a call is skipped. Real Unix sockets, a real pipeline over
the demo bundle, and a real 2-worker server over one gRPC connection."""
from __future__ import annotations

import asyncio
import os
import time
import urllib.request

import pytest

from recserve.pipeline.errors import DeadlineExceeded, InvalidArgument, NoBundle
from recserve.pipeline.messages import RecRequest
from recserve.pipeline.recommender import Recommender
from recserve.sharing import RETRY_S, UNAVAILABLE, Board, Group, Sharing
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pbg
from srvutil import free_port, metric

NOW = 1_700_000_000.0


def _ids(result):
    return [(it.item_id, round(it.score, 6)) for it in result.items]


def test_board_starts_unavailable_and_shows_loads():
    b = Board(3)
    assert list(b.loads) == [UNAVAILABLE] * 3
    b.set(1, 0)
    assert b.loads[1] == 0
    with pytest.raises(ValueError):
        Board(0)


def test_group_hands_each_worker_the_shared_board_and_cleans_up():
    g = Group(2)
    w1 = g.member(1)
    assert w1.board is g.board and set(w1.peers) == {0}
    assert (os.stat(g.directory).st_mode & 0o777) == 0o700      # the sockets' directory: this user only
    w1.serving(True)
    assert g.board.loads[1] == 0
    g.gone(1)                                                 # the supervisor saw it die
    assert g.board.loads[1] == UNAVAILABLE
    g.remove()
    assert not os.path.exists(g.directory)


def test_forwarded_recommend_answers_as_the_local_pipeline(bundle, facts, tmp_path):
    rec = Recommender(bundle, None)
    calls = []

    async def compute(req):
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

    async def no_bundle(req):
        raise NoBundle()

    async def main():
        board = Board(2)
        front = Sharing(board, 0, tmp_path)
        board.set(1, 0)                             # shows idle, but nothing listens on its socket
        assert await front.forward(RecRequest(k=5)) is None
        assert front.idle_sibling() is None         # skipped for a while after failing
        await asyncio.sleep(RETRY_S + 0.05)
        assert front.idle_sibling() == 1
        sibling = Sharing(board, 1, tmp_path)       # up, but without a bundle
        await sibling.start(no_bundle)
        sibling.serving(True)
        try:
            assert await front.forward(RecRequest(k=5)) is None
        finally:
            await sibling.close()
        sibling = Sharing(board, 1, tmp_path)       # the slot's next worker rebinds the same socket

        async def compute(req):
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
    mport = free_port()
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--share-work", share,
                     "--metrics-port", str(mport))
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
