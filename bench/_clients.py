"""The load generator's client processes: one phase (closed or open loop) against one server, summarised.

``run_phase`` spawns one process per request pool; each opens its own channels, waits for the others,
sends its pre-built requests from the same start time and returns every call's method, intended send time,
latency, send lag and status code; the parent merges them and adds the server's and its own CPU per call.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import pickle
import queue
import time

import numpy as np

from _proc import tree_stats
from _servers import CONNECT_TIMEOUT_S, METHODS, _decoders

WARM_CALLS, WARM_S = 20, 5.0    # calls that warm each connection before a phase, started within so many s
READY_TIMEOUT_S = 60.0      # every client process connected and its connections warmed (WARM_S + a deadline)
DRAIN_GRACE_S = 5.0         # open loop: calls still unanswered this long after their deadline are CLIENT_TIMEOUT


class ClientFailure(RuntimeError):
    """A client process failed or did not finish: the phase has no figures (its reason in one line)."""


def call_latency(intended: float, sent: float, done: float) -> float:
    """A call's latency in an open loop: from its intended send time when it was sent late (the client's
    own queueing is latency: coordinated omission), from its send when a timer fired early (uvloop's can,
    by up to about a millisecond), so never shorter than the call itself."""
    return done - min(intended, sent)


def phase_config(mode: str, *, duration: float, channels: int, deadline: float = 5.0, warmup: float = 1.0,
                 concurrency: int = 0, rate: float = 0.0, max_inflight: int = 256,
                 client_loop: str = "uvloop") -> dict:
    """One phase's settings; ``concurrency`` (closed loop) and ``rate`` (open loop) are per client process."""
    if mode not in ("closed", "open"):
        raise ValueError(f"mode is 'closed' or 'open', not {mode!r}")
    out = {"mode": mode, "channels": channels, "duration": duration, "warmup": min(warmup, duration / 2),
           "deadline": deadline, "max_inflight": max_inflight, "client_loop": client_loop}
    if mode == "closed":
        out["concurrency"] = concurrency
    else:
        out["rate"] = rate
    return out


def _client_main(idx, target, requests, phase, ready_q, go, start_at, result_q):
    """One client process: own channels, one grpc.aio event loop; sends the pre-built requests for one phase.

    The loop is uvloop's by default, like the server's: it fires a timer within about 0.1 ms of its time
    (p50 0.13, p99 0.70 ms late over 2,000 sleeps on an idle machine); asyncio's own rounds its epoll timeout
    up to whole milliseconds (p50 0.70, p99 2.07 ms late), and in an open loop that lateness is counted as
    latency."""
    from recserve.server import run         # uvloop's loop where installed, else asyncio's

    runner = run if phase.get("client_loop", "uvloop") == "uvloop" else asyncio.run
    try:
        res = runner(_client(idx, target, requests, phase, ready_q, go, start_at))
    except BaseException as exc:  # noqa: BLE001
        res = {"error": f"{type(exc).__name__}: {exc}"}
    result_q.put((idx, pickle.dumps(res)))


