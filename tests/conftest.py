"""Shared fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory):
    """Root directory (holding CURRENT) of a small bundle trained once per session on synthetic data
    (300 users x 200 items) through the trainer API."""
    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    ds, _ = synth(300, 200, seed=0)
    root = tmp_path_factory.mktemp("demo_bundle")
    build(ds, root, {"seed": 0, "factors": 16, "ranker_users": 300, "ranker_rounds": 60},
          timer=Timer(verbose=False))
    return root
