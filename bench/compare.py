"""Two settings of recserve against each other, in alternating rounds: is B faster than A on this machine?

A shared machine's speed drifts by tens of per cent within minutes, so two load tests run one after the
other compare the hours as much as the settings. This script starts two recserve servers on the same
bundle, A with this process's environment plus ``--a`` and B with ``--b`` (``NAME=VALUE`` pairs: the
server's ``RECSERVE_*`` settings, see the README's configuration table), and runs the same phase of
``bench/load.py`` (the same pre-built requests, the same client processes) against A and B in turn,
``--rounds`` times, the order swapped every round. Each round gives B's figures over A's from minutes
apart at most; it prints every round and the median of those ratios, in how many rounds B did better, and
the sign test's two-sided probability of a split at least that uneven if A and B were the same (ties left
out). An A/A run (one tree on both sides, e.g. ``--a PYTHONPATH=/t --b PYTHONPATH=/t/``) shows this machine's
spread.

    python bench/compare.py --bundle DIR --b RECSERVE_SHARE_WORK=0 [--a NAME=VALUE,...] [--rounds 4]
                            [--rate R] [--duration 15] [--workers 2 --clients 2 --channels 16 --concurrency 16]
                            [--mix recommend=0.8,similar=0.15,events=0.05] [--json OUT.json]

Closed loop (``--concurrency`` calls in flight) unless ``--rate`` asks for an open loop at that rate.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _cli import Parser, UsageError, check_bundle, check_concurrency, output_file, record, write_json  # noqa: E402
from _clients import phase_config, run_phase  # noqa: E402
from _inproc import RECOMMEND_ONLY  # noqa: E402
from _servers import imported_tree, server_env, start_real  # noqa: E402
from _timing import machine  # noqa: E402
from _workload import build_requests, filtered_methods, parse_mix, read_ids  # noqa: E402
from recserve.config import check_env, load as load_config, validate  # noqa: E402
from trainer.argtypes import number  # noqa: E402

# figures compared, and whether a higher value is better
FIGURES = {"throughput": True, "p99 Recommend": False, "p99 SimilarItems": False, "p99 ALL": False,
           "server CPU per call": False}


def parse_settings(s: str, flag: str) -> dict[str, str]:
    """``NAME=VALUE,NAME=VALUE`` -> dict; a one-line reason for anything else."""
    out = {}
    for part in (p.strip() for p in s.split(",")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or not name.strip().replace("_", "").isalnum():
            raise UsageError(f"{flag}: settings are NAME=VALUE pairs separated by commas; got {part!r}")
        name = name.strip()
        try:
            check_env({name: value}, where=flag)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        out[name] = value.strip()
    return out


def check_sides(ap, sets: dict[str, dict[str, str]]) -> None:
    """Exit 2, the reason in one line, when a side's settings (``{"A": {NAME: VALUE}, ...}``, beside this
    environment) hold a value recserve would refuse (a bool that is not one, a number out of its range):
    refused here, before any server starts or any run."""
    for name, side in sets.items():
        try:
            validate(load_config({}, env={**os.environ, **side}))
        except ValueError as exc:
            ap.error(f"--{name.lower()}: {exc}")


def figures(res: dict) -> dict[str, float]:
    m = res["methods"]
    return {"throughput": m["ALL"]["throughput"], "p99 Recommend": m.get("Recommend", {}).get("p99", float("nan")),
            "p99 SimilarItems": m.get("SimilarItems", {}).get("p99", float("nan")), "p99 ALL": m["ALL"]["p99"],
            "server CPU per call": res["server_cpu_ms_per_call"],
            "errors": float(sum(m["ALL"]["errors"].values()))}


def sign_test(better: int, worse: int) -> float:
    """Two-sided sign test: the probability that one side wins at least ``max(better, worse)`` of
    ``better + worse`` rounds (ties left out) when the two are the same, each round a fair coin."""
    n, k = better + worse, max(better, worse)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n)     # exact integers


def summary(rounds: list[dict]) -> dict[str, dict]:
    """Per figure: B / A in each round, their median, the rounds in which B did better, and the sign test's
    probability of a split at least that uneven between two equal sides."""
    out = {}
    for f, higher_better in FIGURES.items():
        r = np.array([x["B"][f] / x["A"][f] if x["A"][f] else float("nan") for x in rounds])
        ok = r[~np.isnan(r)]
        up, down = int(np.sum(ok > 1.0)), int(np.sum(ok < 1.0))
        better, worse = (up, down) if higher_better else (down, up)
        out[f] = {"ratios": r.tolist(), "median": float(np.median(ok)) if len(ok) else float("nan"),
                  "b_better_rounds": better, "b_worse_rounds": worse, "rounds": len(ok),
                  "sign_test_p": sign_test(better, worse)}
    return out


def main(argv=None) -> int:
    positive, at_least_0, count = number(float, 0, above=True), number(float, 0), number(int, 1)
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--a", default="", help="settings of server A (NAME=VALUE,...), beside this environment")
    ap.add_argument("--b", required=True, help="settings of server B (NAME=VALUE,...)")
    ap.add_argument("--rounds", type=count, default=4)
    ap.add_argument("--rate", type=at_least_0, default=0.0, help="open loop at this rate; 0: closed loop")
    ap.add_argument("--duration", type=positive, default=15.0)
    ap.add_argument("--warmup", type=at_least_0, default=1.0,
                    help="seconds dropped at the start of each run (at most half of --duration)")
    ap.add_argument("--workers", type=number(int, 0), default=2, help="worker processes (0: in process)")
    ap.add_argument("--clients", type=count, default=2)
    ap.add_argument("--channels", type=count, default=16)
    ap.add_argument("--concurrency", type=count, default=16,
                    help="closed loop: outstanding calls in total, a multiple of --clients")
    ap.add_argument("--deadline", type=positive, default=5.0, help="per-call deadline, seconds")
    ap.add_argument("--pool", type=count, default=4000, help="pre-built requests per client process")
    ap.add_argument("--mix", default="recommend=0.8,similar=0.15,events=0.05")
    ap.add_argument("--json", type=output_file)
    a = ap.parse_args(argv)
    sets = {"A": parse_settings(a.a, "--a"), "B": parse_settings(a.b, "--b")}
    check_sides(ap, sets)
    if sets["A"] == sets["B"]:
        ap.error("--a and --b are the same settings: nothing to compare")
    if a.rate <= 0:                         # the closed loop splits --concurrency over the client processes
        check_concurrency(ap, a.concurrency, a.clients)
    mix = parse_mix(a.mix)                  # a bad one: exit 2, its reason in one line
    trees = {}
    for name, side in sets.items():         # the code each side's server will run
        try:
            trees[name] = imported_tree(server_env(side))
        except ValueError as exc:
            ap.error(f"--{name.lower()}: {exc}")
    check_bundle(ap, a.bundle)

    cfg = {**RECOMMEND_ONLY, "mix": mix}     # bench/load.py's defaults otherwise
    ids = read_ids(a.bundle)
    cfg["filter_applies_to"] = filtered_methods(ids, cfg)     # what the filter share is a share of
    pools = [build_requests(ids, cfg, seed=i, n=a.pool) for i in range(a.clients)]
    base = {"duration": a.duration, "channels": a.channels, "deadline": a.deadline, "warmup": a.warmup}
    phase = phase_config("open", rate=a.rate / a.clients, **base) if a.rate > 0 else \
        phase_config("closed", concurrency=a.concurrency // a.clients, **base)
    what = f"open loop at {a.rate:g}/s" if a.rate > 0 else f"closed loop, concurrency {a.concurrency}"
    print(f"machine: {machine()}")
    print(f"A: {sets['A'] or 'this environment'} (recserve of {trees['A']}); B: {sets['B']} (recserve of "
          f"{trees['B']}); {what}, {a.duration:g} s per run, {a.rounds} rounds")
    print(f"workload: {cfg}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    servers, rounds = {}, []
    with tempfile.TemporaryDirectory(prefix="recserve-compare-") as tmp:
        try:
            for name in ("A", "B"):
                servers[name] = start_real(a.bundle, a.workers, f"{tmp}/events-{name}", env=sets[name])
            for i in range(a.rounds):
                row = {}
                for name in (("A", "B") if i % 2 == 0 else ("B", "A")):
                    s = servers[name]
                    row[name] = figures(run_phase(f"127.0.0.1:{s.port}", pools, phase, s.proc.pid))
                rounds.append(row)
                print(f"round {i + 1}: " + "; ".join(
                    f"{n} {row[n]['throughput']:,.1f} calls/s, p99 {row[n]['p99 ALL']:.2f} ms, "
                    f"CPU {row[n]['server CPU per call']:.3f} ms/call, {row[n]['errors']:.0f} errors"
                    for n in ("A", "B")), flush=True)
        finally:
            for s in servers.values():
                s.stop()
    summ = summary(rounds)
    print(f"\nB / A per round (median; rounds where B did better of {a.rounds}):")
    for f, v in summ.items():
        print(f"  {f:20s} " + " ".join(f"{x:6.3f}" for x in v["ratios"])
              + f"   median {v['median']:.3f}; B better in {v['b_better_rounds']} of {v['rounds']}"
              + f" (sign test p {v['sign_test_p']:.3g})")
    if a.json:
        write_json(a.json, record(a, settings=sets, trees={n: str(t) for n, t in trees.items()}, workload=cfg,
                                  phase=phase, rounds=rounds, summary=summ, server_env={
            k: v for k, v in sorted(os.environ.items()) if k.startswith("RECSERVE_")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
