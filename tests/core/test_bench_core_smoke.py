"""bench/core.py runs end to end (a tiny run; the benchmark itself is not a timed test)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_core_quick():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "core.py"), "--quick"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "speed-up" in out.stdout and "whole per-request core" in out.stdout
    for kernel in ("user embedding", "user embeddings, batch", "merge", "crossing", "MMR", "gather", "drop seen",
                   "history seeds", "i2i neighbour sum"):
        assert kernel in out.stdout
