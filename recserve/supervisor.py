"""The supervisor: N forked worker processes that share one port with SO_REUSEPORT, replaced when they die.

Each worker reports to the supervisor over a pipe of its own, one JSON line per message: ``{"ready": B}``
once it listens (B: a bundle is live), ``{"error": reason}`` when it cannot start, and ``{"loaded": key}``
or ``{"refused": key, "stamp": [...]}`` for every bundle it loads or refuses. The supervisor keeps the
version its workers serve and the last one they refused; a replacement worker inherits both, so it serves
what its siblings serve: it does not load a version they refused while its files are unchanged (a bundle
published while its files were still being copied, say), and when CURRENT names one, it loads theirs. Once
the version's files change (the copy finished), every worker tries it again at its next poll. A
replacement that can load neither exits before it listens, and is retried with the usual back-off.

Workers die with the supervisor (Linux's parent-death signal sends them SIGTERM, and they drain), so a
supervisor killed by SIGKILL leaves no worker holding the port. SIGHUP asks every worker to look at
CURRENT now, without waiting for the next poll.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
import tempfile
import threading
import time

from recserve.config import ServeConfig
from recserve.metrics import Metrics
from recserve.server import Worker, _limit_threads, run, worker_cpus

log = logging.getLogger("recserve.server")
_PR_SET_PDEATHSIG = 1


# -- a worker's reports --------------------------------------------------------------------------------
class _Reports:
    """The worker's end of its pipe: one JSON line per message, never blocking the worker."""

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)

    def send(self, **msg) -> None:
        """``msg``'s text values are cut to 400 characters: a line under PIPE_BUF is written whole, even from
        the loading thread, and a reader never sees half of one."""
        msg = {k: v[:400] if isinstance(v, str) else v for k, v in msg.items()}
        try:
            os.write(self.fd, (json.dumps(msg) + "\n").encode())
        except OSError:             # the supervisor is gone or not reading (a full pipe): serve anyway
            pass


class _Inbox:
    """The supervisor's end of one worker's pipe."""

    def __init__(self, fd: int):
        self.fd, self._buf, self.closed = fd, b"", False

    def read(self, timeout: float = 0.0) -> list[dict]:
        """The messages that arrived (waiting up to ``timeout`` for the first); sets ``closed`` at EOF."""
        out: list[dict] = []
        while not self.closed and select.select([self.fd], [], [], timeout)[0]:
            data = os.read(self.fd, 65536)
            if not data:
                self.close()
                break
            *lines, self._buf = (self._buf + data).split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
            timeout = 0.0
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


