"""The pipeline's CPU per Recommend against the time between two calls, in one process.

Inside the server a worker's Recommends are not back to back: gRPC's and the event loop's work, the other
processes and idle time run between them, and the same pipeline code then costs more CPU per call
(``bench/overhead.py`` measures that factor). This script separates one part of it: the time itself. Pinned to
one CPU, it runs the Recommends of ``bench/load.py`` (Recommend only) through the pipeline with, before
each call,

* ``back to back``: nothing;
* ``spin G``: a busy wait of G milliseconds (the CPU stays busy, in a loop that touches almost nothing);
* ``sleep G``: a sleep of G milliseconds (the CPU idles).

It adds up the thread CPU of the Recommend calls only (``time.thread_time``), in blocks of ``--block``
calls, the three modes in turn (order reversed every other block) so that the machine's drift hits them
alike, and prints per gap the median over blocks and each mode's per-block ratio to the back-to-back block
beside it. On a machine whose caches and predictors keep their state while a core waits, both ratios stay
near 1; where they grow with the gap, a server at a low or moderate rate pays that on every call.

    python bench/gaps.py --bundle DIR [--gaps 0.1,0.3,1] [--blocks 30] [--block 100] [--json FILE]
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _inproc import RECOMMEND_ONLY, rec_requests, recommender  # noqa: E402
from _cli import Parser, UsageError, check_bundle, output_file, record, write_json  # noqa: E402
from trainer.argtypes import number_list, positive_int  # noqa: E402
from _timing import machine  # noqa: E402
from _workload import build_requests, read_ids  # noqa: E402

MODES = ("back to back", "spin", "sleep")
MAX_GAP_MS = 1000.0         # a second between two calls: far beyond any gap this script is for


def _wait(mode: str, gap_s: float) -> None:
    if mode == "spin":
        end = time.perf_counter() + gap_s
        while time.perf_counter() < end:
            pass
    elif mode == "sleep":
        time.sleep(gap_s)


def measure(rec, reqs: list, gap_s: float, blocks: int, block: int) -> dict[str, np.ndarray]:
    """Per mode, the mean thread CPU per Recommend (ms) of each block."""
    out = {m: np.empty(blocks) for m in MODES}
    for i in range(blocks):
        start = (i * block) % max(len(reqs) - block, 1)
        chunk = reqs[start:start + block]
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            cpu = 0.0
            for r in chunk:
                _wait(mode, gap_s)
                t = time.thread_time()
                rec.recommend(r)
                cpu += time.thread_time() - t
            out[mode][i] = 1000.0 * cpu / len(chunk)
    return out


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--gaps", type=number_list(float, 0, MAX_GAP_MS), default="0.1,0.3,1",
                    help=f"milliseconds between two calls, comma-separated (above 0, at most {MAX_GAP_MS:g})")
    ap.add_argument("--blocks", type=positive_int, default=30, help="blocks per gap and mode")
    ap.add_argument("--block", type=positive_int, default=100, help="Recommends per block")
    ap.add_argument("--json", type=output_file)
    a = ap.parse_args(argv)
    gaps = a.gaps
    if min(gaps) <= 0:
        ap.error("argument --gaps: each must be above 0")
    check_bundle(ap, a.bundle)
    from recserve.bundle import BundleError

    with tempfile.TemporaryDirectory(prefix="recserve-gaps-") as tmp, contextlib.ExitStack() as stack:
        try:
            rec = stack.enter_context(recommender(a.bundle, f"{tmp}/ev"))
        except BundleError as exc:      # hashes that do not verify: refused as the server refuses it
            raise UsageError(f"--bundle: {exc}") from None
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        print(f"machine: {machine()}; pinned to CPU {cpu}", flush=True)
        reqs = rec_requests(build_requests(read_ids(a.bundle), RECOMMEND_ONLY, 0, max(1000, 2 * a.block)))
        result = record(a, gaps={})
        for r in reqs[:300]:
            rec.recommend(r)
        print(f"thread CPU per Recommend, median over {a.blocks} blocks of {a.block} calls; "
              "ratio: per block to the back-to-back block beside it, median [quartiles]")
        print(f"{'gap ms':>7}  {'back to back':>12}  {'spin':>7}  {'sleep':>7}  "
              f"{'spin ratio':>17}  {'sleep ratio':>17}")
        for gap in gaps:
            t = measure(rec, reqs, gap / 1000.0, a.blocks, a.block)
            base = t["back to back"]
            row, rec_gap = [], {m: float(np.median(t[m])) for m in MODES}
            for mode in ("spin", "sleep"):
                q1, q2, q3 = np.percentile(t[mode] / base, [25, 50, 75])
                row.append(f"{q2:5.2f} [{q1:.2f}-{q3:.2f}]")
                rec_gap[f"{mode}_ratio"] = [float(q1), float(q2), float(q3)]
            print(f"{gap:>7g}  {rec_gap['back to back']:9.3f} ms  {rec_gap['spin']:7.3f}  "
                  f"{rec_gap['sleep']:7.3f}  {row[0]:>17}  {row[1]:>17}", flush=True)
            result["gaps"][str(gap)] = rec_gap
    if a.json:
        write_json(a.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
