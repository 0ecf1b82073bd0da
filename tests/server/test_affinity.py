"""Worker CPU pinning (``cpu_affinity``): the setting's meaning, and what a real server does with it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recserve.server import worker_cpus

from srvutil import ROOT

ALLOWED = sorted(os.sched_getaffinity(0))


def test_auto_pins_one_cpu_per_worker_when_there_are_enough():
    assert worker_cpus("auto", 1) is None                        # one worker: nothing to separate
    assert worker_cpus("auto", len(ALLOWED) + 1) is None         # more workers than CPUs: the kernel decides
    if len(ALLOWED) >= 2:
        assert worker_cpus("auto", 2) == ALLOWED[:2]
        assert worker_cpus("AUTO", len(ALLOWED)) == ALLOWED


def test_off_and_explicit_lists():
    assert worker_cpus("off", 2) is None
    assert worker_cpus(str(ALLOWED[0]), 3) == [ALLOWED[0]] * 3
    assert worker_cpus(",".join(map(str, ALLOWED)), 2 * len(ALLOWED)) == ALLOWED * 2


@pytest.mark.parametrize("bad", ["fast", "0,x", str(max(ALLOWED) + 64), ","])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match="cpu_affinity"):
        worker_cpus(bad, 2)


@pytest.mark.parametrize("blank", ["", " "])
def test_a_blank_setting_is_refused_not_read_as_auto(blank):
    """``--cpu-affinity ""`` was auto, and ``" "`` said "CPUs must be among the allowed [0, 1]"."""
    with pytest.raises(ValueError, match="^cpu_affinity must be auto, off or a CPU list like 0,1; got ''$"):
        worker_cpus(blank, 2)


def test_an_in_process_server_is_pinned_to_the_lists_first_cpu(start_server, shared_root, facts, tmp_path):
    """``--workers 0 --cpu-affinity N`` ran on every CPU: the in-process path never pinned."""
    s = start_server(shared_root, "--workers", "0", "--cpu-affinity", str(ALLOWED[-1]),
                     "--events-dir", str(tmp_path / "ev"))
    from srvutil import worker_pids

    (pid,) = worker_pids(s, facts["user"], calls=2)
    threads = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    assert len(threads) > 1 and all(sorted(os.sched_getaffinity(t)) == [ALLOWED[-1]] for t in threads), [
        (t, sorted(os.sched_getaffinity(t))) for t in threads]


def test_serve_refuses_a_bad_setting_with_one_line(shared_root):
    r = subprocess.run([sys.executable, "-m", "recserve.cli", "serve", "--bundle", str(shared_root), "--port", "0",
                        "--workers", "2", "--cpu-affinity", "0,x"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2
    assert r.stderr.strip().startswith("recserve serve: cpu_affinity") and len(r.stderr.strip().splitlines()) == 1


def test_off_leaves_workers_unpinned(start_server, shared_root, facts, tmp_path):
    from srvutil import worker_pids
    from srvutil import wait_for

    s = start_server(shared_root, "--workers", "2", "--cpu-affinity", "off", "--events-dir", str(tmp_path / "ev"))
    pids: set[int] = set()
    assert wait_for(lambda: len(pids.update(worker_pids(s, facts["user"])) or pids) == 2, 30)
    assert all(sorted(os.sched_getaffinity(p)) == ALLOWED for p in pids)
