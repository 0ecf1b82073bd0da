"""Load test of a recserve server over gRPC, with the transport ceiling measured in the same run.

    python bench/load.py --bundle DIR [--workers 2] [--clients 2] [--concurrency 16] [--duration 10]
                         [--rate R] [--sweep] [--p99-ms 15] [--mix recommend=0.8,similar=0.15,events=0.05]
                         [--k 20] [--zipf 1.1] [--unknown 0.05] [--anon 0.05] [--filter-share 0.1]
                         [--explain-share 0] [--json OUT.json] [--png OUT.png] [--target 127.0.0.1:PORT]

What it does
  * ``--bundle DIR`` starts ``recserve serve --bundle DIR --workers N`` as a subprocess on a free loopback
    port (events go to a temporary directory, hot reload off; in this script's session, a process group of
    its own: see ``_servers.ServerProc``); ``--target host:port`` uses a running server instead (loopback
    only; ``--bundle`` is then still read for user / item / category ids).
  * The **transport ceiling**: this script also starts a trivial server (``_servers.py ceiling-serve``) that
    implements the same ``recserve.v1.Recommender`` service the same way as recserve's workers (N forked
    SO_REUSEPORT workers, pinned alike, each a ``grpc.aio`` server on the same event loop, the same options, gRPC's
    bound on calls in flight included; with ``--workers 0`` one server in its own process, as recserve's), and
    answers every call with a response *recorded from the real server* in this run, once the pools' events have been
    sent (so the response messages have the sizes the phases see), without doing any work; a method recserve
    answered no call of OK is answered with an empty message, with a warning. Every phase runs against both servers,
    alternately, with the same client and the same request pool; every figure is printed with its ratio to the
    ceiling. Under ``--target`` the ceiling runs ``--workers`` workers whatever the target runs: a warning says its
    ratios assume the target runs as many.
  * Clients are separate processes (``multiprocessing`` spawn), each with a grpc.aio event loop (uvloop's,
    like the server's; ``--client-loop asyncio`` for asyncio's own, whose millisecond timer makes open-loop
    sends up to 1-2 ms late) and ``--channels`` connections of its own, calls round-robin over them: the
    kernel's SO_REUSEPORT balances *connections* over the server's workers, so a client with one connection
    loads one worker only. Requests are pre-built before timing (users drawn from the bundle's users with
    Zipf skew, plus unknown and anonymous users, who carry a country drawn from the bundle's users' countries
    as ``context.country``; a category filter on ``--filter-share`` of the Recommends and of the
    SimilarItems; explain) so request building is not timed.
  * Closed loop: ``--concurrency`` outstanding calls in total, split evenly over the clients (a multiple of
    ``--clients``).
    Open loop: Poisson arrivals at ``--rate`` calls/s in total; latency is measured from the *intended* send
    time, so a client or server that falls behind shows up as latency (no coordinated omission). The
    reported "send lag" is how late calls actually left the client; if it is large the client, not the
    server, is the bottleneck. At most ``--max-inflight`` calls are outstanding per client; arrivals
    beyond that are counted as errors ``CLIENT_BACKLOG`` (never silently dropped). A call that fails in
    the client with anything but a gRPC status is counted as ``CLIENT_EXCEPTION:<type>``, and one still
    unanswered 5 s after its deadline when the phase ends as ``CLIENT_TIMEOUT``.
  * ``--sweep``: closed loop finds the saturation throughput X; then open loop at fractions of X. It reports
    the highest rate swept such that it and every lower rate swept had a p99 under ``--p99-ms`` and no
    errors, and the highest such that it and every lower rate were kept up with (the OK answers finished in
    the window at least 95 % of the calls due, by their scheduled send times, in it); the rates that failed
    are listed, and a bound that held at every rate swept is reported as "the limit is above" the highest
    (see ``_sweep.py``). A closed loop with no OK answer (saturation 0) has nothing to sweep: the sweep is
    refused in one line and the exit code is 1.
Everything is bounded: each phase runs ``--duration`` seconds (+ deadline), client processes are joined
with a timeout and killed if they hang, servers are stopped at the end. A ``--target`` that accepts no
connection within 10 s, or a client process that cannot connect or fails, ends the run with one line on
stderr and exit code 1.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from _cli import (Parser, check_concurrency, output_file, png_file, record as cli_record,  # noqa: E402
                  write_json)
from _clients import ClientFailure, phase_config, run_phase  # noqa: E402
from _sweep import KEEP_UP, TAIL_SAMPLES, describe, summarize_sweep, sweep_row  # noqa: E402
from _servers import check_reachable, record_responses, start_ceiling, start_real  # noqa: E402
from _timing import machine  # noqa: E402
from _workload import build_requests, filtered_methods, parse_mix, read_ids  # noqa: E402
from recserve.pipeline.messages import MAX_EXPLAIN, MAX_K  # noqa: E402
from trainer.argtypes import number, number_list  # noqa: E402


# -- reporting --------------------------------------------------------------------------------------------
def _fmt(v, w=9, d=2):
    return f"{v:>{w}.{d}f}" if isinstance(v, float) and np.isfinite(v) else f"{'-':>{w}}"


def _tail(v: dict, key: str) -> float:
    return v[key] if v.get("ok", 0) >= TAIL_SAMPLES.get(key, 0) else float("nan")


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 or either is not finite (a phase with no OK answer has no ratio)."""
    return a / b if (np.isfinite(a) and np.isfinite(b) and b != 0) else float("nan")


