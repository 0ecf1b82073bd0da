"""`make demo`'s job end to end (``python -m recserve.demo``): data, bundle, a live server, real answers, and a
clean stop."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_answers_every_call_it_shows(tmp_path):
    p = subprocess.run([sys.executable, "-m", "recserve.demo", "--dir", str(tmp_path / "demo")], cwd=REPO,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-3000:]
    assert "[demo] health: SERVING" in out
    assert "unknown user -> cold start=True" in out
    assert "context.country='SE') -> cold start=True, trending list: SE\n" in out
    assert "next Recommend: cold start=False" in out and "excluded=True" in out
    assert "SimilarItems('no-such-item') -> NOT_FOUND" in out
    assert "[demo] server stopped (exit code 0)" in out
