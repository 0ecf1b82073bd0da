"""Every bench script refuses a bad argument in one line with exit code 2, before any server starts or any
work is done; a path named on the command line that does not exist is such an argument."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MISSING = "/nonexistent/recserve-bench"
COMPARE = ["bench/compare.py", "--bundle", MISSING, "--b", "X=1"]


def _run(args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("args, says", [
    (["bench/item_updates.py", "--bundle", MISSING], f"--bundle: {MISSING} does not exist"),
    (["bench/protocols.py", "--data-dir", MISSING], f"--data-dir: {MISSING} does not exist"),
    (["bench/protocols.py", "--data", MISSING], f"--data: {MISSING} does not exist"),
    (["bench/quality.py", "--quick", "--movielens", MISSING], f"--movielens: {MISSING} does not exist"),
    (["bench/overhead.py", "--bundle", MISSING], f"--bundle: {MISSING} does not exist"),
    (["bench/overhead.py", "--bundle", MISSING, "--rate", "nan"], "argument --rate: must be a finite number"),
    (["bench/overhead.py", "--bundle", MISSING, "--rate", "inf"], "argument --rate: must be a finite number"),
    (["bench/overhead.py", "--bundle", MISSING, "--duration", "0"], "argument --duration: must be above 0"),
    (["bench/overhead.py", "--bundle", MISSING, "--warmup", "-1"], "argument --warmup: must be at least 0"),
    ([*COMPARE, "--pool", "0"], "argument --pool: must be at least 1"),
    ([*COMPARE, "--warmup", "nan"], "argument --warmup: must be a finite"),
    ([*COMPARE, "--deadline", "0"], "argument --deadline: must be above 0"),
    ([*COMPARE, "--channels", "0"], "argument --channels: must be at least"),
    ([*COMPARE, "--rate", "nan"], "argument --rate: must be a finite"),
    ([*COMPARE, "--duration", "inf"], "argument --duration: must be a"),
    ([*COMPARE, "--workers", "-1"], "argument --workers: must be at least"),
    (["bench/gaps.py", "--bundle", MISSING, "--gaps", "nan"], "argument --gaps: must be a finite number"),
    (["bench/gaps.py", "--bundle", MISSING, "--gaps", "0.1,0"], "argument --gaps: each must be above 0"),
    (["bench/gaps.py", "--bundle", MISSING], f"--bundle: {MISSING} does not exist"),
    # each client process runs concurrency / clients calls in flight: 5 over 3 ran 3 while the record said 5
    (["bench/load.py", "--bundle", MISSING, "--clients", "3", "--concurrency", "5"],
     "--concurrency 5: must be a multiple of --clients 3"),
    ([*COMPARE, "--clients", "2", "--concurrency", "1"], "--concurrency 1: must be a multiple of --clients 2"),
    # the editable install answered the import: this tree was measured on both sides, labelled as another
    (["bench/compare.py", "--bundle", MISSING, "--b", f"PYTHONPATH={MISSING}"],
     f"--b: PYTHONPATH={MISSING} holds no recserve package"),
    # no call due in the measured window: the client ended in KeyError 'start', the driver in a traceback
    (["bench/overhead.py", "--bundle", MISSING, "--rate", "0.2", "--warmup", "2", "--duration", "1"],
     "--rate 0.2 x --duration 1: fewer than one call due in the measured window"),
    # the server's limits (recserve/pipeline/messages.py): every call would have failed
    (["bench/load.py", "--bundle", MISSING, "--k", "501"], "argument --k: must be at most 500, not 501"),
    (["bench/load.py", "--bundle", MISSING, "--k", "101", "--explain-share", "0.1"],
     "--k 101 with --explain-share 0.1: the server explains answers of k up to 100 items"),
    # a value of the wrong type: found out by side B's run under valgrind, after side A's (minutes)
    (["bench/instructions.py", "--bundle", MISSING, "--b", "RECSERVE_SHARE_WORK=maybe"],
     "--b: environment RECSERVE_SHARE_WORK: share_work: cannot read 'maybe' as an integer"),
    (["bench/instructions.py", "--bundle", MISSING, "--b", "RECSERVE_SHARE_WORK=0", "--a", "RECSERVE_EF=0"],
     "--a: ef: must be in [1, "),
])
def test_a_bad_argument_is_one_line_and_exit_2(args, says):
    p = _run(args)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and says in lines[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr and p.stdout == ""       # refused before any work: nothing printed


def test_a_user_named_data_dir_that_is_not_trainer_data_is_one_line(tmp_path):
    p = _run(["bench/protocols.py", "--data-dir", str(tmp_path)])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("protocols.py: error: --data-dir:"), p.stderr


def test_a_data_dir_that_is_not_movielens_is_one_line(tmp_path):
    """protocols.py --data ended in a traceback of trainer.io.DataError; quality.py --movielens refused it."""
    p = _run(["bench/protocols.py", "--data", str(tmp_path)])
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"protocols.py: error: --data: {tmp_path} holds neither ml-100k's u.data nor ml-latest's ratings.csv "
        "(--help for usage)"], p.stderr[-2000:]
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n")          # ml-100k's ratings, without its u.item
    p = _run(["bench/protocols.py", "--data", str(tmp_path)])
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"protocols.py: error: --data: {tmp_path}: not ml-100k (no u.item) (--help for usage)"], p.stderr[-2000:]
    assert p.stdout == ""


@pytest.mark.parametrize("script", [["bench/compare.py", "--bundle", MISSING, "--b", "RECSERVE_EF=8"],
                                    ["bench/quality.py", "--quick"], ["bench/scaling.py", "--quick"],
                                    ["bench/build_time.py", "--quick"], ["bench/load.py", "--bundle", MISSING],
                                    ["bench/cold_users.py", "--bundle", MISSING, "--data", MISSING]])
@pytest.mark.parametrize("out, says", [("/nonexistent/x.json", "directory /nonexistent does not exist"),
                                       ("/tmp", "/tmp is a directory"),
                                       ("/proc/x.json", "/proc/x.json is not writable")])
def test_an_output_file_that_cannot_be_written_is_refused_before_any_work(script, out, says):
    """These wrote their record only at the end: a run of minutes, then a traceback and no record (and
    /proc passed a check of mode bits, which say root may write anywhere)."""
    p = _run([*script, "--json", out])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and f"argument --json: {says}" in lines[0], p.stderr[-2000:]
    assert p.stdout == ""


def test_an_existing_output_file_is_checked_and_left_as_it_is(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    from _cli import output_file

    f = tmp_path / "r.json"
    f.write_text("kept")
    assert output_file(str(f)) == str(f) and f.read_text() == "kept"
    assert output_file(str(tmp_path / "new.json")) and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    # a link is written through: to a file not there yet, in a directory that is (accepted, nothing made)...
    (tmp_path / "to").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "to" / "r.json")
    assert output_file(str(tmp_path / "link.json")) and not any((tmp_path / "to").iterdir())
    # ... or in one that is not (the run wrote nothing at its end)
    (tmp_path / "dead.json").symlink_to("/nonexistent-dir/r.json")
    with pytest.raises(argparse.ArgumentTypeError, match="directory /nonexistent-dir does not exist"):
        output_file(str(tmp_path / "dead.json"))


@pytest.mark.parametrize("args, says", [
    ([*COMPARE[:3], "--b", "RECSERVE_EF=abc"], "--b: environment RECSERVE_EF: ef: cannot read 'abc' as an int"),
    ([*COMPARE[:3], "--b", "RECSERVE_SHARE_WORK=0", "--a", "RECSERVE_EF=0"], "--a: ef: must be in [1, "),
    (["bench/load.py", "--bundle", MISSING, "--unknown", "0.7", "--anon", "0.7"],
     "--unknown 0.7 and --anon 0.7: shares of the Recommend calls, at most 1 together"),
])
def test_values_that_were_taken_as_they_came_are_refused(args, says):
    """compare.py checked its sides' setting names but not their values (a server started, then failed);
    load.py drew 70 % anonymous and 30 % unknown users, no known one, for --unknown 0.7 --anon 0.7."""
    p = _run(args)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and says in lines[0], p.stderr[-2000:]


def test_a_cache_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    p = _run(["bench/scaling.py", "--quick", "--cache", str(tmp_path / "f")])
    assert p.returncode == 2 and f"--cache: {tmp_path}/f is not a directory" in p.stderr.strip().splitlines()[-1]
    assert p.stdout == ""


def test_mix_shares_are_weights_and_shown_as_used():
    sys.path.insert(0, str(REPO / "bench"))
    from _workload import parse_mix

    assert parse_mix("recommend=0.5,similar=0.2") == pytest.approx({"Recommend": 0.5 / 0.7, "SimilarItems": 0.2 / 0.7})
    assert parse_mix("recommend=4,similar=1,events=0") == pytest.approx({"Recommend": 0.8, "SimilarItems": 0.2})


def test_a_setting_out_of_its_range_in_the_environment_is_refused():
    """RECSERVE_EF=0 passed the check of names and types, and the server it started refused it."""
    p = subprocess.run([sys.executable, "bench/load.py", "--bundle", MISSING], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "RECSERVE_EF": "0"})
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "load.py: error: the servers' settings (RECSERVE_*): ef: must be in [1, 1048576], got 0 (from RECSERVE_EF) "
        "(--help for usage)"], p.stderr
