"""Progress bars for every long build step, on a terminal or on request; quiet otherwise."""
from __future__ import annotations

import os
import pty
import sys

import pytest

from trainer import progress

from cliutil import run_cli

# the bars a tuned build on a small catalogue (EASE, one index chunk) shows, by their names
STEPS = ["index (chunks)", "i2i top-M (items)", "i2i cosine (items)", "tune vector (grid)", "tune i2i (models)",
         "tune i2i (recency)", "tune quotas (grid)", "tune ef", "ranker rows"]


def test_build_with_progress_shows_every_long_step(small_data, tmp_path):
    p = run_cli("build", "--data", small_data, tmp_path / "out", "--factors", 8, "--ranker-users", 300,
                "--progress", check=True)
    err = p.stderr.replace("\r", "\n")
    missing = [s for s in STEPS if f"{s}:" not in err]
    assert not missing, err[-3000:]
    assert "| 15/15 [" in err                 # implicit's ALS bar, one step per iteration (als_iterations 15)
    assert "total (top-level)" in err         # the per-step time summary stays


def test_build_without_a_terminal_is_quiet(small_data, tmp_path):
    p = run_cli("build", "--data", small_data, tmp_path / "out", "--factors", 8, "--ranker-users", 100,
                "--no-tune", check=True)      # stderr is a pipe here: auto means off
    assert "it/s" not in p.stderr and "%|" not in p.stderr, p.stderr[-2000:]
    assert "total (top-level)" in p.stderr


@pytest.fixture()
def auto_progress():
    progress.configure(None)
    yield
    progress.configure(None)


def test_auto_follows_whether_stderr_is_a_terminal(monkeypatch, auto_progress):
    master, slave = pty.openpty()
    r, w = os.pipe()
    with os.fdopen(slave, "w") as tty, os.fdopen(w, "w") as pipe:
        monkeypatch.setattr(sys, "stderr", tty)
        assert progress.enabled()
        monkeypatch.setattr(sys, "stderr", pipe)
        assert not progress.enabled()
        assert list(progress.bar(range(3), "x")) == [0, 1, 2]
        progress.configure(True)
        assert progress.enabled()
        assert list(progress.bar(range(3), "x", total=3)) == [0, 1, 2]
        progress.configure(False)
        monkeypatch.setattr(sys, "stderr", tty)
        assert not progress.enabled()
    os.close(master)
    os.close(r)
