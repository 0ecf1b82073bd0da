"""Where one server worker's CPU goes, per Recommend: the transport, the servicer, the pipeline.

One server worker pinned to one CPU and one client process pinned to another send an open loop of
Recommends at a fixed rate (the requests of ``bench/load.py``, Recommend only) to three servers in turn,
``--repeats`` times, alternating:

* ``ceiling``: the trivial server of ``bench/_servers.py``, recorded answers, no work: gRPC alone;
* ``service``: recserve with its pipeline replaced by one precomputed result, paused at the same points:
  gRPC, request conversion, the compute slot and its pauses, response building, without the pipeline;
* ``recserve``: recserve itself. Its worker also adds up the CPU of its own thread inside the pipeline's
  steps (``time.thread_time`` around each step of ``Recommender.recommend_steps``; the pauses between them
  not counted).

Then, in this process, the same requests run through the pipeline back to back in a tight loop, timed the
same way: the same call boundary (the steps of ``recommend_steps``) on the same clock (``time.thread_time``
of the calling thread), so the two figures differ only in what runs around the calls.

It prints each server's CPU per call (all its threads, read from /proc over the measured window) and the
pipeline's CPU per Recommend inside the server against the tight loop: the same code is slower when gRPC's
and the event loop's work runs between its calls, which no in-process benchmark shows.

    python bench/overhead.py --bundle DIR [--rate 400] [--duration 8] [--repeats 2] [--json FILE]
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from _cli import Parser, check_bundle, output_file, record, write_json  # noqa: E402
from _clients import ClientFailure, call_latency  # noqa: E402
from _inproc import RECOMMEND_ONLY, rec_requests, recommender  # noqa: E402
from _proc import tree_stats  # noqa: E402
from _servers import ServerProc, record_responses, start_ceiling, start_real  # noqa: E402
from _timing import machine  # noqa: E402
from _workload import build_requests, read_ids  # noqa: E402
from trainer.argtypes import number  # noqa: E402

MODES = ("ceiling", "service", "recserve")
STATS_ENV = "RECSERVE_BENCH_PIPELINE_STATS"


# -- inside the server (``overhead.py _serve MODE ARGS...``) ------------------------------------------------
def _drain(steps):
    """Run a ``recommend_steps`` generator to its end: (the names it paused at, its result)."""
    names = []
    while True:
        try:
            names.append(next(steps))
        except StopIteration as done:
            return names, done.value


def timed_steps(steps, add):
    """Run a ``Recommender.recommend_steps`` generator, yielding what it yields and returning its result;
    ``add`` gets the thread CPU (``time.thread_time``) spent inside its steps, the pauses between them not
    counted. The server's worker and :func:`tight_loop` both time a Recommend with this, so the two figures
    cover the same calls on the same clock."""
    cpu = 0.0
    try:
        while True:
            t = time.thread_time()
            try:
                name = next(steps)
            except StopIteration as done:
                return done.value
            finally:
                cpu += time.thread_time() - t
            yield name
    finally:
        add(cpu)


def _patch(mode: str, stats_path: str) -> None:
    from recserve.pipeline import recommender as RM

    real = RM.Recommender.recommend_steps
    if mode == "service":
        canned: dict[int, tuple] = {}

        def steps(self, req):
            """The servicer's path without the pipeline's work: one precomputed result per pipeline,
            yielded through the same pause points as the real one."""
            got = canned.get(id(self))
            if got is None:
                got = canned[id(self)] = _drain(real(self, RM.RecRequest(k=req.k or 20)))
            for name in got[0]:
                yield name
            return got[1]
    else:
        acc = None

        def add(cpu: float) -> None:
            nonlocal acc
            if acc is None:
                acc = np.memmap(stats_path, np.float64, "r+", shape=(2,))
            acc[0] += cpu
            acc[1] += 1

        def steps(self, req):
            """The real pipeline; its thread's CPU inside the steps added to the shared stats."""
            return (yield from timed_steps(real(self, req), add))

    RM.Recommender.recommend_steps = steps


def _serve(argv) -> int:
    _patch(argv[0], os.environ[STATS_ENV])
    from recserve.cli import main

    return main(["serve", *argv[1:]])