def print_phase(title: str, real: dict, ceil: dict | None) -> None:
    print(f"\n== {title} (window {real['window_s']:.1f} s; ratio = recserve / ceiling)")
    cc = (ceil or {}).get("server_cpu_ms_per_call", float("nan"))
    cs = (ceil or {}).get("server_switches_per_call", float("nan"))
    if not np.isfinite(real["server_cpu_ms_per_call"]):
        print("server CPU per call: not measured (the server was not started by this script)")
    elif ceil is None:
        print(f"server CPU per call (all workers, whole phase): {real['server_cpu_ms_per_call']:.3f} ms; context "
              f"switches per call (all threads): {real.get('server_switches_per_call', float('nan')):.1f}")
    else:
        print(f"server CPU per call (all workers, whole phase): recserve {real['server_cpu_ms_per_call']:.3f} ms, "
              f"ceiling {cc:.3f} ms, ratio {_ratio(real['server_cpu_ms_per_call'], cc):.2f}; context switches per call "
              f"(all threads): recserve {real.get('server_switches_per_call', float('nan')):.1f}, ceiling {cs:.1f}")
    print(f"load generator CPU per call (all client processes): recserve's run "
          f"{real.get('client_cpu_ms_per_call', float('nan')):.3f} ms"
          + (f", ceiling's {ceil.get('client_cpu_ms_per_call', float('nan')):.3f} ms" if ceil else ""))
    hdr = (f"{'method':<13}{'calls':>8}{'ok':>8}{'ok/s':>9}{'p50 ms':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}"
           f"{'lag p99':>9}  errors")
    print("(calls: due in the window, failures included; ok: the OK answers, whose latency is shown; ok/s: OK "
          f"answers finished in the window per second; p99 and p99.9 need {TAIL_SAMPLES['p99']:,} and "
          f"{TAIL_SAMPLES['p99.9']:,} OK answers, else '-')")
    print(hdr)
    cols = ("throughput", "p50", "p90", "p99", "p99.9", "max", "send_lag_p99")
    for m, v in real["methods"].items():
        err = ",".join(f"{k}={n}" for k, n in v["errors"].items()) or "0"
        print(f"{m:<13}{v['calls']:>8}{v['ok']:>8}" + "".join(_fmt(_tail(v, k)) for k in cols) + f"  {err}")
        c = (ceil or {}).get("methods", {}).get(m)
        if c:
            cerr = ",".join(f"{k}={n}" for k, n in c["errors"].items()) or "0"
            print(f"{'  ceiling':<13}{c['calls']:>8}{c['ok']:>8}" + "".join(_fmt(_tail(c, k)) for k in cols)
                  + f"  {cerr}")
            print(f"{'  ratio':<13}{'':>16}" + "".join(_fmt(_ratio(_tail(v, k), _tail(c, k)), d=3)
                                                    for k in cols[:-1]))