def _find_prctl():
    """libc's ``prctl`` (Linux), looked up once in the supervisor, not after a fork; None elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies (Linux's parent-death signal; a no-op elsewhere). The
    signal follows the *thread* that forked: the supervisor forks from the thread that called
    ``create_server`` (``recserve serve``: the main thread)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:      # it died before the call above: nothing to serve for
        os._exit(1)


def _worker_main(cfg: ServeConfig, port: int, report_fd: int, cpu: int | None = None, sharing=None,
                 inherit: tuple | None = None, parent: int = 0, secrets=None) -> None:
    """Entry point of a forked worker process; never returns."""
    code, ready = 0, False
    try:
        # the supervisor's handlers were inherited: SIGTERM kills until the event loop takes it over (a
        # worker waiting for the event store's write lock, GIL held, still stops); a SIGTERM to the whole
        # group while workers start is a stop of the supervisor too (StartInterrupted, serve_forever).
        # Held across the fork (Supervisor._spawn), one sent meanwhile arrives here
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)    # until the worker listens
        reports = _Reports(report_fd)
    except BaseException:  # noqa: BLE001 -- never return into the supervisor's code
        os._exit(1)
    try:
        if parent:
            _die_with_parent(parent)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})     # before any thread exists: every later thread inherits it
        _limit_threads()
        metrics = Metrics() if cfg.metrics_port else None
        w = Worker(cfg, port, metrics, sharing, report=lambda outcome, key, stamp: reports.send(
            **{outcome: key, "stamp": list(stamp)}), inherit=inherit, secrets=secrets)

        async def main() -> None:
            nonlocal ready
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            await w.start()
            ready = True
            reports.send(ready=w.holder.current is not None, reason=w.holder.last_error)
            await w.reload_now()    # CURRENT once more: a SIGHUP sent while the bundle loaded was ignored

            def hup() -> None:
                if not stop.is_set():
                    asyncio.ensure_future(w.reload_now(retry=True))

            loop.add_signal_handler(signal.SIGHUP, hup)    # kept while draining (removed, it would kill)
            await stop.wait()
            log.info("draining", extra={"event": "drain"})
            await w.stop()

        run(main())
    except BaseException as exc:  # noqa: BLE001
        log.exception("worker failed")
        code = 1
        if not ready:                  # tell the supervisor why, in one line
            reports.send(error=((str(exc).splitlines() or [""])[0] or type(exc).__name__)[:400])
    finally:
        logging.shutdown()
        os._exit(code)


# -- the supervisor ------------------------------------------------------------------------------------
def remove_stale_dirs(tmp: str | None = None) -> list[str]:
    """Remove the private directories (``recserve-share-<pid>-*``, ``recserve-metrics-<pid>-*``) of this
    user's supervisors that were killed before they could (their pid is gone); returns what was removed."""
    import re
    import shutil

    gone = []
    tmp = tmp or tempfile.gettempdir()
    for name in os.listdir(tmp):
        m = re.fullmatch(r"recserve-(share|metrics)-(\d+)-\w+", name)
        path = os.path.join(tmp, name)
        try:
            if not m or not os.path.isdir(path) or os.stat(path).st_uid != os.getuid():
                continue
        except OSError:                         # removed meanwhile (by its own supervisor, or another start)
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue                            # its supervisor still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        gone.append(name)
    return gone


def probe_port(host: str, port: int, what: str) -> None:
    """Raise ``OSError`` naming ``what`` when ``host:port`` is taken (a bind without SO_REUSEPORT fails while
    any socket holds the port, connections in TIME_WAIT aside)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot {what} on {host}:{port}: {exc.strerror}") from None


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: picks the free port and keeps it ours while workers bind it.

    SO_REUSEPORT would also let a second server (another ``recserve serve`` on the same port) bind beside
    ours and take half of the connections: :func:`probe_port` first makes a port in use an error."""
    if port:
        probe_port(host, port, "listen")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


def how_it_ended(status: int) -> str:
    """A child's wait status in words: "exit code 1", "killed by SIGKILL" (-1: already reaped elsewhere)."""
    if status < 0:
        return "ended (status unknown)"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


class StartInterrupted(RuntimeError):
    """A worker was stopped by a signal while it started: a stop of the whole process group (systemd's,
    ``kill -TERM -PGID``), which ``serve_forever`` takes for a stop when it got the signal too."""


