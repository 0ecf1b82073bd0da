"""Request scheduling inside one worker: one call computes at a time, cheap calls first.

A worker process owns one CPU (``cpu_affinity``) and runs its gRPC server on one asyncio event loop, so
its calls share that CPU whatever we do; the question is only in which order. A :class:`ComputeSlot`
makes the order explicit:

* a call computes only while it holds the slot (:meth:`ComputeSlot.hold`); calls wait for it in order of
  (priority, arrival), and waiting costs nothing (a suspended coroutine);
* between its stages a call awaits ``pause()``, which gives the event loop a turn (so gRPC can take in the
  calls that arrived meanwhile) and hands the slot to a waiting call of a better priority, taking it back
  afterwards, ahead of the calls of its own priority that arrived after it. A cheap SimilarItems thus
  waits for at most one stage of a Recommend, not for every Recommend queued before it;
* the slot passes directly from the releasing call to the next waiter, so no call can cut in;
* a waiting call whose deadline passes leaves the queue with ``DeadlineExceeded`` without doing any
  work, and a cancelled call (the client went away) leaves it too; so does, with :class:`Withdrawn`, one
  that a sibling worker started first (``unless``: :mod:`recserve.sharing`).

Work that mostly waits on I/O (the event store's fsync) runs in a thread and does not take the slot:
the CPU would idle under it.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools

from recserve.pipeline.errors import DeadlineExceeded

CHEAP = 0       # SimilarItems: a fraction of a millisecond
HEAVY = 1       # Recommend: a few stages of a fraction of a millisecond each
# event-loop turns a pause gives: a call that has just arrived needs a few (its request message is read
# and its handler started by separate callbacks) before it can queue for the slot. Measured on the 100k
# bundle at 400 calls/s, two runs each: SimilarItems p99 7.76 / 7.74 ms with 1 turn, 7.08 / 6.81 with 2,
# 6.63 / 6.89 with 3; Recommend p99 13.45 / 12.96, 15.61 / 13.27, 14.05 / 14.02 ms
PAUSE_TURNS = 2


class Withdrawn(Exception):
    """A call left the queue for the slot because its ``unless`` future completed first (a sibling worker
    started computing it)."""


class ComputeSlot:
    """One holder at a time; waiters served by (priority, arrival). Use from one event loop only."""

    def __init__(self, on_load=None):
        """``on_load(load)`` is called whenever :meth:`load` changes (work sharing publishes it)."""
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future]] = []     # heap of (priority, arrival, future)
        self._arrivals = itertools.count()
        self._on_load = on_load

    def waiting(self) -> int:
        return len(self._waiting)

    def load(self) -> int:
        """1 while a call holds the slot, plus the calls waiting for it."""
        return int(self._busy) + len(self._waiting)

    def _changed(self) -> None:
        if self._on_load is not None:
            self._on_load(self.load())

    async def _acquire(self, priority: int, arrival: int, deadline: float | None, unless=None) -> None:
        if unless is not None and unless.done():
            raise Withdrawn()
        if not self._busy and not self._waiting:
            self._busy = True
            self._changed()
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        entry = (priority, arrival, fut)
        heapq.heappush(self._waiting, entry)
        self._changed()
        timer = None if deadline is None else loop.call_at(deadline, self._expire, entry)

        def withdraw(_unless) -> None:
            self._expire(entry, Withdrawn())

        if unless is not None:
            unless.add_done_callback(withdraw)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release()                 # handed over as we gave up: pass it on
            elif entry in self._waiting:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
                self._changed()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if unless is not None:
                unless.remove_done_callback(withdraw)

    def _expire(self, entry, exc: Exception | None = None) -> None:
        """A waiter's deadline passed (or ``exc``: it was withdrawn): it leaves the queue without having
        computed anything."""
        if not entry[2].done():
            self._waiting.remove(entry)
            heapq.heapify(self._waiting)
            self._changed()
            entry[2].set_exception(exc or DeadlineExceeded("start"))

    def _release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)            # the slot passes to this waiter, still busy
                self._changed()
                return
        self._busy = False
        self._changed()

    @contextlib.asynccontextmanager
    async def hold(self, priority: int, deadline: float | None = None, unless=None):
        """Hold the slot for the body; yields the ``pause`` coroutine function the body awaits between
        its stages. ``deadline`` is on the event loop's clock (``time.monotonic``); ``unless``, a future:
        :class:`Withdrawn` is raised, with the slot not taken, when it completes before the slot is ours."""
        arrival = next(self._arrivals)
        await self._acquire(priority, arrival, deadline, unless)

        held = True

        async def pause() -> None:
            nonlocal held
            for _ in range(PAUSE_TURNS):
                await asyncio.sleep(0)          # the loop takes in the calls that arrived meanwhile
            if self._waiting and self._waiting[0][0] < priority:
                held = False
                self._release()
                await self._acquire(priority, arrival, None)
                held = True

        try:
            yield pause
        finally:
            if held:
                self._release()
