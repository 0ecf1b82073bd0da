"""The server: a supervisor forking N worker processes that share one port with SO_REUSEPORT.

Workers are forked BEFORE any gRPC object exists (call :func:`create_server` before creating channels or
servers in the calling process). Each worker, after fork, limits native thread pools to one thread, opens
the event store, LMDB tables, hnswlib and LightGBM itself, and starts its own gRPC server on an asyncio
event loop (``grpc.aio``: health, reflection, a bound on calls in flight, message size limits, optional
TLS/mTLS and bearer tokens). Requests compute on that one loop, one at a time, in the order
:mod:`recserve.scheduling` gives them; a Recommend that would wait runs on an idle sibling worker when
there is one (:mod:`recserve.sharing`); event-store writes and bundle loads run in a small thread pool. The
worker watches ``<root>/CURRENT``: a new version is loaded and verified in that pool, warmed up, then
swapped in atomically; a bad bundle is refused and the old one keeps serving. Health is SERVING only while a
valid bundle is loaded. SIGTERM drains: health goes NOT_SERVING, the worker keeps serving for
``drain_delay`` seconds (0 by default), then new calls are refused and in-flight calls finish within
``grace`` seconds. With ``workers=0`` the same worker runs inside the calling process (tests, tools).

Fork hazard: also call :func:`create_server` before the calling process has used OpenMP (LightGBM training,
implicit ALS): a forked child that touches an inherited OpenMP pool can hang. Processes that train first
(``recserve.demo``, the tests) run the server as a subprocess, ``python -m recserve.cli serve``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

from recserve.config import ServeConfig, bundle_root, validate
from recserve.live import BundleHolder
from recserve.metrics import Metrics

log = logging.getLogger("recserve.server")
SERVICE_NAME = "recserve.v1.Recommender"


# -- logging -------------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
             "pid": record.process, "msg": record.getMessage()}
        for k in ("event", "version", "port", "workers", "error", "request_id", "method", "code"):
            if hasattr(record, k):
                d[k] = getattr(record, k)
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d)


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter())
    root.handlers[:] = [h]
    root.setLevel(level)


# -- one worker ----------------------------------------------------------------------------------------
def _limit_threads() -> None:
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # noqa: BLE001
        pass


def worker_cpus(setting: str, workers: int) -> list[int] | None:
    """The CPU of each worker slot, or None for no pinning. ``auto`` pins when there are at least as many
    allowed CPUs as workers (and more than one worker): each worker then keeps its caches on one core
    instead of migrating between them; ``off`` leaves placement to the kernel; ``"0,2"`` lists CPUs."""
    setting = (setting or "auto").strip().lower()
    if setting == "off":
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if setting == "auto":
        if workers < 2 or workers > len(allowed):
            return None
        return allowed[:workers]
    try:
        cpus = [int(c) for c in setting.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"cpu_affinity must be auto, off or a CPU list like 0,1; got {setting!r}") from None
    if not cpus or any(c not in allowed for c in cpus):
        raise ValueError(f"cpu_affinity {setting!r}: CPUs must be among the allowed {allowed}")
    return [cpus[i % len(cpus)] for i in range(max(workers, 1))]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A worker's event loop: uvloop's where it is installed (its loop, written in C on libuv, costs less
    per call than asyncio's: on the 100k-item bundle, closed-loop throughput 767-815 calls/s in six runs
    against 674-696 in four with asyncio's), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main):
    """Run the coroutine ``main`` to its end on a new :func:`new_event_loop`, close the loop, return its
    result."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


