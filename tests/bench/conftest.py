"""bench/'s scripts are importable by their own names (core, _clients, scaling, ...) during each test here, and
only then: sys.path and the modules imported from bench/ are as before the test after it, so a module named
``core`` does not linger for the rest of the session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = str(Path(__file__).resolve().parents[2] / "bench")


@pytest.fixture(autouse=True)
def bench_importable():
    path, modules = list(sys.path), set(sys.modules)
    sys.path.insert(0, BENCH)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(BENCH + os.sep):
            del sys.modules[name]
