"""The servers a load test runs against: recserve itself, and the transport ceiling.

The ceiling is a trivial server implementing the same ``recserve.v1.Recommender`` service with the same
worker model (forked SO_REUSEPORT workers, pinned alike, each a ``grpc.aio`` server on the same event
loop; with ``--workers 0``, as recserve's, one server in the process itself) and the same gRPC options,
gRPC's bound on calls in flight included, answering every call at once with a response recorded from the
real server (so the messages have the same sizes) without doing any work. It answers before any other call
can start, so recserve's own bounds (reads and writes apart, per worker) would never be reached in it, and
it has none. It runs as
``python bench/_servers.py ceiling-serve --responses FILE --workers N``.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import socket
import subprocess
import tempfile
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

METHODS = ["Recommend", "SimilarItems", "RecordEvents"]

def _decoders():
    from recserve.v1 import recommender_pb2 as pb

    return {"Recommend": (pb.RecommendRequest, pb.RecommendResponse),
            "SimilarItems": (pb.SimilarItemsRequest, pb.SimilarItemsResponse),
            "RecordEvents": (pb.RecordEventsRequest, pb.RecordEventsResponse)}


class ServerStartError(SystemExit):
    """A server this script started exited or never listened: one line (the last line of its log, and where
    the whole log was kept) and exit code 1."""


class ServerProc:
    """A server subprocess that prints ``{"event": "listening", "port": P}`` on stdout.

    It runs in a process group of its own (so a hung server and its workers can be killed together) but
    in the load generator's session: with the kernel's autogroup scheduling (``sched_autogroup_enabled``)
    a new session would be a scheduling group of its own, and the client processes, in another group,
    would then be weighed against the server workers as a group rather than task by task. Measured with
    the 100k-item bundle at 437 calls/s, three alternating runs each: SimilarItems p99 12.46 / 12.06 /
    11.66 ms and client send lag p99 3.6-4.2 ms with a new session, against 9.22 / 7.64 / 8.14 ms and
    2.8-3.3 ms in the same session (Recommend p99 19.76 / 17.90 / 18.12 against 18.85 / 15.84 / 17.06 ms).
    """

    def __init__(self, cmd: list[str], name: str, env=None, timeout: float = 180.0):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"recserve-bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
                                     process_group=0)
        deadline = time.monotonic() + timeout
        self.port = None
        import select

        try:
            while time.monotonic() < deadline:
                r, _, _ = select.select([self.proc.stdout], [], [], 0.5)
                if r:
                    line = self.proc.stdout.readline()
                    if not line:
                        break
                    try:
                        d = json.loads(line)
                    except ValueError:
                        continue
                    if d.get("event") == "listening":
                        self.port = int(d["port"])
                        break
                if self.proc.poll() is not None:
                    break
        except BaseException:       # Ctrl-C while it starts: no one else holds it to stop (its own group)
            self.stop()
            raise
        if self.port is None:
            self.stop(keep_log=True)
            last = [ln for ln in Path(self.log.name).read_text(errors="replace").splitlines() if ln.strip()]
            why = last[-1].strip() if last else f"exit code {self.proc.returncode}"
            raise ServerStartError(f"{name} server did not start: {why} (its log: {self.log.name})")

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server (SIGTERM, SIGKILL to its group after 30 s); its log is removed unless kept."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group: the server and its workers
                self.proc.wait()
        self.log.close()
        if not keep_log:
            Path(self.log.name).unlink(missing_ok=True)


def imported_tree(env: dict) -> Path:
    """The directory holding the ``recserve`` package a child with the environment ``env`` (its whole
    environment) imports, the working directory not on its path (:func:`_cli.python_m`, a script's own
    directory): an entry of ``env``'s ``PYTHONPATH`` must hold it (the project's editable install answers
    any import the path does not, so a wrong entry would silently measure this tree)."""
    from _cli import CWD_OFF_PATH

    code = CWD_OFF_PATH + "import recserve; print(recserve.__file__)"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise ValueError(f"recserve does not import: {' '.join(p.stderr.split()[-12:])}")
    tree = Path(p.stdout.strip()).resolve().parent.parent
    entries = [Path(e).resolve() for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]
    if entries and tree not in entries:
        raise ValueError(f"PYTHONPATH={env['PYTHONPATH']} holds no recserve package: it would import "
                         f"{tree / 'recserve'}")
    return tree


def server_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a recserve server :func:`start_real` starts with ``env``: this process's, this
    tree first on the path unless ``env`` sets ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}


def start_real(bundle: str, workers: int, events_dir: str, cpu_affinity: str = "auto",
               env: dict[str, str] | None = None) -> ServerProc:
    """recserve serving ``bundle``, with this process's environment plus ``env`` (:func:`server_env`), the
    working directory not on its path (:func:`_cli.python_m`)."""
    from _cli import python_m

    cmd = [*python_m("recserve.cli"), "serve", "--bundle", bundle, "--host", "127.0.0.1",
           "--port", "0", "--workers", str(workers), "--reload-interval", "0", "--events-dir", events_dir,
           "--log-level", "WARNING", "--cpu-affinity", cpu_affinity]
    return ServerProc(cmd, "recserve", env=server_env(env))


def start_ceiling(responses_file: str, workers: int, cpu_affinity: str = "auto") -> ServerProc:
    cmd = [sys.executable, str(HERE / "_servers.py"), "ceiling-serve", "--responses", responses_file,
           "--workers", str(workers), "--cpu-affinity", cpu_affinity]
    return ServerProc(cmd, "ceiling", env={**os.environ, "PYTHONPATH": str(REPO)})


def ceiling_serve(argv) -> int:
    """The trivial server: same service, same worker model and gRPC options as recserve's, canned answers."""
    from recserve import config

    cfg = config.load({}, env=os.environ)     # RECSERVE_* settings apply to the ceiling's workers too
    ap = argparse.ArgumentParser()
    ap.add_argument("--responses", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpu-affinity", default=cfg.cpu_affinity)
    a = ap.parse_args(argv)
    canned = pickle.loads(Path(a.responses).read_bytes())
    from recserve.server import run, worker_cpus

    if a.workers <= 0:      # as recserve's --workers 0: one server in this process, nothing forked
        run(_ceiling_server(canned, cfg, "127.0.0.1:0", reuseport=False, announce=True))
        return 0
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    pids = []
    cpus = worker_cpus(a.cpu_affinity, a.workers)        # pinned as recserve's workers are
    for slot in range(a.workers):  # forked before any gRPC object exists, as recserve's supervisor does
        pid = os.fork()
        if pid == 0:
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[slot]})
            _ceiling_worker(port, canned, cfg)
        pids.append(pid)
    print(json.dumps({"event": "listening", "port": port, "pid": os.getpid()}), flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)
    return 0


