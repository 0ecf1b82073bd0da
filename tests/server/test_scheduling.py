"""The worker's compute slot: one holder at a time, (priority, arrival) order, pauses, deadlines, cancels."""
from __future__ import annotations

import asyncio
import time

import pytest

from recserve.pipeline.errors import DeadlineExceeded
from recserve.scheduling import CHEAP, HEAVY, ComputeSlot


@pytest.fixture(scope="module")
def tiny_recommender(bundle):
    from recserve.pipeline.recommender import Recommender

    return Recommender(bundle, None), bundle.tables.id_of("user", 0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def test_one_holder_at_a_time_in_priority_then_arrival_order():
    async def main():
        slot, log = ComputeSlot(), []

        async def call(name, prio, steps=3):
            async with slot.hold(prio):
                log.append(f"+{name}")
                for _ in range(steps):
                    await asyncio.sleep(0)      # suspended while holding: nobody else may enter
                log.append(f"-{name}")

        first = asyncio.ensure_future(call("a", HEAVY))
        await settle(1)
        rest = [asyncio.ensure_future(call(n, p)) for n, p in (("b", HEAVY), ("c", HEAVY), ("s", CHEAP))]
        await asyncio.gather(first, *rest)
        return log

    log = run(main())
    assert log == ["+a", "-a", "+s", "-s", "+b", "-b", "+c", "-c"]


def test_pause_hands_over_to_a_cheaper_call_and_resumes_before_later_equals():
    async def main():
        slot, log = ComputeSlot(), []

        async def heavy(name, stages):
            async with slot.hold(HEAVY) as pause:
                for i in range(stages):
                    log.append(f"{name}{i}")
                    await pause()

        async def cheap(name):
            async with slot.hold(CHEAP):
                log.append(name)

        a = asyncio.ensure_future(heavy("a", 3))
        await settle(1)                          # a holds the slot, in its first stage
        b = asyncio.ensure_future(heavy("b", 2))  # an equal arriving later: waits for all of a
        s = asyncio.ensure_future(cheap("s"))    # cheap: runs at a's next pause
        await asyncio.gather(a, b, s)
        return log

    log = run(main())
    assert log == ["a0", "s", "a1", "a2", "b0", "b1"]


def test_pause_without_waiters_keeps_the_slot():
    async def main():
        slot = ComputeSlot()
        async with slot.hold(HEAVY) as pause:
            for _ in range(3):
                await pause()
            assert slot.waiting() == 0
        async with slot.hold(CHEAP):           # released: taken at once
            return True

    assert run(main())


def test_a_waiter_past_its_deadline_leaves_the_queue_without_running():
    async def main():
        slot, ran = ComputeSlot(), []
        loop = asyncio.get_running_loop()

        async def call(name, deadline=None, hold_s=0.0):
            async with slot.hold(HEAVY, deadline):
                ran.append(name)
                await asyncio.sleep(hold_s)

        a = asyncio.ensure_future(call("a", hold_s=0.2))
        await settle(1)
        late = asyncio.ensure_future(call("late", deadline=loop.time() + 0.05))
        b = asyncio.ensure_future(call("b"))
        with pytest.raises(DeadlineExceeded):
            await late
        assert slot.waiting() == 1              # only b waits now
        await asyncio.gather(a, b)
        return ran

    assert run(main()) == ["a", "b"]


def test_a_cancelled_waiter_does_not_hold_up_the_slot():
    async def main():
        slot, ran = ComputeSlot(), []

        async def call(name, hold_s=0.0):
            async with slot.hold(HEAVY):
                ran.append(name)
                await asyncio.sleep(hold_s)

        a = asyncio.ensure_future(call("a", hold_s=0.05))
        await settle(1)
        gone = asyncio.ensure_future(call("gone"))
        b = asyncio.ensure_future(call("b"))
        await settle(2)
        gone.cancel()
        await asyncio.gather(a, b)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return ran, slot.waiting()

    assert run(main()) == (["a", "b"], 0)


def test_a_call_cancelled_just_after_the_handover_passes_the_slot_on():
    async def main():
        slot, ran = ComputeSlot(), []

        async def call(name):
            async with slot.hold(HEAVY):
                ran.append(name)

        async with slot.hold(HEAVY):
            handed = asyncio.ensure_future(call("handed"))
            b = asyncio.ensure_future(call("b"))
            await settle(2)
        handed.cancel()                         # the slot went to `handed`, which never gets to run
        await asyncio.wait_for(b, 2)
        return ran

    assert run(main()) == ["b"]


def test_recommend_steps_pause_points_and_stage_times(tiny_recommender):
    """The pipeline yields at each stage boundary and at two points inside stages; time spent in pauses
    is in ``total`` only."""
    from recserve.pipeline.recommender import RecRequest

    rec, user = tiny_recommender
    req = RecRequest(user_id=user, k=5)
    direct = rec.recommend(req)
    steps = rec.recommend_steps(req)
    names = []
    while True:
        try:
            names.append(next(steps))
        except StopIteration as done:
            res = done.value
            break
        time.sleep(0.02)
    assert names == ["validate", "user", "ann", "candidates", "features", "ranking", "rerank"]
    assert [i.item_id for i in res.items] == [i.item_id for i in direct.items]
    t = dict(res.timings)
    assert [k for k in t] == ["validate", "user", "candidates", "ranking", "rerank", "assemble", "total"]
    # every pause (>= 20 ms each) is in the total and in no stage
    assert t["total"] - sum(v for k, v in t.items() if k != "total") >= 0.9 * 20.0 * len(names), res.timings


def test_explanations_are_a_stage_of_their_own(tiny_recommender):
    """With ``explain``, pred_contrib's time is the ``explain`` stage, not part of ``assemble``."""
    from recserve.pipeline.recommender import RecRequest

    rec, user = tiny_recommender
    res = rec.recommend(RecRequest(user_id=user, k=10, explain=True))
    t = dict(res.timings)
    assert [k for k in t] == ["validate", "user", "candidates", "ranking", "rerank", "explain", "assemble", "total"]
    assert t["explain"] > 0.0, res.timings
