"""Instructions per call of the request pipeline, counted by valgrind's callgrind: a comparison of two code
trees (or settings) that the machine's load cannot move.

Timed comparisons on a shared machine have a noise floor of several per cent (``bench/compare.py``'s A/A
rounds); an instruction count is the same for the same binary, inputs and environment whatever else runs.
This script builds one pool of requests (``bench/load.py``'s workload: Zipf users, unknown and anonymous
ones, a category filter on 10 % of the Recommends and of the SimilarItems), then runs the pipeline in
process (``Recommender``, no gRPC) over it under
``valgrind --tool=callgrind``, once with ``--calls N1`` and once with ``N2`` measured calls per side: the
difference of the two totals over ``N2 - N1`` is the instructions of one call, start-up, imports and the
bundle's loading removed. Side A runs with this environment plus ``--a``, side B with ``--b``
(``NAME=VALUE`` pairs: ``PYTHONPATH=/path/to/another/tree`` compares code, ``RECSERVE_*`` settings compare
settings). Before the measured calls each run writes the pool's first ``--events`` RecordEvents to an empty
event store and makes ``--warmup`` calls; the clock (``time.time``) is fixed, so every run sees the same
times. It also says whether the two sides gave the same answers (the item ids of the warm-up's answers and
of the first measured ones, as many as the shorter run's, in order; scores are not compared). Before any
run it imports recserve once per side and refuses a side whose ``PYTHONPATH`` does not hold the recserve it
would import (a wrong path would silently measure this tree).

    python bench/instructions.py --bundle DIR [--b PYTHONPATH=/tmp/old] [--a NAME=VALUE,...]
                                 [--method recommend|similar|mix] [--calls 200,600] [--warmup 200]
                                 [--events 1000] [--json OUT.json]

About 50 times slower than the calls themselves: a 100,000-item bundle with ``--calls 100,300`` takes two
minutes per run.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = {"recommend": "Recommend", "similar": "SimilarItems", "mix": None}
MIX = {"mix": {"Recommend": 0.8, "SimilarItems": 0.15, "RecordEvents": 0.05}, "k": 20, "zipf": 1.1,
       "unknown": 0.05, "anon": 0.05, "filter_share": 0.1, "explain_share": 0.0, "events_batch": 3}
# one thread everywhere (as in a server worker), and none spinning idle: their spin loops count
# instructions that depend on timing
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
EVENT_MAP = 1 << 30     # the event store's map: valgrind cannot reserve the server's default 64 GiB


# -- the child: one run of the pipeline, under callgrind ----------------------------------------------------

def child(spec_path: str) -> None:
    """Runs what ``spec_path`` (JSON) asks and writes its result beside it. Imports recserve only here,
    from whatever tree this process's path holds, after fixing the clock."""
    spec = json.loads(Path(spec_path).read_text())
    clock = [0.0]
    time.time = lambda: clock[0]
    import recserve
    from recserve.bundle import Bundle
    from recserve.config import load
    from recserve.events import Event, EventStore
    from recserve.pipeline.recommender import Recommender
    from recserve.service import _filters, _rec_request
    from recserve.v1 import recommender_pb2 as pb
    from threadpoolctl import threadpool_limits

    with open(spec["pool"], "rb") as f:
        pool = pickle.load(f)
    warm, n = spec["warmup"], spec["n"]
    with Bundle.open(spec["bundle"]) as b, threadpool_limits(1):
        t0 = float(b.data_end) + 86400.0
        clock[0] = t0
        store = EventStore(os.path.join(spec["tmp"], "events"), map_size=EVENT_MAP)
        rec = Recommender(b, store, load({}, env=os.environ).pipeline_overrides())

        def record(body):
            r = pb.RecordEventsRequest.FromString(body)
            return rec.record_events([Event(e.user_id, e.item_id, int(e.type) - 1, e.timestamp) for e in r.events])

        for i, body in enumerate([x for m, x in pool if m == "RecordEvents"][:spec["events"]]):
            clock[0] = t0 + i
            record(body)
        clock[0] = t0 + spec["events"] + 3600.0
        calls = []
        for m, body in pool:
            if spec["method"] and m != spec["method"]:
                continue
            if m == "Recommend":
                calls.append((rec.recommend, _rec_request(pb.RecommendRequest.FromString(body), None)))
            elif m == "SimilarItems":
                r = pb.SimilarItemsRequest.FromString(body)
                calls.append((lambda a: rec.similar(*a), (r.item_id, r.k, _filters(r.filters))))
            else:
                calls.append((record, body))
            if len(calls) == spec["build"]:      # as many in every run: decoding them is not per call
                break
        if len(calls) < spec["build"]:
            raise SystemExit(f"the pool holds {len(calls)} calls, fewer than {spec['build']}")
        calls = calls[:warm + n]
        start = clock[0]
        # the answers compared across sides: the warm-up's and the first spec["hashed"] measured ones, as many
        # in every run, so that their hashing cancels in the difference of two runs (it is not the pipeline's)
        answers, hashed = hashlib.sha256(), range(warm + spec["hashed"])
        for i, (fn, arg) in enumerate(calls):
            clock[0] = start + 0.01 * i
            out = fn(arg)
            if i in hashed and hasattr(out, "items") and not callable(out.items):
                answers.update(" ".join(it.item_id for it in out.items).encode() + b"\n")
    Path(spec["result"]).write_text(json.dumps({"recserve": recserve.__file__, "calls": n,
                                                "answers": answers.hexdigest()}))