def _ceiling_worker(port: int, canned: dict, cfg) -> None:
    """One forked trivial worker on the supervisor's SO_REUSEPORT port; it exits when its server stops."""
    code = 0
    try:
        from recserve.server import run

        signal.signal(signal.SIGINT, signal.SIG_IGN)        # the supervisor stops its workers
        run(_ceiling_server(canned, cfg, f"127.0.0.1:{port}", reuseport=True, announce=False))
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


async def _ceiling_server(canned: dict, cfg, address: str, reuseport: bool, announce: bool) -> None:
    """A ``grpc.aio`` server as recserve's workers run it, with the same options and gRPC's bound on calls in
    flight; every call answered at once with a recorded response.
    Serves until SIGTERM (or SIGINT, in process)."""
    import asyncio

    import grpc

    from recserve.server import STREAM_ALLOWANCE
    from recserve.v1 import recommender_pb2_grpc as pbg

    dec = _decoders()
    msgs = {m: [dec[m][1].FromString(b) for b in canned[m]] or [dec[m][1]()] for m in METHODS}
    counters = {m: 0 for m in METHODS}

    async def answer(m, context):
        counters[m] += 1
        return msgs[m][counters[m] % len(msgs[m])]

    class Trivial(pbg.RecommenderServicer):
        async def Recommend(self, request, context):
            return await answer("Recommend", context)

        async def SimilarItems(self, request, context):
            return await answer("SimilarItems", context)

        async def RecordEvents(self, request, context):
            return await answer("RecordEvents", context)

    opts = [("grpc.so_reuseport", 1 if reuseport else 0),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes)]
    srv = grpc.aio.server(options=opts, maximum_concurrent_rpcs=2 * cfg.max_concurrent_rpcs
                          + cfg.max_health_watches + STREAM_ALLOWANCE)       # recserve's (recserve/server.py)
    pbg.add_RecommenderServicer_to_server(Trivial(), srv)
    port = srv.add_insecure_port(address)
    await srv.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if announce:
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print(json.dumps({"event": "listening", "port": port, "pid": os.getpid()}), flush=True)
    await stop.wait()
    await srv.stop(2)


CONNECT_TIMEOUT_S = 10.0     # a server that does not accept a connection within this is unreachable


def _ready(ch, target: str) -> None:
    import grpc

    try:
        grpc.channel_ready_future(ch).result(timeout=CONNECT_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        raise SystemExit(f"cannot connect to {target} within {CONNECT_TIMEOUT_S:g} s") from None


def check_reachable(target: str) -> None:
    """Exit (one line, code 1) unless ``target`` accepts a gRPC connection within ``CONNECT_TIMEOUT_S``."""
    import grpc

    with grpc.insecure_channel(target) as ch:
        _ready(ch, target)


def record_responses(target: str, requests: list, per_method: int = 50) -> dict:
    """Calls the real server with requests from the pool; keeps the serialized OK responses per method.

    The pool's RecordEvents go first, every one once: the phases send them over and over, so the users
    answered there have these histories (a user without one gets a cold answer, which is smaller)."""
    import grpc

    out = {m: [] for m in METHODS}
    with grpc.insecure_channel(target) as ch:
        _ready(ch, target)
        calls = {m: ch.unary_unary(f"/recserve.v1.Recommender/{m}", request_serializer=None,
                                   response_deserializer=None) for m in METHODS}
        ordered = [r for r in requests if r[0] == "RecordEvents"] + [r for r in requests if r[0] != "RecordEvents"]
        for m, body in ordered:
            if m != "RecordEvents" and len(out[m]) >= per_method:
                continue
            try:
                resp = calls[m](body, timeout=10)
            except grpc.RpcError:
                continue
            if len(out[m]) < per_method:
                out[m].append(resp)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ceiling-serve":
        raise SystemExit(ceiling_serve(sys.argv[2:]))
    raise SystemExit("usage: _servers.py ceiling-serve --responses FILE --workers N")