def histogram_png(path: str, phases: dict) -> str:
    import matplotlib       # importable: --png is refused at parse otherwise (_cli.png_file)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in phases if phases[n].get("raw_ms")]
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), squeeze=False)
    for ax, n in zip(axes[:, 0], names):
        for m, lat in phases[n]["raw_ms"].items():
            if len(lat):
                ax.hist(lat, bins=np.logspace(np.log10(max(lat.min(), 0.05)), np.log10(lat.max() + 1e-3), 60),
                        histtype="step", label=m)
        ax.set_xscale("log")
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("latency ms")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return f"latency histogram: {path}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments, every one checked here (exit 2, the reason on the last line) before any server starts."""
    positive, at_least_0, share = number(float, 0, above=True), number(float, 0), number(float, 0, 1)
    count = number(int, 1)
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="bundle root or version dir (ids; served unless --target)")
    ap.add_argument("--target", help="host:port of a running server (loopback only)")
    ap.add_argument("--workers", type=number(int, 0), default=2,
                    help="recserve's worker processes (0: in process), and the ceiling's")
    ap.add_argument("--cpu-affinity", default="auto",
                    help="server workers' pinning, the same for recserve and the ceiling (auto, off, 0,1)")
    ap.add_argument("--clients", type=count, default=2, help="client processes")
    ap.add_argument("--channels", type=count, default=4,
                    help="connections per client process (calls round-robin over them)")
    ap.add_argument("--concurrency", type=count, default=16,
                    help="closed loop: outstanding calls in total, a multiple of --clients")
    ap.add_argument("--rate", type=at_least_0, default=0.0, help="open loop: calls/s in total (0: closed loop only)")
    ap.add_argument("--duration", type=positive, default=10.0, help="seconds per phase")
    ap.add_argument("--warmup", type=at_least_0, default=1.0,
                    help="seconds dropped at the start of each phase (at most half of --duration)")
    ap.add_argument("--deadline", type=positive, default=5.0, help="per-call deadline, seconds")
    ap.add_argument("--max-inflight", type=count, default=256, help="open loop: per client process")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--open-only", action="store_true",
                    help="skip the closed loop: only the open loop at --rate (a sustained run)")
    ap.add_argument("--sweep-fractions", type=number_list(float, 0), default="0.25,0.5,0.7,0.85,1.0,1.2")
    ap.add_argument("--p99-ms", type=positive, default=15.0)
    ap.add_argument("--mix", default="recommend=0.8,similar=0.15,events=0.05")
    ap.add_argument("--k", type=number(int, 1, MAX_K), default=20, help=f"items per answer, 1..{MAX_K} (as the server)")
    ap.add_argument("--zipf", type=at_least_0, default=1.1)
    ap.add_argument("--unknown", type=share, default=0.05, help="share of Recommend calls for unknown users")
    ap.add_argument("--anon", type=share, default=0.05, help="share of Recommend calls with an empty user id")
    ap.add_argument("--filter-share", type=share, default=0.1,
                    help="share of the Recommend and of the SimilarItems calls with a category filter")
    ap.add_argument("--explain-share", type=share, default=0.0)
    ap.add_argument("--events-batch", type=count, default=3)
    ap.add_argument("--pool", type=count, default=4000, help="pre-built requests per client")
    ap.add_argument("--client-loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="the client processes' event loop (uvloop: asyncio's where uvloop is not installed)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the transport ceiling (not recommended)")
    ap.add_argument("--json", type=output_file, help="write the JSON record here")
    ap.add_argument("--png", type=png_file, help="latency histogram PNG (needs matplotlib)")
    a = ap.parse_args(argv)
    if not a.open_only:                     # the closed loop splits --concurrency over the client processes
        check_concurrency(ap, a.concurrency, a.clients)
    if a.explain_share > 0 and a.k > MAX_EXPLAIN:       # the server refuses such a Recommend
        ap.error(f"--k {a.k} with --explain-share {a.explain_share:g}: the server explains answers of k up to "
                 f"{MAX_EXPLAIN} items")
    if a.unknown + a.anon > 1:
        ap.error(f"--unknown {a.unknown:g} and --anon {a.anon:g}: shares of the Recommend calls, at most 1 together")
    if not all(f > 0 for f in a.sweep_fractions):
        ap.error("--sweep-fractions must all be positive")
    if a.open_only and (a.rate <= 0 or a.sweep):
        ap.error("--open-only needs --rate R and no --sweep")
    if a.target:
        host = a.target.rpartition(":")[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            ap.error("--target must be a loopback address")
    from recserve.server import worker_cpus

    try:
        worker_cpus(a.cpu_affinity, a.workers)      # as recserve checks it, before anything is started
    except ValueError as exc:
        ap.error(f"--cpu-affinity: {exc}")
    return a


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = {"mix": parse_mix(a.mix), "k": a.k, "zipf": a.zipf, "unknown": a.unknown, "anon": a.anon,
           "filter_share": a.filter_share, "explain_share": a.explain_share, "events_batch": a.events_batch}
    ids = read_ids(a.bundle)
    cfg["filter_applies_to"] = filtered_methods(ids, cfg)     # what the filter share is a share of
    pools = [build_requests(ids, cfg, seed=i, n=a.pool) for i in range(a.clients)]
    # RECSERVE_* settings reach the servers this script starts (recserve's workers and the ceiling's)
    server_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("RECSERVE_")}
    # what was run, not only what was asked: the warm-up is capped at half of each phase (phase_config)
    warmup = phase_config("closed", duration=a.duration, channels=a.channels, warmup=a.warmup)["warmup"]
    record = cli_record(a, workload=cfg, server_env=server_env, phases={},
                        server_workers=None if a.target else a.workers,      # null: the target's, unknown
                        ceiling_workers=None if a.no_ceiling else a.workers)
    record["config"]["warmup"] = warmup
    if warmup != a.warmup:
        record["config"]["warmup_given"] = a.warmup
    print(f"machine: {machine()}  grpcio {record['versions']['grpcio']}  uvloop "
          f"{record['versions'].get('uvloop', 'not installed')}")
    workers = f"{a.workers}" if not a.target else \
        "unknown (--target)" if a.no_ceiling else f"unknown (--target; the ceiling runs {a.workers})"
    print(f"workload: {cfg}; {a.clients} client processes; server workers {workers} (cpu affinity "
          f"{a.cpu_affinity}); server settings from the environment: {server_env or 'none'}")
    if warmup != a.warmup:
        print(f"warm-up {warmup:g} s: --warmup {a.warmup:g} capped at half of --duration")
    servers = []
    # a SIGTERM (a `timeout`, a CI job being cancelled) still stops the servers this run started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.TemporaryDirectory(prefix="recserve-load-")
    try:
        if a.target:
            check_reachable(a.target)       # one line and exit 1 after 10 s, ceiling or not
            real_t = a.target
        else:
            s = start_real(a.bundle, a.workers, os.path.join(tmp.name, "events"), a.cpu_affinity)
            servers.append(s)
            real_t = f"127.0.0.1:{s.port}"
        targets = {"recserve": real_t}
        pids = {"recserve": servers[0].proc.pid if servers else None}
        if not a.no_ceiling:
            canned = record_responses(real_t, [r for pool in pools for r in pool])
            sizes = {m: (float(np.mean([len(b) for b in v])) if v else None) for m, v in canned.items()}
            record["ceiling_response_bytes_mean"] = sizes       # null: no OK answer recorded, size unknown
            print("ceiling answers with recorded responses, mean bytes: "
                  + ", ".join(f"{m} {'unknown' if v is None else f'{v:.0f}'}" for m, v in sizes.items()))
            for m in cfg["mix"]:
                if not canned[m]:
                    print(f"warning: recserve answered no {m} call OK while its responses were recorded: the "
                          f"ceiling answers {m} with an empty message (recserve's message size unknown)",
                          file=sys.stderr)
            if a.target:
                print(f"warning: the ceiling runs {a.workers} worker(s) (--workers); its ratios assume the target "
                      f"runs as many", file=sys.stderr)
            rf = os.path.join(tmp.name, "responses.pkl")
            Path(rf).write_bytes(pickle.dumps(canned))
            c = start_ceiling(rf, a.workers, a.cpu_affinity)
            servers.append(c)
            targets["ceiling"] = f"127.0.0.1:{c.port}"
            pids["ceiling"] = c.proc.pid
        base = {"channels": a.channels, "duration": a.duration, "warmup": a.warmup, "deadline": a.deadline,
                "max_inflight": a.max_inflight, "client_loop": a.client_loop}
        per = a.concurrency // a.clients

        def both(name, phase):
            res = {}
            for tname, t in targets.items():   # alternate servers phase by phase, same client
                res[tname] = run_phase(t, pools, phase, pids.get(tname))
                record["phases"][f"{name} [{tname}]"] = res[tname]
            print_phase(name, res["recserve"], res.get("ceiling"))
            return res

        closed, sat, status = {}, float("nan"), 0
        if not a.open_only:
            closed = both(f"closed loop, concurrency {per * a.clients}",
                          phase_config("closed", concurrency=per, **base))
            sat = closed["recserve"]["methods"]["ALL"]["throughput"]
        if a.rate > 0:
            both(f"open loop, {a.rate:g}/s", phase_config("open", rate=a.rate / a.clients, **base))
        if a.sweep and not sat > 0:
            status = 1
            record["sweep"] = {"refused": "the closed loop had no OK answer", "closed_loop_saturation": sat}
            print(f"sweep refused: the closed loop had no OK answer (saturation {sat:.0f}/s), so there is no "
                  f"rate to sweep", file=sys.stderr)
        elif a.sweep:
            rows = []
            for f in a.sweep_fractions:
                rate = sat * f
                r = both(f"sweep: open loop {rate:.0f}/s ({f:g} x closed-loop saturation)",
                         phase_config("open", rate=rate / a.clients, **base))
                rows.append(sweep_row(rate, r["recserve"], r.get("ceiling"), a.p99_ms))
            summary = summarize_sweep(rows)
            record["sweep"] = {"rows": rows, "closed_loop_saturation": sat, "p99_bound_ms": a.p99_ms,
                               "keep_up_share": KEEP_UP, **summary,
                               "max_rate_p99_under_bound": summary["p99_bound"]["max_rate"],
                               "max_rate_kept_up": summary["kept_up"]["max_rate"]}
            print(f"\n== sweep summary (closed-loop saturation {sat:.0f}/s)")
            print(f"(p99 over at least {TAIL_SAMPLES['p99']:,} OK answers, else '-', and the bound not judged)")
            print(f"{'offered/s':>10}{'due/s':>9}{'achieved/s':>11}{'ok':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
                  f"{'ceil p99':>10}{'p99 ratio':>10}")
            for r in rows:
                p99 = _tail({"ok": r["ok"], "p99": r["p99"]}, "p99")
                cp99 = _tail({"ok": r["ceiling_ok"], "p99": r["ceiling_p99"]}, "p99")
                print(f"{r['offered']:>10.0f}{r['due_per_s']:>9.1f}{r['achieved']:>11.1f}{r['ok']:>8}{_fmt(r['p50'])}"
                      f"{_fmt(p99)}{r['errors']:>8}{_fmt(cp99, 10)}{_fmt(_ratio(p99, cp99), 10, 3)}")
            print(f"p99 < {a.p99_ms:g} ms and no errors: {describe(summary['p99_bound'])}")
            print(f"kept up (OK answers finished in the window >= {KEEP_UP:.0%} of the calls due in it): "
                  f"{describe(summary['kept_up'])}")
        if "ceiling" in closed:
            ratio = _ratio(sat, closed["ceiling"]["methods"]["ALL"]["throughput"])
            rr = closed["recserve"]["methods"].get("Recommend", {}).get("throughput", float("nan"))
            rc = closed["ceiling"]["methods"].get("Recommend", {}).get("throughput", float("nan"))
            record["throughput_ratio_to_ceiling"] = ratio
            print(f"\nclosed-loop throughput: recserve {sat:.1f}/s, ceiling "
                  f"{closed['ceiling']['methods']['ALL']['throughput']:.1f}/s, ratio {ratio:.3f}; "
                  f"Recommend only {rr:.1f} vs {rc:.1f}/s, ratio {_ratio(rr, rc):.3f}")
            cr = closed["recserve"]["server_cpu_ms_per_call"]
            cc = closed["ceiling"]["server_cpu_ms_per_call"]
            if not np.isfinite(cr):
                print("server CPU per call: not measured for recserve (the server was not started by this script)")
                cr = None
        if "ceiling" in closed and cr is not None:
            record["server_cpu_ratio_ceiling_to_recserve"] = _ratio(cc, cr)
            print(f"server CPU per call in that phase: recserve {cr:.3f} ms, ceiling {cc:.3f} ms: recserve does "
                  f"{_ratio(cc, cr):.3f} of the ceiling's calls per CPU-second")
            # server and load generator share the cores: when both runs keep them busy, the throughput ratio
            # is the ratio of the machine's CPU per call (server + load generator)
            tr = cr + closed["recserve"].get("client_cpu_ms_per_call", float("nan"))
            tc = cc + closed["ceiling"].get("client_cpu_ms_per_call", float("nan"))
            record["machine_cpu_ms_per_call"] = {"recserve": tr, "ceiling": tc}
            print(f"CPU per call, server + load generator: recserve {tr:.3f} ms, ceiling {tc:.3f} ms "
                  f"(ratio {_ratio(tc, tr):.3f}; it equals the throughput ratio when both runs keep every core busy)")
    except ClientFailure as exc:        # a phase without figures: its reason in one line, servers stopped
        print(f"load.py: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in servers:
            s.stop()
        tmp.cleanup()
    if a.png:
        print(histogram_png(a.png, record["phases"]))
    else:
        print("no --png given: latency histogram skipped" if importlib.util.find_spec("matplotlib")
              else "matplotlib is not importable: latency histogram PNG skipped")
    for ph in record["phases"].values():
        ph.pop("raw_ms", None)
    if a.json:
        write_json(a.json, record)
        print(f"JSON record: {a.json}")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:       # Ctrl-C: the servers were stopped on the way out; no traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)