# -- the client (``overhead.py _client``, a process of its own pinned to its CPU) -------------------------
async def _drive(target, requests, rate, warm, secs, worker, stats_path):
    import asyncio

    import grpc

    chans = [grpc.aio.insecure_channel(target) for _ in range(4)]
    for ch in chans:
        await asyncio.wait_for(ch.channel_ready(), 30)
    calls = [ch.unary_unary("/recserve.v1.Recommender/Recommend") for ch in chans]
    stats = np.memmap(stats_path, np.float64, "r", shape=(2,)) if stats_path else None
    lat, errors, marks, tasks = [], {}, {}, set()

    async def one(i, intended, measured):
        sent = time.perf_counter()
        try:
            await calls[i % len(calls)](requests[i % len(requests)][1], timeout=5)
        except grpc.RpcError as exc:
            if measured:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
            return                      # as bench/load.py: latency of the calls answered OK
        if measured:
            lat.append(call_latency(intended, sent, time.perf_counter()))

    def mark(key):
        marks[key] = (time.perf_counter(), tree_stats(worker)[0],
                      tuple(stats) if stats is not None else (0.0, 0.0))

    t0, i = time.perf_counter(), 0
    while (intended := t0 + i / rate) - t0 < warm + secs:
        now = time.perf_counter()
        if intended > now:
            await asyncio.sleep(intended - now)
        measured = intended - t0 >= warm
        if measured and "start" not in marks:
            mark("start")
        t = asyncio.ensure_future(one(i, intended, measured))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    mark("end")
    for ch in chans:
        await ch.close()
    if "start" not in marks:        # no call due in the measured window: no figure to give
        raise NoCallMeasured(f"no call was due in the measured window ({secs:g} s at {rate:g} calls/s)")
    (w0, c0, s0), (w1, c1, s1) = marks["start"], marks["end"]
    n = len(lat) + sum(errors.values())         # every measured call: a refused one costs CPU too
    ms = np.array(lat) * 1000.0 if lat else np.full(1, np.nan)
    return {"calls": n, "errors": sum(errors.values()), "errors_by_code": errors, "seconds": w1 - w0,
            "server_cpu_ms": 1000.0 * (c1 - c0) / max(n, 1),
            "pipeline_cpu_ms": 1000.0 * (s1[0] - s0[0]) / max(s1[1] - s0[1], 1),
            "pipeline_calls": s1[1] - s0[1],
            "p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99))}


class NoCallMeasured(Exception):
    """The client's measured window held no call."""


def _client(argv) -> int:
    cpu, target, req_file, rate, warm, secs, worker, stats_path = argv
    os.sched_setaffinity(0, {int(cpu)})
    from recserve.server import run     # the server's event loop (uvloop where installed)

    requests = pickle.loads(Path(req_file).read_bytes())
    try:
        out = run(_drive(target, requests, float(rate), float(warm), float(secs), int(worker), stats_path))
    except NoCallMeasured as exc:
        print(exc, file=sys.stderr)     # the driver's error line
        return 1
    print(json.dumps(out), flush=True)
    return 0


# -- the driver ---------------------------------------------------------------------------------------------
def _worker_of(supervisor: int, timeout: float = 30.0) -> int:
    """The pid of the one worker forked by ``supervisor``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == supervisor:
                        return int(d)
                except (OSError, IndexError, ValueError):
                    pass
        time.sleep(0.1)
    raise ClientFailure(f"no worker process under pid {supervisor}")


def _start(mode, bundle, cpu, events, responses, stats_path) -> ServerProc:
    if mode == "ceiling":
        return start_ceiling(responses, 1, cpu_affinity=str(cpu))
    cmd = [sys.executable, str(HERE / "overhead.py"), "_serve", mode, "--bundle", bundle, "--host", "127.0.0.1",
           "--port", "0", "--workers", "1", "--reload-interval", "0", "--events-dir", events,
           "--log-level", "WARNING", "--cpu-affinity", str(cpu)]
    return ServerProc(cmd, mode, env={**os.environ, "PYTHONPATH": str(REPO), STATS_ENV: stats_path})


def tight_loop(bundle: str, requests: list, events: str) -> float:
    """The pipeline's CPU per Recommend, the same requests back to back in this process, timed as the
    server's worker times them (:func:`timed_steps`: ``recommend_steps``, this thread's CPU inside the steps)."""
    reqs = rec_requests(requests)
    cpu = []
    with recommender(bundle, events) as rec:
        for r in reqs[:200]:
            rec.recommend(r)
        for r in reqs:
            _drain(timed_steps(rec.recommend_steps(r), cpu.append))
    return 1000.0 * sum(cpu) / len(reqs)


def main(argv=None) -> int:
    positive, at_least_0 = number(float, 0, above=True), number(float, 0)
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--rate", type=positive, default=400.0, help="Recommends per second")
    ap.add_argument("--duration", type=positive, default=8.0, help="measured seconds per server")
    ap.add_argument("--warmup", type=at_least_0, default=2.0)
    ap.add_argument("--repeats", type=number(int, 1), default=2, help="rounds of the three servers, alternating")
    ap.add_argument("--json", type=output_file)
    a = ap.parse_args(argv)
    if a.rate * a.duration < 1:         # the calls due in the measured window: none to measure
        ap.error(f"--rate {a.rate:g} x --duration {a.duration:g}: fewer than one call due in the measured window "
                 f"(rate x duration must be at least 1)")
    check_bundle(ap, a.bundle)
    # a SIGTERM (a `timeout`, a cancelled job) unwinds like Ctrl-C: the servers are stopped, tmp removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = cpus[0], cpus[1 % len(cpus)]
    print(f"machine: {machine()}; server worker on CPU {server_cpu}, client on CPU {client_cpu}"
          + ("" if server_cpu != client_cpu else " (one CPU: they share it)"), flush=True)
    requests = build_requests(read_ids(a.bundle), RECOMMEND_ONLY, 0, 4000)
    with tempfile.TemporaryDirectory(prefix="recserve-overhead-") as tmp:
        req_file, responses, stats_path = f"{tmp}/requests.pkl", f"{tmp}/responses.pkl", f"{tmp}/stats"
        Path(req_file).write_bytes(pickle.dumps(requests))
        np.zeros(2, np.float64).tofile(stats_path)
        srv = start_real(a.bundle, 1, f"{tmp}/events-record")
        try:
            Path(responses).write_bytes(pickle.dumps(record_responses(f"127.0.0.1:{srv.port}", requests)))
        finally:
            srv.stop()
        runs = {m: [] for m in MODES}
        for rep in range(a.repeats):
            for mode in MODES:
                srv = _start(mode, a.bundle, server_cpu, f"{tmp}/events-{mode}-{rep}", responses, stats_path)
                try:
                    worker = _worker_of(srv.proc.pid)
                    time.sleep(1.0)
                    p = subprocess.run([sys.executable, str(HERE / "overhead.py"), "_client", str(client_cpu),
                                        f"127.0.0.1:{srv.port}", req_file, str(a.rate), str(a.warmup),
                                        str(a.duration), str(worker), stats_path if mode == "recserve" else ""],
                                       capture_output=True, text=True, timeout=a.warmup + a.duration + 120,
                                       env={**os.environ, "PYTHONPATH": str(REPO)})
                    if p.returncode != 0:     # its reason: the last line of its stderr
                        why = ([ln for ln in p.stderr.splitlines() if ln.strip()] or [f"exit {p.returncode}"])[-1]
                        raise ClientFailure(f"the client failed against {mode}: {why.strip()}")
                    r = json.loads(p.stdout.strip().splitlines()[-1])
                finally:
                    srv.stop()
                runs[mode].append(r)
                failed = ", ".join(f"{n} {c}" for c, n in sorted(r["errors_by_code"].items())) or "no error"
                print(f"  round {rep + 1} {mode:9s} {r['calls']:6d} calls ({failed}), server CPU per call "
                      f"{r['server_cpu_ms']:.3f} ms, p50 / p99 {r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms"
                      + (f"; pipeline CPU per Recommend in the server {r['pipeline_cpu_ms']:.3f} ms"
                         if mode == "recserve" else ""), flush=True)
        os.sched_setaffinity(0, {server_cpu})
        loop_ms = tight_loop(a.bundle, requests, f"{tmp}/events-loop")

    med = {m: float(np.median([r["server_cpu_ms"] for r in runs[m]])) for m in MODES}
    pipe = float(np.median([r["pipeline_cpu_ms"] for r in runs["recserve"]]))
    print(f"\nserver CPU per Recommend at {a.rate:g} calls/s (median of {a.repeats} rounds), one worker:")
    print(f"  gRPC alone (ceiling)                          {med['ceiling']:.3f} ms")
    print(f"  + the servicer (service - ceiling)            {med['service'] - med['ceiling']:+.3f} ms")
    print(f"  + the pipeline (recserve - service)           {med['recserve'] - med['service']:+.3f} ms")
    print(f"  = recserve                                    {med['recserve']:.3f} ms")
    print(f"pipeline CPU per Recommend: {pipe:.3f} ms inside the server (its thread, inside the steps), "
          f"{loop_ms:.3f} ms in a tight loop in process (the same steps, the same clock): ratio {pipe / loop_ms:.2f}")
    if a.json:
        write_json(a.json, record(a, runs=runs, median_server_cpu_ms=med, pipeline_in_server_ms=pipe,
                                  pipeline_tight_loop_ms=loop_ms, server_env={
                                      k: v for k, v in sorted(os.environ.items()) if k.startswith("RECSERVE_")}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        raise SystemExit(_serve(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        raise SystemExit(_client(sys.argv[2:]))
    try:
        raise SystemExit(main())
    except ClientFailure as exc:        # no figures: the reason in one line (the servers are stopped)
        print(f"overhead.py: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
