"""Group commit of one worker's RecordEvents: the writes that wait for the event store's write lock are
committed together, in one transaction and one fsync, instead of one after another.

A RecordEvents is durable before its reply: its transaction's commit flushes the disk. LMDB lets one writer
in at a time across every process, so at a flush of 15 ms (a virtual disk under load) one worker's writes
queued for the lock, each paying its own flush. Here one job at a time (in the worker's I/O pool) takes
every write waiting and commits them as one; those that arrive meanwhile wait for the next. Each call's
batch is its own nested transaction (:meth:`recserve.events.EventStore.record_many`): one that fails
validation, or whose deadline passes before the commit, writes nothing and fails alone.
"""
from __future__ import annotations

import threading
from concurrent import futures

from recserve.pipeline.errors import DeadlineExceeded


class GroupWriter:
    """Submits RecordEvents writes to ``io`` (a thread pool), committed in groups."""

    def __init__(self, io: futures.Executor):
        self.io = io
        self._lock = threading.Lock()
        self._waiting: list = []
        self._running = False

    def submit(self, rec, events, deadline: float | None, abandoned) -> futures.Future:
        """Write ``events`` through ``rec`` (a ``Recommender``: its validation and store) in the next group;
        a future of its ``Recorded``. ``abandoned()`` true before the commit: nothing is written
        (``DeadlineExceeded``), as ``rec.record_events`` does."""
        fut: futures.Future = futures.Future()
        with self._lock:
            self._waiting.append((rec, events, deadline, abandoned, fut))
            start, self._running = not self._running, True
        if start:
            try:
                self.io.submit(self._drain).add_done_callback(self._drained)
            except BaseException:           # the pool is shut down: no job will take it
                with self._lock:
                    self._running = False
                    self._waiting.remove((rec, events, deadline, abandoned, fut))
                raise
        return fut

    def _drained(self, job: futures.Future) -> None:
        """A drain job cancelled before it ran (the pool shut down with ``cancel_futures``): the writes it
        would have taken fail, and the next submit starts a job again."""
        if not job.cancelled():
            return
        with self._lock:
            group, self._waiting, self._running = self._waiting, [], False
        for *_, fut in group:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("the worker stopped before the write was committed"))

    def _drain(self) -> None:
        while True:
            with self._lock:
                group, self._waiting = self._waiting, []
                if not group:
                    self._running = False
                    return
            try:
                self._commit(group)
            except BaseException as exc:  # noqa: BLE001 -- no call is left waiting for an answer
                for *_, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)

    def _commit(self, group: list) -> None:
        by_store: dict[int, list] = {}
        for item in group:                  # a reload between two calls: one store, whatever the bundle
            by_store.setdefault(id(item[0].store), []).append(item)
        for items in by_store.values():
            batches, owners = [], []
            for rec, events, deadline, abandoned, fut in items:
                if not fut.set_running_or_notify_cancel():
                    continue
                if abandoned():             # its call ended before a job took it: nothing to do
                    fut.set_exception(DeadlineExceeded("write"))
                    continue
                try:
                    batches.append(rec.events_write(events, deadline, abandoned))
                except Exception as exc:  # noqa: BLE001 -- its own call's error (validation)
                    fut.set_exception(exc)
                    continue
                owners.append(fut)
            if not batches:
                continue
            try:
                outs = items[0][0].store.record_many(batches)
            except Exception as exc:  # noqa: BLE001 -- the commit failed: so did every call in it
                for fut in owners:
                    fut.set_exception(exc)
                continue
            for fut, out in zip(owners, outs):
                if isinstance(out, Exception):
                    fut.set_exception(out)
                else:
                    fut.set_result(out)
