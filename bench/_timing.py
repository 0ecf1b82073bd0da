"""Interleaved timing: each candidate is called in turn, so machine noise hits all of them alike."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

# the CPUs this benchmark may use, as `nproc` prints them, taken when it starts (before a script pins itself)
NPROC = len(os.sched_getaffinity(0))


def machine() -> str:
    """One line: CPUs, CPU model, kernel, whether a hypervisor is below (the cpuinfo flag) and the idle driver,
    Python and numpy. Context switches, wake-ups and idle states cost far more in some virtual machines than
    on bare metal, and a server's figures move with them."""
    cpu, virt = "unknown CPU", "no hypervisor flag"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == "unknown CPU":
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    if "hypervisor" in line.split(":", 1)[1].split():
                        virt = "virtualized"
                    break
    except OSError:
        pass
    try:
        idle = Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip() or "none"
    except OSError:
        idle = "none"
    return (f"nproc={NPROC}, CPU={cpu}, kernel={platform.release()} ({virt}, cpuidle={idle}), "
            f"python={platform.python_version()}, numpy={np.__version__}")


def interleaved(funcs: dict[str, Callable[[], object]], repeats: int, warmup: int = 20) -> dict[str, np.ndarray]:
    """Per-call times in microseconds for each function, measured alternately."""
    for _ in range(warmup):
        for f in funcs.values():
            f()
    times = {k: np.empty(repeats) for k in funcs}
    items = list(funcs.items())
    for i in range(repeats):
        for name, f in (items if i % 2 == 0 else items[::-1]):
            t0 = time.perf_counter_ns()
            f()
            times[name][i] = (time.perf_counter_ns() - t0) / 1e3
    return times


def summary(t: np.ndarray) -> tuple[float, float]:
    return float(np.median(t)), float(np.percentile(t, 99))
