"""Work sharing between a server's worker processes: a Recommend that would wait for its worker's busy
compute slot runs on an idle sibling worker instead.

Why: SO_REUSEPORT balances *connections* over the workers, not calls. A gRPC client keeps one HTTP/2
connection per channel, so a backend with one channel loads one worker while the others idle; and even
with many connections each worker has a queue of its own, so a call can wait behind a busy worker while
its sibling's CPU idles.

How:

* a :class:`Board` in shared memory (created by the supervisor before it forks) holds two numbers per
  worker: its compute slot's load (1 while a call holds it, plus the calls waiting for it; UNAVAILABLE
  while it is not serving: starting, loading a bundle, draining, dead), written by the worker itself
  whenever it changes, and its heartbeat, the time its event loop last took a turn (every ``BEAT_S``);
* each worker listens on a Unix socket of its own, ``<dir>/w<slot>.sock``, in a directory only the
  server's user can enter (mode 0700);
* a worker whose slot is busy when a Recommend arrives looks for a sibling whose load is 0 and whose
  heartbeat is fresh, and sends it the request, still waiting for its own slot meanwhile; the sibling
  computes it through its own compute slot, exactly as a call of its own, says so when it starts (an
  acknowledgement), and sends back the :class:`~recserve.pipeline.messages.Result` (or the pipeline
  error, re-raised at the front so it maps to the same status code);
* whichever starts the call first computes it: when the front's own slot frees before the sibling's
  acknowledgement arrives, the front computes it and takes the forwarded call back (a cancel frame: the
  sibling drops it, or stops it at its next pause); so does a front whose client cancels, or whose
  sibling's heartbeat stops while it computes (a stalled sibling: a debugger, a long pause of its loop);
* a sibling that cannot be reached, dies mid-call, has no bundle loaded, does not start a call within
  ``ACK_S`` or stalls is skipped for ``RETRY_S``: the call computes locally. A forwarded call is never
  forwarded again.

Frames on a connection: a 4-byte big-endian length, then a pickle. To the sibling: ``(call id, request)``,
or ``(call id, None)`` to take the call back; from it: ``(call id, kind, payload)``, kind ``ACK`` (started),
``OK`` (``(result, pid)``) or ``ERR`` (the packed error). Pickle is safe here only because both ends are
this server's own processes behind a private directory.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import mmap
import os
import pickle
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

from recserve.pipeline.errors import DeadlineExceeded, InvalidArgument, NoBundle, NotFound
from recserve.pipeline.messages import RecRequest, Result
from recserve.scheduling import Withdrawn

log = logging.getLogger("recserve.sharing")

_LEN = struct.Struct(">I")
MAX_FRAME = 64 << 20
UNAVAILABLE = 1 << 30       # a board entry of a worker that is not serving (starting, loading, draining, dead)
RETRY_S = 1.0               # a sibling that could not take a call is skipped this long
ACK_S = 0.05                # a sibling that has not started a forwarded call by then is skipped
# each worker's heartbeat on the board, written by its event loop this often (a wake-up of an idle worker
# costs 0.2-0.5 ms of CPU on the 2-core test machine: 4 a second are 0.1-0.2 % of a core)
BEAT_S = 0.25
STALE_S = 1.0               # a heartbeat older than this: the worker's loop is stalled (not picked, calls taken back)
ACK, OK, ERR = 0, 1, 2      # kinds of the sibling's frames


class PeerUnavailable(Exception):
    """The sibling could not take the call (unreachable, gone, or no bundle): compute locally."""


class Board:
    """Per worker, an int64 load and a float64 heartbeat (``time.monotonic``, one clock for every process)
    in anonymous shared memory: create before fork, use in every worker."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"a board needs at least one worker, got {n}")
        self._mem = mmap.mmap(-1, 16 * n)         # MAP_SHARED: the children see each other's writes
        self.loads = np.frombuffer(self._mem, dtype=np.int64, count=n)
        self.beats = np.frombuffer(self._mem, dtype=np.float64, count=n, offset=8 * n)
        self.loads[:] = UNAVAILABLE
        self.n = n

    def set(self, worker: int, load: int) -> None:
        self.loads[worker] = load

    def beat(self, worker: int) -> None:
        self.beats[worker] = time.monotonic()

    def alive(self, worker: int, now: float | None = None) -> bool:
        """The worker's event loop took a turn within ``STALE_S``."""
        return (time.monotonic() if now is None else now) - self.beats[worker] < STALE_S