# -- the parent ---------------------------------------------------------------------------------------------

def total_ir(path: str | os.PathLike) -> int:
    """The instructions a callgrind output file counted (its ``totals:`` or ``summary:`` line)."""
    for line in Path(path).read_text(errors="replace").splitlines():
        m = re.match(r"(?:totals|summary):\s+(\d+)", line)
        if m:
            return int(m.group(1))
    raise ValueError(f"{path}: no totals line (not a callgrind output file?)")


def per_call(ir: dict[int, int]) -> float:
    """Instructions of one call from the totals of two runs: ``(I(n2) - I(n1)) / (n2 - n1)``."""
    (n1, i1), (n2, i2) = sorted(ir.items())
    return (i2 - i1) / (n2 - n1)


def pool_size(method: str, calls: int, events: int) -> int:
    """Requests to draw so that the pool very likely holds ``calls`` of ``method`` and ``events`` writes."""
    share = MIX["mix"][METHODS[method]] if METHODS[method] else 1.0
    return int(1.3 * max(calls / share, events / MIX["mix"]["RecordEvents"])) + 100


def run_side(valgrind: str, spec: dict, env: dict, out: Path) -> dict:
    """One run under callgrind; returns the child's result with the instructions counted."""
    spec_path = out.with_suffix(".json")
    spec = {**spec, "result": str(out.with_suffix(".result.json"))}
    spec_path.write_text(json.dumps(spec))
    cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve()),
           "--child", str(spec_path)]
    t = time.perf_counter()
    p = subprocess.run(cmd, env={**os.environ, **CHILD_ENV, **env}, capture_output=True, text=True)
    if p.returncode != 0:
        tail = [line for line in p.stderr.strip().splitlines() if not line.startswith("==")][-1:]
        why = " ".join(tail) or " ".join(p.stderr[-300:].split())
        raise RuntimeError(f"the run under callgrind failed (exit {p.returncode}): {why}")
    try:
        res = json.loads(Path(spec["result"]).read_text())
        res["ir"] = total_ir(out)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the run under callgrind left no result: {exc}") from None
    res["wall_s"] = time.perf_counter() - t
    return res


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from _cli import Parser, UsageError, check_bundle, git_commit, output_file, record, write_json
    from _servers import imported_tree
    from _timing import machine
    from _workload import build_requests, filtered_methods, read_ids
    from compare import check_sides, parse_settings
    from trainer.argtypes import number, number_list

    at_least_0 = number(int, 0)
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--a", default="", help="settings of side A (NAME=VALUE,...), beside this environment")
    ap.add_argument("--b", default=None, help="settings of side B (NAME=VALUE,...); none: side A alone")
    ap.add_argument("--method", choices=sorted(METHODS), default="recommend",
                    help="the calls measured: Recommends, SimilarItems, or the load mix in order (80/15/5)")
    ap.add_argument("--calls", type=number_list(int, 1), default="200,600",
                    help="measured calls of the two runs per side, N1,N2")
    ap.add_argument("--warmup", type=at_least_0, default=200, help="calls before the measured ones")
    ap.add_argument("--events", type=at_least_0, default=1000, help="RecordEvents calls written first")
    ap.add_argument("--seed", type=at_least_0, default=1, help="the request pool's seed")
    ap.add_argument("--valgrind", default="valgrind")
    ap.add_argument("--json", type=output_file)
    a = ap.parse_args(argv)
    ns = sorted(set(a.calls))
    if len(ns) != 2 or len(a.calls) != 2:
        raise UsageError("--calls: two different counts of measured calls, N1,N2 (e.g. 200,600)")
    sets = {"A": parse_settings(a.a, "--a")}
    if a.b is not None:
        sets["B"] = parse_settings(a.b, "--b")
        if sets["A"] == sets["B"]:
            ap.error("--a and --b are the same settings: nothing to compare")
    check_sides(ap, sets)       # a value recserve would refuse: refused here, as compare.py does, before any run
    valgrind = shutil.which(a.valgrind)
    if valgrind is None:
        raise UsageError(f"--valgrind: {a.valgrind!r} not found (Debian: apt-get install valgrind)")
    check_bundle(ap, a.bundle)
    trees = {}
    for side, env in sets.items():
        try:
            trees[side] = imported_tree({**os.environ, **CHILD_ENV, **env})       # as run_side runs it
        except ValueError as exc:
            ap.error(f"--{side.lower()}: {exc}")

    from recserve.bundle import resolve

    bundle = str(resolve(a.bundle))
    ids = read_ids(bundle)
    workload = {**MIX, "filter_applies_to": filtered_methods(ids, MIX)}
    pool = build_requests(ids, MIX, seed=a.seed, n=pool_size(a.method, a.warmup + ns[1], a.events))
    print(f"machine: {machine()}")
    sides = "; ".join(f"{side}: {sets[side] or 'this environment'} (recserve of {t}, {git_commit(t) or 'no git'})"
                      for side, t in trees.items())
    filtered = [m for m in workload["filter_applies_to"] if METHODS[a.method] in (None, m)]
    print(f"method: {a.method}; runs of {ns[0]} and {ns[1]} measured calls after {a.warmup} warm-up calls and "
          f"{a.events} RecordEvents; a category filter on "
          + (f"{MIX['filter_share']:.0%} of the {' and '.join(filtered)} calls" if filtered else "no call")
          + f"; {sides}", flush=True)
    runs: dict[str, dict[int, dict]] = {s: {} for s in sets}
    with tempfile.TemporaryDirectory(prefix="recserve-instructions-") as tmp:
        pool_path = Path(tmp) / "pool.pkl"
        pool_path.write_bytes(pickle.dumps(pool))
        for n in ns:
            for side, env in sets.items():
                work = Path(tmp) / f"{side}-{n}"
                work.mkdir()
                spec = {"pool": str(pool_path), "bundle": bundle, "method": METHODS[a.method], "warmup": a.warmup,
                        "n": n, "build": a.warmup + ns[1], "hashed": min(ns), "events": a.events, "tmp": str(work)}
                try:
                    r = runs[side][n] = run_side(valgrind, spec, env, work / "callgrind.out")
                except RuntimeError as exc:
                    print(f"side {side}, {n} calls: {exc}", file=sys.stderr)
                    return 1
                if Path(r["recserve"]).resolve().parent.parent != trees[side]:
                    print(f"side {side}: the run imported {r['recserve']}, not the recserve of {trees[side]}",
                          file=sys.stderr)
                    return 1
                print(f"  {side}, {n} calls: {r['ir']:,} instructions in {r['wall_s']:.0f} s", flush=True)
    summary = {side: per_call({n: r["ir"] for n, r in rs.items()}) for side, rs in runs.items()}
    print("\ninstructions per call:")
    for side, v in summary.items():
        print(f"  {side}: {v:,.0f}")
    fields = {"settings": sets, "workload": workload, "calls": ns, "per_call": summary,
              "trees": {side: {"path": str(t), "git": git_commit(t)} for side, t in trees.items()},
              "runs": {s: {str(n): r for n, r in rs.items()} for s, rs in runs.items()}}
    if "B" in sets:
        ratio = summary["B"] / summary["A"]
        same = all(runs["A"][n]["answers"] == runs["B"][n]["answers"] for n in ns)
        print(f"  B / A: {ratio:.5f} ({summary['B'] - summary['A']:+,.0f} per call); "
              f"the same answers: {'yes' if same else 'no'}")
        fields.update(ratio=ratio, same_answers=same)
    if a.json:
        write_json(a.json, record(a, **fields))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        raise SystemExit(main())
