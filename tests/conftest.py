"""Shared fixtures, and the hypothesis profile: with CI set (CI runs ``.ci/run`` with CI=true), property tests
draw the same examples every run and keep no example database, so a CI run is reproducible from the commit
alone; elsewhere they draw new examples each run. HYPOTHESIS_PROFILE (``ci`` or ``default``) picks one."""
from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if CI else "default"))


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