class Worker:
    """One gRPC server over the shared port on the calling thread's asyncio event loop, with its own
    bundle, event store and reload watcher: ``await start()``, then ``await stop()``."""

    def __init__(self, cfg: ServeConfig, port: int, metrics: Metrics | None = None, sharing=None):
        from recserve.events import EventStore

        self.cfg = cfg
        self.metrics = metrics
        self.sharing = sharing          # recserve.sharing.Sharing of a forked worker, or None
        self.port = port                # the port asked for; the bound one once started
        root = bundle_root(cfg.bundle)
        self.store = EventStore(cfg.events_dir or root / "events", map_size=cfg.events_map_mb << 20,
                                per_user=cfg.events_per_user)
        self.holder = BundleHolder(cfg.bundle, cfg, self.store, metrics)
        # event-store writes (fsync) and bundle loads: blocking work that must not stall the event loop
        self.io = futures.ThreadPoolExecutor(max_workers=max(cfg.threads, 1), thread_name_prefix="recserve-io")
        self._watcher: asyncio.Task | None = None

    async def start(self) -> int:
        """Bind, load the bundle CURRENT names (if any), then serve; NOT_SERVING until one is live."""
        import grpc
        from grpc_health.v1 import health_pb2_grpc
        from grpc_health.v1._async import HealthServicer
        from grpc_reflection.v1alpha import reflection

        from recserve.service import AuthInterceptor, RecommenderService, load_tokens
        from recserve.v1 import recommender_pb2, recommender_pb2_grpc

        cfg = self.cfg
        self.health = HealthServicer()
        await self._set_health(False)
        interceptors = [AuthInterceptor(load_tokens(cfg.tokens_file), self.metrics)] if cfg.tokens_file else []
        opts = [("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes)]
        self.server = grpc.aio.server(interceptors=interceptors, options=opts)
        self.service = RecommenderService(self.holder, self.metrics, self.io, cfg.max_concurrent_rpcs,
                                          self.sharing)
        recommender_pb2_grpc.add_RecommenderServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name,
                 "grpc.health.v1.Health", reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        addr = f"{cfg.host}:{self.port}"
        if cfg.tls_cert:
            key = Path(cfg.tls_key).read_bytes()
            cert = Path(cfg.tls_cert).read_bytes()
            ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                require_client_auth=ca is not None)
            bound = self.server.add_secure_port(addr, creds)
        else:
            bound = self.server.add_insecure_port(addr)
        if bound == 0:
            raise RuntimeError(f"cannot bind {addr}")
        self.port = bound
        # the bundle first: the port is bound but not listening yet, so a worker that joins a serving
        # group (a respawn) takes no call before it can answer; its siblings forward none to it either
        await self._reload()
        if self.sharing is not None:
            await self.sharing.start(self.service.compute_recommend)
        await self.server.start()
        if cfg.reload_interval > 0:
            self._watcher = asyncio.ensure_future(self._watch())
        return bound

    async def _set_health(self, serving: bool) -> None:
        from grpc_health.v1 import health_pb2

        st = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", st)
        await self.health.set(SERVICE_NAME, st)

    async def _reload(self) -> None:
        """Load the version CURRENT names if it changed (in a thread); SERVING once one is live."""
        if await asyncio.get_running_loop().run_in_executor(self.io, self.holder.try_reload):
            await self._set_health(True)
            if self.sharing is not None:
                self.sharing.serving(True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_interval)
            await self._reload()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, keep serving for ``drain_delay`` seconds (load balancers that poll health
        stop routing here), then refuse new calls and let in-flight ones finish within ``grace`` seconds."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self.sharing is not None:
            self.sharing.serving(False)     # siblings stop forwarding here; calls already taken finish
        await self.health.enter_graceful_shutdown()
        if self.cfg.drain_delay > 0:
            await asyncio.sleep(self.cfg.drain_delay)
        grace = self.cfg.grace if grace is None else grace
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(self.server.stop(grace))     # no new calls from here on
        # streams (a health Watch) end only when their client closes them: once none of our own calls
        # is in flight, what is left is cancelled instead of holding the drain for the whole grace period
        end = loop.time() + grace
        while self.service.in_flight > 0 and loop.time() < end and not stopping.done():
            await asyncio.sleep(0.01)
        if not stopping.done():
            await self.server.stop(0)
        await stopping
        if self.sharing is not None:
            await self.sharing.close()
        self.io.shutdown(wait=True)


class InProcessWorker(Worker):
    """A :class:`Worker` on an event loop in a thread of the calling process (``create_server`` with
    ``workers=0``); ``stop()`` is called from any other thread."""

    def __init__(self, cfg: ServeConfig, port: int, metrics: Metrics | None = None):
        super().__init__(cfg, port, metrics)
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="recserve-grpc", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self._loop).result()

    def stop(self, grace: float | None = None) -> None:     # type: ignore[override]
        try:
            asyncio.run_coroutine_threadsafe(Worker.stop(self, grace), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def _worker_main(cfg: ServeConfig, port: int, ready_fd: int, cpu: int | None = None, sharing=None) -> None:
    """Entry point of a forked worker process; never returns."""
    code, ready = 0, False
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})     # before any thread exists: every later thread inherits it
        _limit_threads()
        metrics = Metrics() if cfg.metrics_port else None
        w = Worker(cfg, port, metrics, sharing)

        async def main() -> None:
            nonlocal ready
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await w.start()
            ready = True
            try:
                os.write(ready_fd, b"1" if w.holder.current is not None else b"0")
            except OSError:            # the supervisor stopped listening: serve anyway
                pass
            os.close(ready_fd)
            await stop.wait()
            log.info("draining", extra={"event": "drain"})
            await w.stop()

        run(main())
    except BaseException as exc:  # noqa: BLE001
        log.exception("worker failed")
        code = 1
        if not ready:                  # tell the supervisor why, in one line
            reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"E" + reason.encode(errors="replace")[:400])
    finally:
        logging.shutdown()
        os._exit(code)