def socket_path(directory: str | os.PathLike, worker: int) -> Path:
    return Path(directory) / f"w{worker}.sock"


# -- errors over the wire ---------------------------------------------------------------------------------
class _Remote(Exception):
    """The sibling failed in a way the pipeline does not name (it logged it): the call computes locally."""


def _pack_error(exc: BaseException) -> tuple:
    if isinstance(exc, (InvalidArgument, NotFound)):
        return (type(exc).__name__, exc.field, exc.message)
    if isinstance(exc, DeadlineExceeded):
        return ("DeadlineExceeded", exc.stage, exc.when)
    if isinstance(exc, NoBundle):
        return ("NoBundle", "", "")
    return ("Internal", type(exc).__name__, "")


def _unpack_error(kind: str, a: str, b: str) -> BaseException:
    if kind == "InvalidArgument":
        return InvalidArgument(a, b)
    if kind == "NotFound":
        return NotFound(a, b)
    if kind == "DeadlineExceeded":
        return DeadlineExceeded(a, b or "before")
    if kind == "NoBundle":
        return PeerUnavailable("the sibling has no bundle loaded")
    return _Remote(f"{a} in a sibling worker")


async def _read_frame(reader: asyncio.StreamReader):
    n = _LEN.unpack(await reader.readexactly(4))[0]
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes")
    return pickle.loads(await reader.readexactly(n))


def _frame(obj) -> bytes:
    body = pickle.dumps(obj, protocol=5)
    return _LEN.pack(len(body)) + body


# -- the receiving side -----------------------------------------------------------------------------------
Compute = Callable[..., Awaitable[Result]]      # compute(request, started=callback run once it computes)


