"""Trainer test helpers: small synthetic data directories, CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, check=False, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    from trainer.io import write_dataset
    from trainer.synth import synth

    d = tmp_path_factory.mktemp("small_data")
    ds, _ = synth(300, 200, seed=1)
    write_dataset(ds, d)
    return d