def _ended(pid: int, timeout: float = 1.0) -> str:
    """How child ``pid``, whose report pipe closed, ended (reaped here), waiting at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return how_it_ended(-1)
        if done:
            return how_it_ended(status)
        if time.monotonic() > deadline:
            return "still running"
        time.sleep(0.02)


class Supervisor:
    """Handle on the worker processes: ``stop()`` drains them (SIGTERM), ``wait()`` blocks until they exit."""

    RESPAWN_MIN_S = 0.5     # delay before replacing a crashed worker; doubles while one slot's replacements
    RESPAWN_MAX_S = 30.0    # keep dying young (within STABLE_S of their start), up to this
    STABLE_S = 10.0

    def __init__(self, cfg: ServeConfig, port: int, sock: socket.socket, secrets=None):
        """``secrets``: :class:`recserve.server.Secrets`, read once and handed to every worker."""
        self.cfg, self.port, self._sock, self._secrets = cfg, port, sock, secrets
        self.pids: list[int] = []
        self._started: dict[int, float] = {}
        self._inbox: dict[int, _Inbox] = {}     # pid -> the read end of its report pipe
        self._replacements: set[int] = set()    # replacements that have not said "ready" yet
        self._serving: str | None = None        # the version the workers last loaded
        self._refused: tuple | None = None      # (key, stamp) they last refused
        self._due: list[tuple[float, int]] = []  # (time, slot) at which to spawn a replacement
        self._slot: dict[int, int] = {}          # pid -> worker slot (its CPU when pinned)
        self._cpus = worker_cpus(cfg.cpu_affinity, cfg.workers)
        self._backoff: dict[int, float] = {}    # slot -> the delay before its last replacement
        self._stopping = False
        self._metrics_dir: str | None = None
        self._metrics_http = None                # the metrics HTTP server (its socket is closed in workers)
        self._lock = threading.Lock()
        self._group = None                       # work sharing: a board and sockets, inherited by every fork
        if cfg.share_work and cfg.workers >= 2:
            from recserve.sharing import Group

            self._group = Group(cfg.workers)

    def _spawn(self, slot: int, replacement: bool = False) -> int:
        r, w = os.pipe()
        inherit = (self._serving, self._refused) if replacement else None
        parent = os.getpid()
        # SIGTERM held across the fork: until the child sets its own disposition (the first lines of
        # _worker_main), the supervisor's inherited handler would only set the child's copy of its flag
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            pid = os.fork()
        finally:
            if os.getpid() == parent:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if pid == 0:
            try:
                os.close(r)
                for inbox in self._inbox.values():      # the siblings' pipes are not this worker's
                    if not inbox.closed:
                        os.close(inbox.fd)
                if self._metrics_http is not None:      # nor is the supervisor's metrics port
                    self._metrics_http.socket.close()
                sharing = None if self._group is None else self._group.member(slot)
            except BaseException:  # noqa: BLE001 -- never return into the supervisor's code
                os._exit(1)
            _worker_main(self.cfg, self.port, w, None if self._cpus is None else self._cpus[slot], sharing,
                         inherit, parent, self._secrets)
        os.close(w)
        self._started[pid] = time.monotonic()
        self._slot[pid] = slot
        self._inbox[pid] = _Inbox(r)
        self.pids.append(pid)
        return pid

    def _take(self, pid: int, msg: dict) -> None:
        """One report of worker ``pid``."""
        if "loaded" in msg:
            self._serving = msg["loaded"]
            if self._refused and self._refused[0] == self._serving:
                self._refused = None
        elif "refused" in msg and msg["refused"] != self._serving:
            # (a refusal of the version a sibling serves, read after its "loaded" or one worker's
            # passing failure, must not keep replacements from the version that works)
            self._refused = (msg["refused"], tuple(msg.get("stamp", ())))
        elif pid in self._replacements and ("ready" in msg or "error" in msg):
            self._replacements.discard(pid)
            if msg.get("ready"):
                log.info("worker respawned", extra={"event": "respawned"})
            elif "ready" in msg:
                log.warning("respawned worker has no bundle", extra={"event": "respawned",
                                                                     "error": f"pid {pid}"})
            else:
                log.error("respawned worker failed to start", extra={
                    "event": "respawn_failed", "error": msg["error"]})

    def reload_now(self, retry: bool = True) -> None:
        """Ask every worker to look at CURRENT now, a version they refused included (SIGHUP: ``retry``
        is always so for workers in their own processes)."""
        with self._lock:
            for pid in self.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)

    def monitor(self) -> None:
        """Replace workers that died (never while stopping), with a growing delay while replacements
        keep dying young, so a worker that cannot start does not spin the machine. Non-blocking."""
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                return
            for pid, inbox in list(self._inbox.items()):
                for msg in inbox.read():
                    self._take(pid, msg)
            for pid in list(self.pids):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, -1
                if not done:
                    continue
                self.pids.remove(pid)
                if self._group is not None:
                    self._group.gone(self._slot.get(pid, 0))
                if self._metrics_dir:       # its live gauges (the bundle version) die with it
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(pid, self._metrics_dir)
                lived, slot = now - self._started.pop(pid, now), self._slot.pop(pid, 0)
                # per slot: a replacement that dies young waits twice as long as the one before it; the
                # first death of a slot, or of a worker that lived STABLE_S, waits RESPAWN_MIN_S
                last = self._backoff.get(slot)
                delay = (min(last * 2, self.RESPAWN_MAX_S) if last is not None and lived < self.STABLE_S
                         else self.RESPAWN_MIN_S)
                self._backoff[slot] = delay
                self._due.append((now + delay, slot))
                self._replacements.discard(pid)
                inbox = self._inbox.pop(pid, None)
                if inbox is not None:
                    for msg in inbox.read():    # what it said before it died (why it could not start)
                        self._take(pid, msg)
                    inbox.close()
                log.error("worker exited, respawning", extra={"event": "respawn", "error": f"pid {pid} "
                          f"{how_it_ended(status)}, after {lived:.1f} s; replacement in {delay:.1f} s"})
            for due in [d for d in self._due if d[0] <= now]:
                self._due.remove(due)
                self._replacements.add(self._spawn(due[1], replacement=True))

    def start(self, timeout: float = 120.0, require_bundle: bool = False) -> None:
        """Start the workers and wait until each listens. ``require_bundle`` (CURRENT named a version that
        verified): a worker that could not load it (it failed at load or warm-up) fails the start with
        ``ValueError`` and its reason, rather than a server that listens NOT_SERVING."""
        if self.cfg.metrics_port:
            self._metrics_dir = tempfile.mkdtemp(prefix=f"recserve-metrics-{os.getpid()}-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        for slot in range(self.cfg.workers):
            self._spawn(slot)
        deadline = time.monotonic() + timeout
        for pid in list(self.pids):
            inbox, why, refused = self._inbox[pid], None, None
            while why is None:
                left = deadline - time.monotonic()
                msgs = inbox.read(max(left, 0))
                for msg in msgs:
                    self._take(pid, msg)
                    if "ready" in msg:
                        why = ""
                        if require_bundle and not msg["ready"]:
                            refused = msg.get("reason") or "no reason given"
                    elif "error" in msg:
                        why = msg["error"]
                if why is None and inbox.closed:
                    ended = _ended(pid)
                    if ended == "killed by SIGTERM":     # workers ignore SIGINT
                        self.stop(0)
                        raise StartInterrupted(f"a worker failed to start: it was {ended}")
                    why = f"it ended before it was ready ({ended})"
                elif why is None and not msgs and time.monotonic() >= deadline:
                    why = f"no answer within {timeout:g} s"
            if why:
                self.stop(0)
                raise RuntimeError(f"a worker failed to start: {why}")
            if refused:
                self.stop(0)
                raise ValueError(f"bundle refused: {refused}")
        if self.cfg.metrics_port:
            from prometheus_client import CollectorRegistry, multiprocess, start_http_server

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            try:
                self._metrics_http, _ = start_http_server(self.cfg.metrics_port, addr=self.cfg.host, registry=reg)
            except OSError as exc:
                self.stop(0)
                raise OSError(exc.errno, f"cannot serve metrics on {self.cfg.host}:{self.cfg.metrics_port}: "
                                         f"{exc.strerror}") from None
        log.info("serving", extra={"event": "serving", "port": self.port, "workers": self.cfg.workers})

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every worker (each drains in-flight calls) and wait for them."""
        with self._lock:
            self._stopping = True
            for inbox in self._inbox.values():
                inbox.close()
            self._inbox.clear()
            for pid in self.pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.wait((self.cfg.grace if grace is None else grace) + self.cfg.drain_delay + 10)

    def wait(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for pid in list(self.pids):
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG if deadline else 0)
                except ChildProcessError:
                    break
                if done:
                    break
                if deadline and time.monotonic() > deadline:
                    log.warning("worker %d had not exited %.1f s after its SIGTERM: killed with SIGKILL", pid,
                                timeout, extra={"event": "worker_killed"})
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
            self.pids.remove(pid)
        if not self.pids:
            for inbox in self._inbox.values():
                inbox.close()
            self._inbox.clear()
            if self._metrics_http is not None:
                self._metrics_http.shutdown()
                self._metrics_http.server_close()
                self._metrics_http = None
            self._sock.close()
            if self._group is not None:
                self._group.remove()
            if self._metrics_dir:
                import shutil

                shutil.rmtree(self._metrics_dir, ignore_errors=True)