async def _client(idx, target, requests, phase, ready_q, go, start_at):
    import grpc

    dec = _decoders()
    # each channel its own TCP connection (SO_REUSEPORT balances connections, not calls, over workers)
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.enable_retries", 0),
            ("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(target, options=opts) for _ in range(max(phase["channels"], 1))]
    try:
        for ch in chans:
            try:
                await asyncio.wait_for(ch.channel_ready(), CONNECT_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise ConnectionError(f"cannot connect to {target} within {CONNECT_TIMEOUT_S:g} s") from None
        per_chan = [{m: ch.unary_unary(f"/recserve.v1.Recommender/{m}", request_serializer=None,
                                       response_deserializer=dec[m][1].FromString) for m in METHODS}
                    for ch in chans]
        return await _drive(idx, per_chan, requests, phase, ready_q, go, start_at)
    finally:
        for ch in chans:
            await ch.close()


async def _drive(idx, per_chan, requests, phase, ready_q, go, start_at):
    import grpc

    # warm every connection (not recorded): the connections side by side, each up to WARM_CALLS calls one
    # after another, none started after WARM_S (a slow server is still measured, not refused as not ready)
    warm_end = time.monotonic() + WARM_S

    async def warm(c: int):
        for j in range(WARM_CALLS):
            m, body = requests[(c + j * len(per_chan)) % len(requests)]
            try:
                await per_chan[c][m](body, timeout=phase["deadline"])
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() >= warm_end:
                break

    await asyncio.gather(*(warm(c) for c in range(len(per_chan))))
    ready_q.put(idx)
    while not go.is_set():
        await asyncio.sleep(0.005)
    t0 = start_at.value
    while time.monotonic() < t0:
        await asyncio.sleep(min(0.005, max(t0 - time.monotonic(), 0)))
    t_end = t0 + phase["duration"]
    cpu0 = time.process_time()          # this client process, all its threads (gRPC's included)
    n = len(requests)
    meth_ix = {m: i for i, m in enumerate(METHODS)}
    rec_m, rec_t, rec_lat, rec_code, rec_lag = [], [], [], [], []
    codes: list[str] = []
    code_ix: dict[str, int] = {}

    def code_of(name):
        if name not in code_ix:
            code_ix[name] = len(codes)
            codes.append(name)
        return code_ix[name]

    def note(m, intended, sent, c):
        rec_m.append(meth_ix[m])
        rec_t.append(intended)
        rec_lat.append(call_latency(intended, sent, time.monotonic()))
        rec_lag.append(sent - intended)
        rec_code.append(code_of(c))

    async def one(j, intended):
        m, body = requests[j % n]
        sent = time.monotonic()
        try:
            await per_chan[j % len(per_chan)][m](body, timeout=phase["deadline"])
            c = "OK"
        except grpc.aio.AioRpcError as e:
            c = e.code().name
        except asyncio.CancelledError:      # unanswered DRAIN_GRACE_S after its deadline: counted, not dropped
            note(m, intended, sent, "CLIENT_TIMEOUT")
            raise
        except Exception as e:  # noqa: BLE001 - a failure in the client is a failed call, named by its type
            c = f"CLIENT_EXCEPTION:{type(e).__name__}"
        note(m, intended, sent, c)

    if phase["mode"] == "closed":
        counter = [idx * 7919]

        async def loop():
            while True:
                now = time.monotonic()
                if now >= t_end:
                    return
                j = counter[0]
                counter[0] += 1
                await one(j, now)

        await asyncio.gather(*(loop() for _ in range(phase["concurrency"])))
    else:
        rate = phase["rate"]
        rng = np.random.default_rng(1000 + idx)
        k = int(rate * phase["duration"] * 1.2) + 10
        intended = t0 + np.cumsum(rng.exponential(1.0 / rate, size=k))
        intended = intended[intended < t_end]
        inflight: set = set()
        for j, t in enumerate(intended.tolist()):
            d = t - time.monotonic()
            if d > 0:
                await asyncio.sleep(d)
            if len(inflight) >= phase["max_inflight"]:
                rec_m.append(meth_ix[requests[(j + idx * 7919) % n][0]])
                rec_t.append(t)
                rec_lat.append(np.nan)
                rec_lag.append(np.nan)
                rec_code.append(code_of("CLIENT_BACKLOG"))
                continue
            task = asyncio.ensure_future(one(j + idx * 7919, t))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=phase["deadline"] + DRAIN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)     # each records its CLIENT_TIMEOUT
    return {"t0": t0, "cpu_s": time.process_time() - cpu0, "method": np.array(rec_m, np.int8),
            "t": np.array(rec_t), "lat": np.array(rec_lat), "lag": np.array(rec_lag),
            "code": np.array(rec_code, np.int16), "codes": codes}


def run_phase(target: str, pools: list, phase: dict, server_pid: int | None = None) -> dict:
    """Runs one phase with ``len(pools)`` client processes; merges their records."""
    ctx = mp.get_context("spawn")
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_client_main, args=(i, target, pools[i], phase, ready_q, go, start_at, result_q),
                         daemon=True) for i in range(len(pools))]
    for p in procs:
        p.start()
    results = {}
    try:
        wait = READY_TIMEOUT_S + phase["deadline"]      # a warm-up call started at WARM_S may take its deadline
        deadline = time.monotonic() + wait
        got = 0
        while got < len(procs):     # short waits: a client that fails before being ready is seen at once
            try:
                i, r = result_q.get_nowait()
            except queue.Empty:
                pass
            else:
                raise ClientFailure(f"client {i} failed: {pickle.loads(r).get('error')}")
            if time.monotonic() > deadline:
                raise ClientFailure(f"client processes were not ready (connected, their connections warmed) "
                                    f"within {wait:g} s")
            try:
                ready_q.get(timeout=0.2)
                got += 1
            except queue.Empty:
                pass
        start_at.value = time.monotonic() + 0.3
        cpu0, sw0 = tree_stats(server_pid) if server_pid else (None, 0)
        go.set()
        wait_s = 0.3 + phase["duration"] + phase["deadline"] + 30
        limit = time.monotonic() + wait_s
        while len(results) < len(procs):
            try:
                i, r = result_q.get(timeout=max(limit - time.monotonic(), 0.1))
            except queue.Empty:
                raise ClientFailure(f"client processes did not finish the phase within {wait_s:.0f} s") from None
            results[i] = pickle.loads(r)
        cpu1, sw1 = tree_stats(server_pid) if server_pid else (None, 0)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    errs = [r["error"] for r in results.values() if "error" in r]
    if errs:
        raise ClientFailure(f"client failed: {errs[0]}")
    codes: list[str] = []
    parts = {k: [] for k in ("method", "t", "lat", "lag", "code")}
    for r in results.values():
        remap = []
        for c in r["codes"]:
            if c not in codes:
                codes.append(c)
            remap.append(codes.index(c))
        remap = np.array(remap or [0], np.int16)
        for k in ("method", "t", "lat", "lag"):
            parts[k].append(r[k])
        parts["code"].append(remap[r["code"]] if len(r["code"]) else r["code"])
    rec = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    t0 = min(r["t0"] for r in results.values())
    out = summarize(rec, codes, t0, phase)
    # the server's CPU per call it was sent (answered or failed: a refused call costs CPU too) over the
    # whole phase: unlike throughput, hardly moved by other jobs on a shared machine
    n_all = int(np.sum(~np.isnan(rec["lat"])))          # client-side backlog drops were never sent
    n = n_all
    out["server_cpu_ms_per_call"] = ((cpu1 - cpu0) * 1e3 / n) if (cpu0 is not None and n) else float("nan")
    # every thread's context switches per call: gRPC's threads hand each call over several times
    out["server_switches_per_call"] = ((sw1 - sw0) / n) if (cpu0 is not None and n) else float("nan")
    # the load generator's own CPU per call (its processes share the machine with the server)
    out["client_cpu_ms_per_call"] = sum(r["cpu_s"] for r in results.values()) * 1e3 / n_all if n_all \
        else float("nan")
    return out


