"""Trainer test fixtures: small synthetic data directories (helpers in cliutil.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))      # the test modules import cliutil


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    from trainer.datawrite import write_dataset
    from trainer.synth import synth

    d = tmp_path_factory.mktemp("small_data")
    ds, _ = synth(300, 200, seed=1)
    write_dataset(ds, d)
    return d
