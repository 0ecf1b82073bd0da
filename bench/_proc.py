"""What a server's process tree used on Linux, read from /proc: CPU seconds and context switches of every
process and thread under one pid (the server's supervisor and its workers)."""
from __future__ import annotations

import os
from pathlib import Path


def _switches(pid: int) -> int:
    """Context switches (voluntary + involuntary) of every thread of process ``pid`` so far."""
    n = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            for line in Path(f"/proc/{pid}/task/{t}/status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    n += int(line.split()[1])
        except OSError:
            continue
    return n


def tree_stats(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, context switches) of process ``pid`` and its descendants, all their
    threads. A thread that exits in between takes its switches with it, so read both ends while it lives."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(d)] = int(f[1])
        cpu[int(d)] = (int(f[11]) + int(f[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(cpu.get(p, 0.0) for p in tree), sum(_switches(p) for p in tree)
