"""bench/ranker.py runs end to end (a tiny run; the benchmark itself is not a timed test)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ranker_quick():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "ranker.py"), "--quick"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "ratio" in out.stdout and "lightgbm=" in out.stdout and "nproc=" in out.stdout
    assert "MISMATCH" not in out.stdout + out.stderr
    assert "forest over its plain numpy reference" in out.stdout      # every kernel's speed-up over numpy