def summarize(rec: dict, codes: list[str], t0: float, phase: dict) -> dict:
    """The figures of the window after the first ``warmup`` seconds.

    A method with no call due in the window is left out; "ALL" is always there, with 0 calls when none was
    due (a server slower than the window: its figures are then NaN). Calls, errors and latencies are those
    of the calls *due* in the window (by intended send time; the percentiles are of the calls answered OK,
    failed calls are counted by status instead); throughput is
    the calls answered OK that *finished* in the window, per second, so that a server falling behind an
    open loop's rate shows as a throughput below it."""
    w0, w1 = t0 + phase["warmup"], t0 + phase["duration"]
    keep = (rec["t"] >= w0) & (rec["t"] < w1)
    with np.errstate(invalid="ignore"):
        done = rec["t"] + np.minimum(rec["lag"], 0.0) + rec["lat"]     # NaN: never sent
        finished = (done >= w0) & (done < w1)
    window = w1 - w0
    ok_code = codes.index("OK") if "OK" in codes else -1
    out = {"window_s": window, "methods": {}, "raw_ms": {}}
    for mi, m in enumerate(METHODS + ["ALL"]):
        of_m = (rec["method"] == mi) if m != "ALL" else np.ones(len(rec["t"]), bool)
        sel = keep & of_m
        if m != "ALL" and not sel.any():
            continue
        ok = sel & (rec["code"] == ok_code)
        lat = rec["lat"][ok] * 1e3
        lag = rec["lag"][sel] * 1e3
        errors = {}
        for ci, c in enumerate(codes):
            if c != "OK":
                n = int((sel & (rec["code"] == ci)).sum())
                if n:
                    errors[c] = n
        q = (lambda p: float(np.percentile(lat, p))) if len(lat) else (lambda p: float("nan"))
        out["methods"][m] = {
            "calls": int(sel.sum()), "ok": int(ok.sum()),
            "throughput": float(np.sum(finished & of_m & (rec["code"] == ok_code)) / window),
            "p50": q(50), "p90": q(90), "p99": q(99), "p99.9": q(99.9),
            "max": float(lat.max()) if len(lat) else float("nan"),
            "send_lag_p99": float(np.nanpercentile(lag, 99)) if np.isfinite(lag).any() else float("nan"),
            "errors": errors}
        if m != "ALL":
            out["raw_ms"][m] = lat.astype(np.float32)
    return out
