"""Every bench script refuses a bad argument in one line with exit code 2, before any server starts or any
work is done; a path named on the command line that does not exist is such an argument."""
from __future__ import annotations

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