class ShareServer:
    """Takes siblings' Recommends on this worker's socket and computes them with ``compute``."""

    def __init__(self, path: str | os.PathLike, compute: Compute):
        self.path = Path(path)
        self.compute = compute
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        try:
            self.path.unlink()          # a predecessor's socket (this worker slot respawned)
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        for w in list(self._writers):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        calls: dict[int, asyncio.Task] = {}         # this connection's calls in progress, by call id
        try:
            while True:
                call_id, req = await _read_frame(reader)
                if req is None:                     # taken back: the front computed it, or its client left
                    t = calls.pop(call_id, None)
                    if t is not None:
                        t.cancel()
                    continue
                t = asyncio.ensure_future(self._one(call_id, req, writer))
                calls[call_id] = t
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
                t.add_done_callback(lambda _t, c=call_id: calls.pop(c, None))
        except (asyncio.IncompleteReadError, ConnectionError, EOFError, asyncio.CancelledError):
            pass                            # the sibling went away, or this worker is closing
        finally:
            for t in list(calls.values()):  # nobody is left to take their answers
                t.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _one(self, call_id: int, req: RecRequest, writer: asyncio.StreamWriter) -> None:
        def started() -> None:
            if not writer.is_closing():
                writer.write(_frame((call_id, ACK, None)))

        try:
            reply = (call_id, OK, (await self.compute(req, started=started), os.getpid()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- sent back, mapped to a status code at the front
            if not isinstance(exc, (InvalidArgument, NotFound, DeadlineExceeded, NoBundle)):
                log.exception("forwarded Recommend failed")
            reply = (call_id, ERR, _pack_error(exc))
        if not writer.is_closing():
            writer.write(_frame(reply))


# -- the sending side -------------------------------------------------------------------------------------
class Forwarded:
    """One call sent to a sibling: ``started`` completes once the sibling computes it (or has answered),
    ``result`` with its answer (``(result, pid)``, a pipeline error, or PeerUnavailable)."""

    def __init__(self, peer: "Peer", call_id: int):
        loop = asyncio.get_running_loop()
        self.peer, self.id = peer, call_id
        self.started: asyncio.Future = loop.create_future()
        self.result: asyncio.Future = loop.create_future()

    def take_back(self) -> None:
        """Its answer will not be used (computed here, or the client left): the sibling drops the call, or
        stops it at its next pause. A no-op once it has answered."""
        self.peer._take_back(self)


class Peer:
    """This worker's connection to one sibling, opened on first use and again after a failure."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, Forwarded] = {}
        self._ids = itertools.count()
        self._connecting: asyncio.Future | None = None
        self._reader_task: asyncio.Task | None = None

    async def _connect(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        if self._connecting is None:        # one connection attempt, shared by the calls that wait for it
            self._connecting = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(self._connecting)
        except OSError as exc:
            raise PeerUnavailable(f"cannot reach {self.path.name}: {exc}") from exc

    async def _open(self) -> asyncio.StreamWriter:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.path))
            self._writer = writer
            self._reader_task = asyncio.ensure_future(self._read_replies(reader, writer))
            return writer
        finally:
            self._connecting = None

    async def _read_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                call_id, kind, payload = await _read_frame(reader)
                call = self._pending.get(call_id)
                if call is None:
                    continue
                if not call.started.done():
                    call.started.set_result(None)
                if kind == ACK:
                    continue
                del self._pending[call_id]
                if kind == OK:
                    call.result.set_result(payload)
                else:
                    call.result.set_exception(_unpack_error(*payload))
        except (asyncio.IncompleteReadError, ConnectionError, EOFError, OSError):
            pass
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for call in self._pending.values():
                call.result.set_exception(PeerUnavailable(f"{self.path.name} went away"))
            self._pending.clear()

    async def send(self, req: RecRequest) -> Forwarded:
        """Send ``req``; PeerUnavailable when the sibling cannot be reached."""
        writer = await self._connect()
        call = Forwarded(self, next(self._ids))
        self._pending[call.id] = call
        writer.write(_frame((call.id, req)))
        return call

    def _take_back(self, call: Forwarded) -> None:
        if self._pending.pop(call.id, None) is not None:
            call.result.cancel()
            if self._writer is not None and not self._writer.is_closing():
                self._writer.write(_frame((call.id, None)))
        elif call.result.done() and not call.result.cancelled():
            call.result.exception()         # an answer nobody waits for any more: not logged as lost


class Sharing:
    """One worker's part in work sharing: publishes its load and heartbeat, serves its siblings, forwards
    to them."""

    def __init__(self, board: Board, me: int, directory: str | os.PathLike):
        self.board = board
        self.me = me
        self.directory = Path(directory)
        self.peers = {w: Peer(socket_path(directory, w)) for w in range(board.n) if w != me}
        self._server: ShareServer | None = None
        self._beating: asyncio.Task | None = None
        self._next = itertools.count()
        self._skip_until = {w: 0.0 for w in self.peers}     # time.monotonic()
        self._serving = False           # a bundle is loaded and the worker is not draining
        self._listening = False         # its share socket takes connections
        self._loading = False           # it is loading a bundle (its loop pauses)
        self._shown = False             # siblings see its load: serving, listening, not loading
        self._load = 0
        self.forwarded = 0

    def _show(self) -> None:
        self._shown = self._serving and self._listening and not self._loading
        self.board.set(self.me, self._load if self._shown else UNAVAILABLE)

    def publish(self, load: int) -> None:
        """This worker's compute-slot load (shown to siblings only while it can take their calls)."""
        self._load = load
        if self._shown:
            self.board.set(self.me, load)

    def serving(self, on: bool) -> None:
        """Take siblings' calls (a bundle is loaded) or not (none yet, or draining); shown once the share
        socket listens."""
        self._serving = on
        self._show()

    def loading(self, on: bool) -> None:
        """A bundle load is under way: its steps that hold the GIL pause this worker's loop, so siblings
        forward nothing here meanwhile."""
        self._loading = on
        self._show()

    async def start(self, compute: Compute) -> None:
        self._server = ShareServer(socket_path(self.directory, self.me), compute)
        await self._server.start()
        self._listening = True
        self.board.beat(self.me)
        self._show()
        self._beating = asyncio.ensure_future(self._beat())

    async def _beat(self) -> None:
        while True:
            self.board.beat(self.me)
            await asyncio.sleep(BEAT_S)

    async def close(self) -> None:
        self.serving(False)
        if self._beating is not None:
            self._beating.cancel()
        if self._server is not None:
            await self._server.close()

    def idle_sibling(self) -> int | None:
        """A serving sibling with nothing to compute and a fresh heartbeat, searched from a rotating start
        to spread the picks."""
        loads, n = self.board.loads, self.board.n
        now = time.monotonic()
        start = next(self._next)
        for j in range(n):
            w = (start + j) % n
            if w != self.me and loads[w] == 0 and self._skip_until[w] <= now and self.board.alive(w, now):
                return w
        return None

    def _skip(self, w: int) -> None:
        self._skip_until[w] = time.monotonic() + RETRY_S

    async def forward(self, req: RecRequest, local=None) -> tuple[Result, int | None] | None:
        """``req`` computed by an idle sibling: ``(result, the sibling's pid)``; its pipeline errors raised.

        With ``local`` (``local(req, unless=future)``: this worker's own compute, which gives up its wait
        for the slot with :class:`~recserve.scheduling.Withdrawn` once ``unless`` completes) the call also
        waits for this worker's slot, and whichever starts first computes it: ``(result, None)`` when it
        ran here, never None. Without, None when no sibling is idle or the one picked could not answer."""
        w = self.idle_sibling()
        call = None
        if w is not None:
            try:
                call = await self.peers[w].send(req)
            except PeerUnavailable:
                self._skip(w)
        if call is None:
            return None if local is None else (await local(req, unless=None), None)
        timer = asyncio.get_running_loop().call_later(ACK_S, self._no_ack, w, call)
        try:
            if local is not None:
                try:
                    return await local(req, unless=call.started), None      # here, unless the sibling starts
                except Withdrawn:
                    pass
            out = await self._answer(w, call)
        finally:
            timer.cancel()
            call.take_back()                # computed here, or the client left: the sibling stops
        if out is None:
            return None if local is None else (await local(req, unless=None), None)
        self.forwarded += 1
        return out

    def _no_ack(self, w: int, call: Forwarded) -> None:
        if not call.started.done():
            self._skip(w)

    async def _answer(self, w: int, call: Forwarded) -> tuple[Result, int] | None:
        """The sibling's answer; None when it went away, failed outside the pipeline or stalled (its
        heartbeat stopped while it held the call)."""
        while True:
            done, _ = await asyncio.wait((call.result,), timeout=BEAT_S)
            if done:
                try:
                    return call.result.result()
                except PeerUnavailable:
                    self._skip(w)
                    return None
                except _Remote:
                    return None
            if not self.board.alive(w):
                log.info("sibling w%d stalled while computing a forwarded call: computed here", w,
                         extra={"event": "forward_stalled"})
                self._skip(w)
                return None


class Group:
    """The supervisor's side: the board and the socket directory of ``n`` workers, created before any fork.
    :meth:`member` runs in the forked worker; :meth:`gone` and :meth:`remove` in the supervisor."""

    def __init__(self, n: int):
        self.board = Board(n)
        # mode 0700: this user only; named after the supervisor, so a later one can remove it if this one is
        # killed before it can (recserve.supervisor.remove_stale_dirs)
        self.directory = tempfile.mkdtemp(prefix=f"recserve-share-{os.getpid()}-")

    def member(self, slot: int) -> Sharing:
        return Sharing(self.board, slot, self.directory)

    def gone(self, slot: int) -> None:
        """A worker died: siblings stop forwarding to its slot until its replacement serves."""
        self.board.set(slot, UNAVAILABLE)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
