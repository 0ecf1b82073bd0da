"""trainer.timing: the summary's total counts each second once."""
from __future__ import annotations

import io
import time

from trainer.timing import Timer


def test_a_step_timed_inside_another_is_not_counted_twice_in_the_total():
    """The build's evaluation runs inside its write step (before the version is published): the total
    counted both, and came out above the command's wall time."""
    t = Timer(stream=io.StringIO())
    with t("load"):
        pass
    with t("write"):
        with t("evaluate"):
            time.sleep(0.05)
    with t("ranker"), t.prefix("ranker"), t("fit"):
        pass
    steps = dict(t.steps)
    assert set(steps) == {"load", "write", "evaluate", "ranker", "ranker/fit"}
    total = float(t.summary().splitlines()[-1].split()[-1])
    assert abs(total - round(steps["load"] + steps["write"] + steps["ranker"], 2)) <= 0.011
    assert steps["evaluate"] > 0 and steps["write"] >= steps["evaluate"]
