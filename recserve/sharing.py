"""Work sharing between a server's worker processes: a Recommend that would wait for its worker's busy
compute slot runs on an idle sibling worker instead.

Why: SO_REUSEPORT balances *connections* over the workers, not calls. A gRPC client keeps one HTTP/2
connection per channel, so a backend with one channel loads one worker while the others idle; and even
with many connections each worker has a queue of its own, so a call can wait behind a busy worker while
its sibling's CPU idles.

How:

* a :class:`Board` in shared memory (created by the supervisor before it forks) holds one number per
  worker: its compute slot's load (1 while a call holds it, plus the calls waiting for it), written by
  the worker itself whenever it changes;
* each worker listens on a Unix socket of its own, ``<dir>/w<slot>.sock``, in a directory only the
  server's user can enter (mode 0700);
* a worker whose slot is busy when a Recommend arrives looks for a sibling whose load is 0 and sends it
  the request; the sibling computes it through its own compute slot, exactly as a call of its own, and
  sends back the :class:`~recserve.pipeline.messages.Result` (or the pipeline error, re-raised at the
  front so it maps to the same status code);
* a sibling that cannot be reached, dies mid-call or has no bundle loaded is skipped: the call computes
  locally. A forwarded call is never forwarded again.

Frames on a connection: a 4-byte big-endian length, then a pickle of ``(call id, payload)``. Pickle is
safe here only because both ends are this server's own processes behind a private directory.
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
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

from recserve.pipeline.errors import DeadlineExceeded, InvalidArgument, NoBundle, NotFound
from recserve.pipeline.messages import RecRequest, Result

log = logging.getLogger("recserve.sharing")

_LEN = struct.Struct(">I")
MAX_FRAME = 64 << 20
UNAVAILABLE = 1 << 30       # a board entry of a worker that is not serving (starting, draining, dead)
RETRY_S = 1.0               # a sibling that could not take a call is skipped this long


class PeerUnavailable(Exception):
    """The sibling could not take the call (unreachable, gone, or no bundle): compute locally."""


class Board:
    """One int64 load per worker in anonymous shared memory: create before fork, use in every worker."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"a board needs at least one worker, got {n}")
        self._mem = mmap.mmap(-1, 8 * n)          # MAP_SHARED: the children see each other's writes
        self.loads = np.frombuffer(self._mem, dtype=np.int64)
        self.loads[:] = UNAVAILABLE
        self.n = n

    def set(self, worker: int, load: int) -> None:
        self.loads[worker] = load


def socket_path(directory: str | os.PathLike, worker: int) -> Path:
    return Path(directory) / f"w{worker}.sock"


# -- errors over the wire ---------------------------------------------------------------------------------
class _Remote(Exception):
    """The sibling failed in a way the pipeline does not name (it logged it): the call computes locally."""


def _pack_error(exc: BaseException) -> tuple:
    if isinstance(exc, (InvalidArgument, NotFound)):
        return (type(exc).__name__, exc.field, exc.message)
    if isinstance(exc, DeadlineExceeded):
        return ("DeadlineExceeded", exc.stage, "")
    if isinstance(exc, NoBundle):
        return ("NoBundle", "", "")
    return ("Internal", type(exc).__name__, "")


def _unpack_error(kind: str, a: str, b: str) -> BaseException:
    if kind == "InvalidArgument":
        return InvalidArgument(a, b)
    if kind == "NotFound":
        return NotFound(a, b)
    if kind == "DeadlineExceeded":
        return DeadlineExceeded(a)
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
Compute = Callable[[RecRequest], Awaitable[Result]]


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
        try:
            while True:
                call_id, req = await _read_frame(reader)
                t = asyncio.ensure_future(self._one(call_id, req, writer))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, EOFError, asyncio.CancelledError):
            pass                            # the sibling went away, or this worker is closing
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one(self, call_id: int, req: RecRequest, writer: asyncio.StreamWriter) -> None:
        try:
            reply = (call_id, True, (await self.compute(req), os.getpid()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 -- sent back, mapped to a status code at the front
            if not isinstance(exc, (InvalidArgument, NotFound, DeadlineExceeded, NoBundle)):
                log.exception("forwarded Recommend failed")
            reply = (call_id, False, _pack_error(exc))
        if not writer.is_closing():
            writer.write(_frame(reply))


# -- the sending side -------------------------------------------------------------------------------------
class Peer:
    """This worker's connection to one sibling, opened on first use and again after a failure."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future] = {}
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
                call_id, ok, payload = await _read_frame(reader)
                fut = self._pending.pop(call_id, None)
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result(payload)
                else:
                    fut.set_exception(_unpack_error(*payload))
        except (asyncio.IncompleteReadError, ConnectionError, EOFError, OSError):
            pass
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(PeerUnavailable(f"{self.path.name} went away"))
            self._pending.clear()

    async def recommend(self, req: RecRequest) -> tuple[Result, int]:
        """The sibling's ``(result, pid)`` for ``req``; its pipeline errors raised, PeerUnavailable when it
        cannot be reached or goes away."""
        writer = await self._connect()
        call_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        try:
            writer.write(_frame((call_id, req)))
            return await fut
        finally:
            self._pending.pop(call_id, None)


class Sharing:
    """One worker's part in work sharing: publishes its load, serves its siblings, forwards to them."""

    def __init__(self, board: Board, me: int, directory: str | os.PathLike):
        self.board = board
        self.me = me
        self.directory = Path(directory)
        self.peers = {w: Peer(socket_path(directory, w)) for w in range(board.n) if w != me}
        self._server: ShareServer | None = None
        self._next = itertools.count()
        self._skip_until = {w: 0.0 for w in self.peers}
        self._serving = False
        self._load = 0
        self.forwarded = 0

    def publish(self, load: int) -> None:
        """This worker's compute-slot load (shown to siblings only while serving)."""
        self._load = load
        if self._serving:
            self.board.set(self.me, load)

    def serving(self, on: bool) -> None:
        """Take siblings' calls (a bundle is loaded) or not (none yet, or draining)."""
        self._serving = on
        self.board.set(self.me, self._load if on else UNAVAILABLE)

    async def start(self, compute: Compute) -> None:
        self._server = ShareServer(socket_path(self.directory, self.me), compute)
        await self._server.start()

    async def close(self) -> None:
        self.serving(False)
        if self._server is not None:
            await self._server.close()

    def idle_sibling(self) -> int | None:
        """A serving sibling with nothing to compute, searched from a rotating start to spread the picks."""
        loads, n = self.board.loads, self.board.n
        now = asyncio.get_running_loop().time()
        start = next(self._next)
        for j in range(n):
            w = (start + j) % n
            if w != self.me and loads[w] == 0 and self._skip_until[w] <= now:
                return w
        return None

    async def forward(self, req: RecRequest) -> tuple[Result, int] | None:
        """``(result, the sibling's pid)`` from an idle sibling, or None when none is idle or the one picked
        could not take the call (the caller then computes locally). Pipeline errors of the sibling are
        raised."""
        w = self.idle_sibling()
        if w is None:
            return None
        try:
            res, pid = await self.peers[w].recommend(req)
        except (PeerUnavailable, _Remote) as exc:
            if isinstance(exc, PeerUnavailable):
                self._skip_until[w] = asyncio.get_running_loop().time() + RETRY_S
            return None
        self.forwarded += 1
        return res, pid


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