# -- the supervisor ------------------------------------------------------------------------------------
def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: picks the free port and keeps it ours while workers bind it.

    SO_REUSEPORT would also let a second server (another ``recserve serve`` on the same port) bind beside
    ours and take half of the connections: a bind without it first, which fails while any socket holds
    the port (connections in TIME_WAIT aside), makes a port in use an error."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(fam, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


class Supervisor:
    """Handle on the worker processes: ``stop()`` drains them (SIGTERM), ``wait()`` blocks until they exit."""

    RESPAWN_MIN_S = 0.5     # delay before replacing a crashed worker; doubles while workers keep
    RESPAWN_MAX_S = 30.0    # dying young (within STABLE_S of their start), up to this
    STABLE_S = 10.0

    def __init__(self, cfg: ServeConfig, port: int, sock: socket.socket):
        self.cfg, self.port, self._sock = cfg, port, sock
        self.pids: list[int] = []
        self._started: dict[int, float] = {}
        self._pending: dict[int, int] = {}      # respawned pid -> read end of its ready pipe
        self._due: list[tuple[float, int]] = []  # (time, slot) at which to spawn a replacement
        self._slot: dict[int, int] = {}          # pid -> worker slot (its CPU when pinned)
        self._cpus = worker_cpus(cfg.cpu_affinity, cfg.workers)
        self._backoff = self.RESPAWN_MIN_S
        self._stopping = False
        self._metrics_dir: str | None = None
        self._lock = threading.Lock()
        self._group = None                       # work sharing: a board and sockets, inherited by every fork
        if cfg.share_work and cfg.workers >= 2:
            from recserve.sharing import Group

            self._group = Group(cfg.workers)

    def _spawn(self, slot: int) -> tuple[int, int]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            sharing = None if self._group is None else self._group.member(slot)
            _worker_main(self.cfg, self.port, w, None if self._cpus is None else self._cpus[slot], sharing)
        os.close(w)
        self._started[pid] = time.monotonic()
        self._slot[pid] = slot
        return pid, r

    def monitor(self) -> None:
        """Replace workers that died (never while stopping), with a growing delay while replacements
        keep dying young, so a worker that cannot start does not spin the machine. Non-blocking."""
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                return
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
                lived = now - self._started.pop(pid, now)
                self._backoff = (min(self._backoff * 2, self.RESPAWN_MAX_S) if lived < self.STABLE_S
                                 else self.RESPAWN_MIN_S)
                self._due.append((now + self._backoff, self._slot.pop(pid, 0)))
                r = self._pending.pop(pid, None)
                if r is not None:
                    os.close(r)
                log.error("worker exited, respawning", extra={"event": "respawn", "error": f"pid {pid} status "
                          f"{status}, after {lived:.1f} s; replacement in {self._backoff:.1f} s"})
            for due in [d for d in self._due if d[0] <= now]:
                self._due.remove(due)
                pid, r = self._spawn(due[1])
                self.pids.append(pid)
                self._pending[pid] = r
            for pid, r in list(self._pending.items()):
                if select.select([r], [], [], 0)[0]:
                    msg = os.read(r, 512)
                    os.close(r)
                    del self._pending[pid]
                    if msg[:1] == b"1":
                        log.info("worker respawned", extra={"event": "respawned"})
                    elif msg[:1] == b"0":
                        log.warning("respawned worker has no bundle", extra={"event": "respawned",
                                                                             "error": f"pid {pid}"})
                    else:
                        log.error("respawned worker failed to start", extra={
                            "event": "respawn_failed", "error": msg[1:].decode(errors="replace")})

    def start(self, timeout: float = 120.0) -> None:
        if self.cfg.metrics_port:
            self._metrics_dir = tempfile.mkdtemp(prefix="recserve-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        pipes = []
        for slot in range(self.cfg.workers):
            pid, r = self._spawn(slot)
            self.pids.append(pid)
            pipes.append(r)
        deadline = time.monotonic() + timeout
        for r in pipes:
            left = deadline - time.monotonic()
            msg = os.read(r, 512) if select.select([r], [], [], max(left, 0))[0] else None
            os.close(r)
            if msg is None or msg[:1] not in (b"0", b"1"):
                self.stop(0)
                why = (f"no answer within {timeout:g} s" if msg is None else
                       msg[1:].decode(errors="replace") if msg[:1] == b"E" else "it exited")
                raise RuntimeError(f"a worker failed to start: {why}")
        if self.cfg.metrics_port:
            from prometheus_client import CollectorRegistry, multiprocess, start_http_server

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            start_http_server(self.cfg.metrics_port, addr=self.cfg.host, registry=reg)
        log.info("serving", extra={"event": "serving", "port": self.port, "workers": self.cfg.workers})

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM every worker (each drains in-flight calls) and wait for them."""
        with self._lock:
            self._stopping = True
            for r in self._pending.values():
                os.close(r)
            self._pending.clear()
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
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
            self.pids.remove(pid)
        if not self.pids:
            self._sock.close()
            if self._group is not None:
                self._group.remove()
            if self._metrics_dir:
                import shutil

                shutil.rmtree(self._metrics_dir, ignore_errors=True)


def create_server(address: str = "127.0.0.1:0", bundle: str = "", cfg: ServeConfig | None = None, **kw):
    """Start serving ``bundle`` (a bundle root holding CURRENT, or one version directory) on ``address``.

    Returns ``(server, port)``: a :class:`Supervisor` over ``cfg.workers`` forked processes, or with
    ``workers=0`` an :class:`InProcessWorker`. Both have ``stop(grace)``. A CURRENT naming an invalid
    bundle fails here; a root without CURRENT starts NOT_SERVING and waits for one.
    """
    import dataclasses

    cfg = dataclasses.replace(cfg or ServeConfig(), **kw)
    if bundle:
        cfg.bundle = str(bundle)
    host, _, port = address.rpartition(":")
    cfg.host, cfg.port = host.strip("[]") or "127.0.0.1", int(port)
    if not cfg.bundle:
        raise ValueError("a bundle directory is required")
    worker_cpus(cfg.cpu_affinity, cfg.workers)      # a bad setting fails here, before anything is forked
    validate(cfg)
    if cfg.tokens_file:
        from recserve.service import load_tokens

        load_tokens(cfg.tokens_file)                # a malformed file fails here, not in every worker
    holder = BundleHolder(cfg.bundle, cfg, None)
    if not holder.root.is_dir():
        raise ValueError(f"bundle: {holder.root} is not a directory")
    key = holder._key()
    if key is not None:  # fail fast on a bad bundle, before forking (sha256 only, no hnswlib/LightGBM)
        from recserve import bundle as B

        B.verify(holder.directory(key))
    else:
        log.warning("no bundle yet: NOT_SERVING until %s/CURRENT names one", holder.root,
                    extra={"event": "waiting_for_bundle"})
    if cfg.workers <= 0:
        metrics = None
        if cfg.metrics_port:
            from prometheus_client import start_http_server

            metrics = Metrics()
            start_http_server(cfg.metrics_port, addr=cfg.host)
        w = InProcessWorker(cfg, cfg.port, metrics)
        return w, w.port
    sock = _reserve_port(cfg.host, cfg.port)
    sup = Supervisor(cfg, sock.getsockname()[1], sock)
    sup.start()
    return sup, sup.port


def serve_forever(cfg: ServeConfig) -> int:
    """The ``recserve serve`` main loop: start, then drain on SIGTERM/SIGINT."""
    configure_logging(cfg.log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server, port = create_server(f"{cfg.host}:{cfg.port}", cfg=cfg)
    print(json.dumps({"event": "listening", "port": port, "pid": os.getpid()}), flush=True)
    while not stop.wait(0.25):
        if isinstance(server, Supervisor):
            server.monitor()
    server.stop()
    log.info("stopped", extra={"event": "stopped"})
    return 0
