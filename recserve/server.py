"""The server: one worker (a gRPC server on an event loop, over the live bundle), and ``create_server``,
which starts N of them under a supervisor (:mod:`recserve.supervisor`) sharing one port with SO_REUSEPORT.

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
``drain_delay`` seconds (0 by default), takes the calls gRPC has already received, then new calls are
refused and in-flight calls finish within ``grace`` seconds. With ``workers=0`` the same worker runs inside
the calling process (tests, tools).

Fork hazard: also call :func:`create_server` before the calling process has used OpenMP (LightGBM training,
implicit ALS): a forked child that touches an inherited OpenMP pool can hang. Processes that train first
(``recserve.demo``, the tests) run the server as a subprocess, ``python -m recserve.cli serve``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from recserve.config import ServeConfig, bundle_root, debug_delay, keep_origin, sources, validate
from recserve.live import BundleHolder
from recserve.metrics import Metrics

log = logging.getLogger("recserve.server")
SERVICE_NAME = "recserve.v1.Recommender"
# calls and streams beyond the Recommender's bound and the health Watches' that gRPC still lets in
# (reflection streams, calls refused by the token check): past the sum, gRPC answers RESOURCE_EXHAUSTED
STREAM_ALLOWANCE = 64
# SIGTERM: before gRPC stops taking calls, the worker takes those already received until none has arrived
# for SETTLE_QUIET seconds (at most SETTLE_MAX, and at most half the grace period)
SETTLE_QUIET = 0.05
SETTLE_TURNS = 10
SETTLE_MAX = 2.0
STOP_MARGIN = 0.25      # s: the grace left below which the drain lets gRPC's own timer end it


@dataclass(frozen=True)
class Secrets:
    """What the server reads from files once, at start: the bearer tokens and the TLS key, certificate and
    client CA. Every worker serves with these, a replacement of a crashed worker included, so workers never
    disagree on who may call; a file edited or removed afterwards changes nothing until a restart."""
    tokens: dict | None = None
    tls: tuple[bytes, bytes, bytes | None] | None = None        # (key, certificate chain, client CA)

    @classmethod
    def read(cls, cfg: ServeConfig) -> "Secrets":
        from recserve.service import load_tokens

        tokens = load_tokens(cfg.tokens_file) if cfg.tokens_file else None
        tls = None
        if cfg.tls_cert:
            tls = (Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes(),
                   Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None)
        return cls(tokens, tls)


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
    root.setLevel(level.upper())


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
    setting = ("auto" if setting is None else setting).strip().lower()
    if not setting:
        raise ValueError("cpu_affinity must be auto, off or a CPU list like 0,1; got ''")
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

    def __init__(self, cfg: ServeConfig, port: int, metrics: Metrics | None = None, sharing=None, report=None,
                 inherit: tuple | None = None, secrets: Secrets | None = None):
        """``report`` and ``inherit``: see :class:`BundleHolder` (a forked worker's link to its supervisor);
        ``secrets``: read by :func:`create_server` (read here when not given)."""
        from recserve.events import EventStore

        self.cfg = cfg
        self.secrets = secrets if secrets is not None else Secrets.read(cfg)
        self.metrics = metrics
        self.sharing = sharing          # recserve.sharing.Sharing of a forked worker, or None
        self.port = port                # the port asked for; the bound one once started
        root = bundle_root(cfg.bundle)
        self.store = EventStore(cfg.events_dir or root / "events", map_size=cfg.events_map_mb << 20,
                                per_user=cfg.events_per_user)
        if metrics is not None:
            metrics.store_usage(*self.store.usage())
        self.holder = BundleHolder(cfg.bundle, cfg, self.store, metrics, report, inherit)
        self.replacement = inherit is not None and inherit[0] is not None
        # event-store writes (fsync): blocking work that must not stall the event loop
        self.io = futures.ThreadPoolExecutor(max_workers=max(cfg.threads, 1), thread_name_prefix="recserve-io")
        # bundle loads, in a thread of their own: never queued behind writes that wait for the store's lock
        self.loader = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="recserve-load")
        self._watcher: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._reload_lock = asyncio.Lock()
        self._draining = False                  # set by stop(): health and work sharing stay withdrawn

    async def start(self) -> int:
        """Bind, load the bundle CURRENT names (if any), then serve; NOT_SERVING until one is live."""
        import grpc
        from grpc_health.v1 import health_pb2_grpc

        from recserve import reflection
        from recserve.health import BoundedHealthServicer

        from recserve.service import AuthInterceptor, RecommenderService, add_to_server
        from recserve.v1 import recommender_pb2

        cfg = self.cfg
        self.health = BoundedHealthServicer(cfg.max_health_watches)
        await self._set_health(False)
        tokens = self.secrets.tokens
        interceptors = [AuthInterceptor(tokens, self.metrics)] if tokens is not None else []
        opts = [("grpc.so_reuseport", 1 if cfg.workers > 0 else 0),      # in-process: the port is its alone
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes)]
        # gRPC's own bound covers every call and stream, reflection's included: ours (the servicer's, with
        # its metrics and messages: reads and writes apart) and the health Watch bound come first; this one
        # is the backstop
        self.server = grpc.aio.server(interceptors=interceptors, options=opts,
                                      maximum_concurrent_rpcs=2 * cfg.max_concurrent_rpcs
                                      + cfg.max_health_watches + STREAM_ALLOWANCE)
        self.service = RecommenderService(self.holder, self.metrics, self.io, cfg.max_concurrent_rpcs,
                                          self.sharing, max_orphans=cfg.threads)
        self.service.max_response_bytes = cfg.max_message_bytes
        add_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(self.server, (recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name,
                                        "grpc.health.v1.Health"))
        # the bundle first, then the port: gRPC listens as soon as a port is added, and the kernel would
        # queue new connections for a worker that joins a serving group (a respawn) while it loads, or reset
        # them if it then cannot load; its siblings forward nothing to it meanwhile either
        await self._reload()
        if self.replacement and self.holder.current is None:
            raise RuntimeError(f"no bundle could be loaded ({self.holder.last_error}); not listening")
        addr = f"[{cfg.host}]:{self.port}" if ":" in cfg.host else f"{cfg.host}:{self.port}"     # IPv6 bracketed
        if self.secrets.tls is not None:
            key, cert, ca = self.secrets.tls
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                                require_client_auth=ca is not None)
            bound = self.server.add_secure_port(addr, creds)
        else:
            bound = self.server.add_insecure_port(addr)
        if bound == 0:
            raise RuntimeError(f"cannot bind {addr}")
        self.port = bound
        if self.sharing is not None:
            await self.sharing.start(self.service.compute_recommend)
        await self.server.start()
        if cfg.reload_interval > 0:
            self._watcher = asyncio.ensure_future(self._watch())
        if self.metrics is not None:
            self._flusher = asyncio.ensure_future(self._flush_metrics())
        return bound

    async def _flush_metrics(self) -> None:
        """The per-call observations written at least every FLUSH_S seconds: settle() runs as calls end, so
        a long call in flight (a slow Recommend, a write waiting for the store's lock) held the answered
        calls out of the scrape until it ended, and lost them if the worker was killed meanwhile."""
        while True:       # to when the last write is FLUSH_S old (a call that ended may have written since)
            await asyncio.sleep(max(self.metrics.written_at + self.metrics.FLUSH_S - time.monotonic(), 0.01))
            try:
                self.metrics.settle(idle=False)
            except Exception:  # noqa: BLE001 -- the next tick tries again; serving goes on
                log.exception("writing the metrics failed", extra={"event": "metrics_failed"})

    async def _set_health(self, serving: bool) -> None:
        from grpc_health.v1 import health_pb2

        st = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", st)
        await self.health.set(SERVICE_NAME, st)

    async def _reload(self, retry: bool = False) -> None:
        """Load the version CURRENT names if it changed (in a thread); SERVING once one is live. One load
        at a time: a poll and a SIGHUP that meet wait for each other. ``retry``: a version refused before
        is tried again even with its files unchanged (SIGHUP)."""
        async with self._reload_lock:
            # a load pauses this worker's loop (hnswlib's index load holds the GIL): siblings forward
            # nothing here meanwhile
            loading = self.sharing is not None and self.holder.pending(retry)
            if loading:
                self.sharing.loading(True)
            try:
                swapped = await asyncio.get_running_loop().run_in_executor(self.loader, self.holder.try_reload, retry)
            finally:
                if loading:
                    self.sharing.loading(False)
        if swapped and not self._draining:
            await self._set_health(True)
            if self.sharing is not None:
                self.sharing.serving(True)

    async def reload_now(self, retry: bool = False) -> None:
        """Look at CURRENT now, not at the next poll; ``retry`` (SIGHUP): try a refused version again."""
        await self._reload(retry)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_interval)
            try:
                await self._reload()
            except Exception:   # noqa: BLE001 -- the poller must outlive any one failed poll
                log.exception("reload poll failed", extra={"event": "reload_error"})

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, keep serving for ``drain_delay`` seconds (load balancers that poll health
        stop routing here), then refuse new calls and let in-flight ones finish within ``grace`` seconds."""
        self._draining = True               # a reload that finishes from here on changes nothing visible
        if self._watcher is not None:
            self._watcher.cancel()
        if self.sharing is not None:
            self.sharing.serving(False)     # siblings stop forwarding here; calls already taken finish
        await self.health.enter_graceful_shutdown()
        if self.cfg.drain_delay > 0:
            await asyncio.sleep(self.cfg.drain_delay)
        grace = self.cfg.grace if grace is None else grace
        loop = asyncio.get_running_loop()
        await self._settle(loop.time() + min(grace / 2, SETTLE_MAX))
        self.service.shutting_down = True   # a call cut off from here on was cut by the server, not its client
        stopping = asyncio.ensure_future(self.server.stop(grace))     # no new calls from here on
        # streams (a health Watch) end only when their client closes them: once none of our own calls
        # is in flight, what is left is cancelled instead of holding the drain for the whole grace period
        end = loop.time() + grace
        while self.service.in_flight > 0 and loop.time() < end and not stopping.done():
            await asyncio.sleep(0.01)
        # a second stop only to cut the grace short, well before the first one's own timer: grpc.aio's
        # shutdown is not safe against itself when its grace runs out while another call destroys the server
        # (a NULL server cancelled: a segfault); at the end of the grace the first stop cancels what is left
        if not stopping.done() and loop.time() < end - STOP_MARGIN:
            await self.server.stop(0)
        await stopping
        if self.sharing is not None:
            await self.sharing.close()
        # writes whose calls ended but which still wait for the event store's write lock: waited for within
        # the grace period, then left behind (a RecordEvents among them commits nothing: its call has ended)
        left = await self.service.orphans_settled(end - loop.time())
        if left:
            log.warning("%d writes whose calls had ended still waited for the event store at exit; abandoned",
                        left, extra={"event": "writes_abandoned"})
        self.io.shutdown(wait=not left, cancel_futures=True)
        self.loader.shutdown(wait=True)
        if self._flusher is not None:
            self._flusher.cancel()
            self.metrics.flush()


    async def _settle(self, until: float) -> None:
        """Take the calls gRPC has already received before it stops taking calls: while the loop was busy
        computing, calls queue in gRPC without a handler, and ``server.stop`` would cancel them. Returns
        once no call has started for SETTLE_QUIET seconds and SETTLE_TURNS turns of the loop (a loop held by
        a computing call gives gRPC's queued calls their turn between ours), or at ``until``. Calls in
        flight do not hold it: they finish within the grace period while new ones are refused."""
        loop = asyncio.get_running_loop()
        seen, last, turns = self.service.started, loop.time(), 0
        while loop.time() < until:
            await asyncio.sleep(0.005)
            if self.service.started != seen:
                seen, last, turns = self.service.started, loop.time(), 0
            else:
                turns += 1
                if turns >= SETTLE_TURNS and loop.time() - last >= SETTLE_QUIET:
                    return


class InProcessWorker(Worker):
    """A :class:`Worker` on an event loop in a thread of the calling process (``create_server`` with
    ``workers=0``); ``stop()`` is called from any other thread."""

    def __init__(self, cfg: ServeConfig, port: int, metrics: Metrics | None = None,
                 secrets: Secrets | None = None):
        super().__init__(cfg, port, metrics, secrets=secrets)
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="recserve-grpc", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), self._loop).result()

    def reload_now(self, retry: bool = False) -> None:     # type: ignore[override]
        asyncio.run_coroutine_threadsafe(Worker.reload_now(self, retry), self._loop).result()

    def stop(self, grace: float | None = None) -> None:     # type: ignore[override]
        try:
            asyncio.run_coroutine_threadsafe(Worker.stop(self, grace), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def check_events_dir(path: Path, map_mb: int) -> None:
    """The event store's directory exists (made here, as the store would) and is writable, and a store
    already in it fits in ``map_mb``, or a one-line reason: before a worker is forked to open it (LMDB
    would stretch a smaller map to the pages in use and then refuse every write as full). The file's size
    is the pages in use: LMDB grows it as it takes pages, and it is not opened here, before the fork."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"events_dir: cannot create {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"events_dir: {path} is not writable")
    data = path / "data.mdb"
    used = data.stat().st_size if data.is_file() else 0
    if used >= map_mb << 20:
        raise ValueError(f"events_map_mb: {map_mb} MiB cannot hold the event store in {path}, which already takes "
                         f"{used / (1 << 20):.0f} MiB: give a larger map (the default is "
                         f"{ServeConfig.events_map_mb}; pruning frees pages for reuse but does not shrink the file)")


def create_server(address: str = "127.0.0.1:0", bundle: str = "", cfg: ServeConfig | None = None, **kw):
    """Start serving ``bundle`` (a bundle root holding CURRENT, or one version directory) on ``address``.

    Returns ``(server, port)``: a :class:`Supervisor` over ``cfg.workers`` forked processes, or with
    ``workers=0`` an :class:`InProcessWorker`. Both have ``stop(grace)``. A CURRENT naming an invalid
    bundle fails here; a root without CURRENT starts NOT_SERVING and waits for one. Call it, and the
    supervisor's ``monitor()``, from a thread that outlives the server (the main thread): workers get
    SIGTERM when the thread that forked them ends (Linux's parent-death signal).
    """
    import dataclasses

    cfg = keep_origin(dataclasses.replace(cfg or ServeConfig(), **kw), cfg or ServeConfig(),
                      given={"host", "port", *kw, *(("bundle",) if bundle else ())})
    if bundle:
        cfg.bundle = str(bundle)
    host, _, port = address.rpartition(":")
    cfg.host, cfg.port = host.strip("[]") or "127.0.0.1", int(port)
    if not cfg.bundle:
        raise ValueError("a bundle directory is required")
    validate(cfg)
    worker_cpus(cfg.cpu_affinity, cfg.workers)      # a bad setting fails here, before anything is forked
    try:
        secrets = Secrets.read(cfg)                 # a malformed tokens file fails here, not in every worker
    except OSError as exc:
        raise ValueError(f"cannot read a tokens or TLS file: {exc}") from None
    holder = BundleHolder(cfg.bundle, cfg, None)
    if not holder.root.is_dir():
        raise ValueError(f"bundle: {holder.root} is not a directory")
    check_events_dir(Path(cfg.events_dir or bundle_root(cfg.bundle) / "events"), cfg.events_map_mb)
    key = holder._key()
    if key is not None:  # fail fast on a bad bundle, before forking (sha256 only, no hnswlib/LightGBM)
        from recserve import bundle as B

        B.verify(holder.directory(key))
    else:
        log.warning("no bundle yet: NOT_SERVING until %s/CURRENT names one", holder.root,
                    extra={"event": "waiting_for_bundle"})
    from recserve.supervisor import Supervisor, probe_port, remove_stale_dirs, reserve_port

    if cfg.metrics_port:        # before anything starts: a taken port fails alone, with its number
        probe_port(cfg.host, cfg.metrics_port, "serve metrics")
    if cfg.workers <= 0:
        cpus = worker_cpus(cfg.cpu_affinity, 1)     # a CPU list pins this process to its first CPU
        if cpus:
            for tid in os.listdir("/proc/self/task"):     # every thread: sched_setaffinity(0) pins the caller's
                try:
                    os.sched_setaffinity(int(tid), {cpus[0]})
                except ProcessLookupError:              # a thread that ended meanwhile
                    pass
        if cfg.port:
            probe_port(cfg.host, cfg.port, "listen")
        metrics = None
        if cfg.metrics_port:
            from prometheus_client import start_http_server

            metrics = Metrics()
            start_http_server(cfg.metrics_port, addr=cfg.host)
        w = InProcessWorker(cfg, cfg.port, metrics, secrets)
        if key is not None and w.holder.current is None:      # as the supervisor's start: no NOT_SERVING
            reason = w.holder.last_error or "no reason given"
            w.stop(0)
            raise ValueError(f"bundle refused: {reason}")
        return w, w.port
    sock = reserve_port(cfg.host, cfg.port)
    stale = remove_stale_dirs()
    if stale:
        log.info("removed the directories of killed servers: %s", ", ".join(stale), extra={"event": "cleanup"})
    sup = Supervisor(cfg, sock.getsockname()[1], sock, secrets)
    sup.start(require_bundle=key is not None)
    return sup, sup.port


def serve_forever(cfg: ServeConfig) -> int:
    """The ``recserve serve`` main loop: start, then drain on SIGTERM/SIGINT; SIGHUP: look at CURRENT now."""
    from recserve.supervisor import StartInterrupted, Supervisor

    validate(cfg)                       # before logging is set up with its level
    configure_logging(cfg.log_level)
    log.info("settings: %s", sources(cfg), extra={"event": "settings"})
    if delay := debug_delay(os.environ):
        log.warning("RECSERVE_DEBUG_DELAY_MS is set: every Recommend waits %g ms first (a testing aid)",
                    delay * 1000, extra={"event": "debug_delay"})
    stop, hup = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    try:
        server, port = create_server(f"{cfg.host}:{cfg.port}", cfg=cfg)
    except StartInterrupted:
        if not stop.wait(2.0):          # the signal was the workers' alone: a failed start
            raise
        log.info("stopped while starting", extra={"event": "stopped"})
        return 0
    print(json.dumps({"event": "listening", "port": port, "pid": os.getpid()}), flush=True)
    while not stop.wait(0.25):
        if hup.is_set():
            hup.clear()
            log.info("SIGHUP: looking at CURRENT now", extra={"event": "reload_signal"})
            server.reload_now(retry=True)
        if isinstance(server, Supervisor):
            server.monitor()
    server.stop()
    log.info("stopped", extra={"event": "stopped"})
    return 0
