"""Trainer build time and peak memory at several data sizes.

    python bench/build_time.py [--sizes 1000x500,4000x2000,16000x8000] [--factors 64] [--json OUT] [--quick]
    python bench/build_time.py --sizes 5000x2000x100000,50000x20000x1000000,250000x100000x5000000 --cli-defaults

A size is USERSxITEMS (the generator's 20 interactions per user) or USERSxITEMSxINTERACTIONS (about that many).
Per size: ``recserve-train synth`` writes the data (not timed), then ``recserve-train build`` runs as a child
process (``trainer.cli build`` as ``python -m`` runs it, the working directory off the path: ``--factors``,
``--ranker-users`` and ``--no-tune`` unless ``--tune``; with ``--cli-defaults``, no options at all, the build as
``recserve-train build --data D B`` runs it: tuning, every default); its wall time is measured around the child
and its peak resident memory is the child's own ``ru_maxrss`` from ``os.wait4`` (that process, not the sum over
children; Linux keeps the parent's peak at the child's exec as its floor, about 30 MiB here, below every
build's; figures in MiB, printed as MB). "wall s" is that process's whole wall time: Python start-up and
imports, reading the data, the build, the build's default evaluation and the bundle write. The trainer's stage
timings (the manifest's top-level stages) cover the build only: "stages s" is their sum (reading the tables is
one: ``load``) and "other s" the rest of the wall time (start-up, evaluation, write); the largest stages are
printed beside them. Ratio: time and memory relative to the smallest size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from _cli import Parser, output_file, python_m, record, sizes, write_json  # noqa: E402
from trainer.argtypes import positive_int  # noqa: E402
from _timing import machine  # noqa: E402


def build_sizes(text: str) -> list[tuple[int, int, int | None]]:
    """USERSxITEMS[xINTERACTIONS] sizes (:func:`_cli.sizes`)."""
    return sizes(text, interactions=True)


def run_child(cmd: list[str]) -> tuple[float, float, int, str]:
    """(wall s, peak RSS MB, exit code, stderr tail) of one child process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode(errors="replace")[-1500:]
    return wall, ru.ru_maxrss / 1024.0, p.returncode, tail


def top_stages(timings: dict) -> list[tuple[str, float]]:
    """The manifest's top-level stages (not their "a/b" sub-steps), longest first."""
    st = [(k, float(v)) for k, v in timings.items() if "/" not in k and isinstance(v, (int, float))]
    return sorted(st, key=lambda kv: -kv[1])


def main(argv=None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=build_sizes, default="1000x500,4000x2000,16000x8000",
                    help="USERSxITEMS or USERSxITEMSxINTERACTIONS, comma separated")
    ap.add_argument("--factors", type=positive_int, default=64)
    ap.add_argument("--ranker-users", type=positive_int, default=3000)
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--cli-defaults", action="store_true",
                    help="build with no options, as `recserve-train build --data D B` (ignores --factors, "
                         "--ranker-users, --tune)")
    ap.add_argument("--json", type=output_file)
    ap.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    a = ap.parse_args(argv)
    if a.quick:             # the settings the run uses are the ones its record holds
        a.sizes, a.factors, a.ranker_users = [(200, 100, None), (400, 200, None)], 16, 300
    if a.cli_defaults:      # ... and options it does not pass are not in it
        a.factors = a.ranker_users = a.tune = None
    runs = a.sizes
    print(f"machine: {machine()}; date {time.strftime('%Y-%m-%d')}")
    print("build options: " + ("none (the CLI's defaults)" if a.cli_defaults else
                               f"--factors {a.factors} --ranker-users {a.ranker_users}"
                               + ("" if a.tune else " --no-tune")))
    rows = []
    with tempfile.TemporaryDirectory(prefix="recserve-buildtime-") as tmp:
        for nu, ni, nx in runs:
            s = f"{nu}x{ni}" + (f"x{nx}" if nx else "")
            data, out = Path(tmp) / f"data-{s}", Path(tmp) / f"bundle-{s}"
            synth = [*python_m("trainer.cli"), "synth", str(data), "--users", str(nu), "--items", str(ni)]
            subprocess.run(synth + (["--interactions", str(nx)] if nx else []), check=True,
                           stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
            n_inter = sum(1 for _ in open(data / "interactions.csv")) - 1
            cmd = [*python_m("trainer.cli"), "build", str(out), "--data", str(data), "--no-progress"]
            if not a.cli_defaults:
                cmd += ["--factors", str(a.factors), "--ranker-users", str(a.ranker_users)]
                if not a.tune:
                    cmd.append("--no-tune")
            wall, rss, code, tail = run_child(cmd)
            if code != 0:
                print(f"build failed for {s} (exit {code}):\n{tail}", file=sys.stderr)
                return 1
            ver = (out / "CURRENT").read_text().strip()
            timings = json.loads((out / ver / "manifest.json").read_text())["training"].get("timings", {})
            stages_s = sum(v for _, v in top_stages(timings))
            rows.append({"size": s, "users": nu, "items": ni, "interactions": n_inter, "wall_s": wall,
                         "stages_s": stages_s, "other_s": wall - stages_s, "peak_rss_mb": rss, "stages": timings})
            print(f"  {s}: {wall:.1f} s, {rss:.0f} MB", flush=True)
    print("\nwall s: the `recserve-train build` process, start-up, evaluation and bundle write included; "
          "stages s: the manifest's top-level stages; other s: wall - stages")
    print(f"{'users x items':>24}{'interactions':>14}{'wall s':>9}{'stages s':>10}{'other s':>9}{'peak MB':>9}"
          f"{'x time':>8}{'x mem':>7}  top stages (s)")
    for r in rows:
        print(f"{r['size']:>24}{r['interactions']:>14}{r['wall_s']:>9.1f}{r['stages_s']:>10.1f}"
              f"{r['wall_s'] - r['stages_s']:>9.1f}{r['peak_rss_mb']:>9.0f}"
              f"{r['wall_s'] / rows[0]['wall_s']:>8.2f}{r['peak_rss_mb'] / rows[0]['peak_rss_mb']:>7.2f}  "
              + ", ".join(f"{k} {v:.1f}" for k, v in top_stages(r["stages"])[:4]))
    if a.json:
        write_json(a.json, record(a, rows=rows))
        print(f"JSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
