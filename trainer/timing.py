"""Per-step wall-clock timing with a summary table."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Timer:
    def __init__(self, stream=None, verbose=True):
        self.steps: list[tuple[str, float]] = []
        self.stream = stream
        self.verbose = verbose
        self._prefix = ""
        self._open = 0                  # steps being timed now: one started inside another is part of it
        self._nested: set[int] = set()  # indexes into steps of those, left out of the total

    @contextmanager
    def __call__(self, name: str, quiet: bool = False):
        """Time the block as step ``name``; ``quiet``: only in the summary, no lines as it starts and ends."""
        t = time.perf_counter()
        full = self._prefix + name
        nested = self._open > 0
        verbose = self.verbose and not quiet
        if verbose:
            print(f"[{full}] ...", file=self.stream or sys.stderr, flush=True)
        self._open += 1
        try:
            yield
        finally:
            self._open -= 1
        dt = time.perf_counter() - t
        if nested:
            self._nested.add(len(self.steps))
        self.steps.append((full, dt))
        if verbose:
            print(f"[{full}] {dt:.2f}s", file=self.stream or sys.stderr, flush=True)

    @contextmanager
    def prefix(self, p: str):
        old = self._prefix
        self._prefix = old + p + "/"
        yield
        self._prefix = old

    def summary(self) -> str:
        total = sum(dt for i, (name, dt) in enumerate(self.steps) if "/" not in name and i not in self._nested)
        lines = ["step                              seconds"]
        lines += [f"{name:<32} {dt:8.2f}" for name, dt in self.steps]
        lines.append(f"{'total (top-level)':<32} {total:8.2f}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {name: round(dt, 3) for name, dt in self.steps}
