"""bench/_proc.py: CPU seconds and context switches of a process tree, read from /proc."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")

# a parent that starts a child; the child burns CPU, then sleeps in short steps (each sleep a switch)
CHILD = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n" \
        "for _ in range(200): time.sleep(0.001)\ntime.sleep(30)\n"
PARENT = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {CHILD!r}])\ntime.sleep(30)\n"


def test_tree_stats_counts_the_children_cpu_and_switches():
    from _proc import tree_stats

    p = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        time.sleep(0.3)                       # the child exists and has started burning
        cpu0, sw0 = tree_stats(p.pid)
        time.sleep(2.0)
        cpu1, sw1 = tree_stats(p.pid)
        assert cpu1 - cpu0 >= 0.4              # the child's burn, counted under the parent's pid
        assert sw1 - sw0 >= 100                # its 200 short sleeps
        assert tree_stats(p.pid)[1] >= sw1     # counters only grow while the processes live
    finally:
        subprocess.run(["pkill", "-P", str(p.pid)], check=False)
        p.kill()
        p.wait()
