"""bench/core.py times a kernel only when its answer equals its numpy reference's."""
from __future__ import annotations

import numpy as np


def test_answers_are_compared_part_by_part():
    from core import _differs
    from recserve._core.merge import merge_candidates

    rng = np.random.default_rng(0)
    lists = [(rng.integers(0, 100, 30).astype(np.int32), np.sort(rng.random(30).astype(np.float32))[::-1].copy())
             for _ in range(2)]
    a = merge_candidates(lists, [30, 30], 60, 100, None)
    assert _differs(a, merge_candidates(lists, [30, 30], 60, 100, None)) == ""
    assert "rows" in _differs(a, merge_candidates(lists, [30, 20], 60, 100, None))
    assert _differs((np.arange(3), np.float32(1.0)), (np.arange(3), 1.0 + 1e-9)) == ""     # float32 precision
    assert _differs((np.arange(3), 1.0), (np.arange(3), 1.1)) == "answer[1]: values differ"
    assert _differs(np.array([1, 2], np.int32), np.array([1, 3])) == "answer: values differ"
