"""What the bench scripts do at their edges: the workload's filters, a bundle that does not verify, a run
with nothing measured, a missing matplotlib, Ctrl-C, and a gap too short for two decimals."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# runs a script as python would, with ``PRELUDE`` run first (argv: the script, then its arguments)
RUN = "import runpy, sys; {prelude}; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def _run(args, prelude="pass", timeout=120, **kw):
    return subprocess.run([sys.executable, "-c", RUN.format(prelude=prelude), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)}, **kw)


def test_the_filter_share_applies_to_similar_items_too(demo_bundle):
    """--mix similar=1 --filter-share 1 sent SimilarItems without a filter, and the record said 1.0."""
    from _inproc import RECOMMEND_ONLY
    from _workload import build_requests, parse_mix, read_ids

    from recserve.v1 import recommender_pb2 as pb

    ids = read_ids(str(demo_bundle))
    cats = set(ids["category"])
    assert cats

    def similar(share):
        cfg = {**RECOMMEND_ONLY, "mix": parse_mix("similar=1"), "filter_share": share}
        return [pb.SimilarItemsRequest.FromString(b) for _, b in build_requests(ids, cfg, 0, 400)], cfg

    got, cfg = similar(1.0)
    assert all(len(r.filters.include_categories) == 1 and r.filters.include_categories[0] in cats for r in got)
    from _workload import filtered_methods      # what the printed and recorded workload say it is applied to

    assert filtered_methods(ids, cfg) == ["SimilarItems"]
    got, cfg = similar(0.0)
    assert not any(r.HasField("filters") for r in got) and filtered_methods(ids, cfg) == []
    got, _ = similar(0.5)
    assert 120 < sum(r.HasField("filters") for r in got) < 280
    # a mix's SimilarItems draw their filters apart: its Recommends and RecordEvents are those of before
    mix = {**RECOMMEND_ONLY, "mix": parse_mix("recommend=0.8,similar=0.15,events=0.05")}
    both = build_requests(ids, mix, 0, 400)
    assert filtered_methods(ids, mix) == ["Recommend", "SimilarItems"]
    assert filtered_methods({**ids, "category": []}, mix) == []
    plain = build_requests({**ids, "category": []}, {**mix, "filter_share": 0.0}, 0, 400)
    for (m, a), (_, b) in zip(both, plain):
        if m == "SimilarItems":
            ra, rb = pb.SimilarItemsRequest.FromString(a), pb.SimilarItemsRequest.FromString(b)
            ra.ClearField("filters")
            assert ra == rb


def test_gaps_refuses_a_bundle_whose_hashes_do_not_verify(demo_bundle, tmp_path):
    """It ended in a traceback of BundleError; item_updates.py and cold_users.py refuse it in one line."""
    shutil.copytree(demo_bundle, tmp_path / "b")
    with open(next((tmp_path / "b").glob("*/ranker.txt")), "a") as f:
        f.write("\n")
    p = _run(["bench/gaps.py", "--bundle", str(tmp_path / "b")])
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "--bundle: ranker.txt: sha256 mismatch (file changed since the build)"], p.stderr[-2000:]
    assert p.stdout == ""


def test_gaps_prints_a_short_gap_with_its_digits(demo_bundle):
    """A gap of 0.001 ms was printed as 0.00."""
    p = _run(["bench/gaps.py", "--bundle", str(demo_bundle), "--gaps", "0.001,0.25", "--blocks", "1", "--block", "5"])
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [ln.split()[0] for ln in p.stdout.splitlines()[-2:]]
    assert rows == ["0.001", "0.25"], p.stdout


def test_an_overhead_client_that_fails_is_one_line_and_exit_1(demo_bundle):
    """The driver raised RuntimeError with the client's whole traceback (its KeyError 'start' when no call was
    due in the measured window): a traceback, exit 1. Now one line, the client's last, and the servers stopped."""
    fail = ("import subprocess; subprocess.run = lambda *a, **k: subprocess.CompletedProcess(a, 1, '', "
            "'Traceback (most recent call last):\\n  File x\\nKeyError: \\'start\\'\\n')")
    p = _run(["bench/overhead.py", "--bundle", str(demo_bundle), "--rate", "20", "--duration", "1"], prelude=fail)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        "overhead.py: the client failed against ceiling: KeyError: 'start'"], p.stderr[-2000:]


@pytest.mark.parametrize("script", [["bench/load.py", "--bundle", "/nonexistent/b"], ["bench/scaling.py", "--quick"]])
def test_png_is_refused_at_once_without_matplotlib(script, tmp_path):
    """They ran the whole benchmark, printed "PNG skipped" and exited 0."""
    p = _run([*script, "--png", str(tmp_path / "x.png")], prelude="sys.modules['matplotlib'] = None")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "argument --png: matplotlib, which draws the PNG, cannot be " \
        "imported" in lines[0], p.stderr[-2000:]
    assert p.stdout == "" and not (tmp_path / "x.png").exists()
    # a path that cannot be written is refused as such, matplotlib or not (CI installs no matplotlib)
    p = _run([*script, "--png", str(tmp_path / "no" / "x.png")], prelude="sys.modules['matplotlib'] = None")
    assert p.returncode == 2 and "--png: directory" in p.stderr, p.stderr[-2000:]


def test_ctrl_c_on_load_is_one_line_and_exit_130(demo_bundle):
    """Ctrl-C (SIGINT to the terminal's process group) printed a 30-line KeyboardInterrupt traceback."""
    p = subprocess.Popen([sys.executable, "bench/load.py", "--bundle", str(demo_bundle), "--workers", "1",
                          "--clients", "1", "--concurrency", "2", "--duration", "60", "--pool", "100", "--no-ceiling"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    try:
        for line in p.stdout:            # the closed loop's phase has begun once the workload is printed
            if line.startswith("workload:"):
                break
        time.sleep(4)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130 and err.strip() == "interrupted", err[-3000:]
