import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from recserve._core.neighbours import neighbour_sum, neighbour_sum_reference


@st.composite
def tables(draw):
    n = draw(st.integers(1, 80))
    M = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    rows = rng.integers(-1, n, size=(n, M)).astype(np.int32)          # -1 pads
    if draw(st.booleans()):   # small integer scores: many exact ties
        scores = rng.integers(0, 4, size=(n, M)).astype(np.float32)
    else:
        scores = rng.random((n, M)).astype(np.float32)
    return rows, scores


@settings(max_examples=400, deadline=None)
@given(tab=tables(), data=st.data(), k=st.integers(0, 300))
def test_matches_reference(tab, data, k):
    rows, scores = tab
    n = len(rows)
    seeds = data.draw(st.lists(st.integers(0, n - 1), max_size=40))          # repeats allowed
    weights = data.draw(st.lists(st.floats(0, 5, width=32), min_size=len(seeds), max_size=len(seeds)))
    got = neighbour_sum(seeds, weights, rows, scores, k)
    want = neighbour_sum_reference(seeds, weights, rows, scores, k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])          # same summation order: bit-identical
    assert got[0].dtype == np.int32 and got[1].dtype == np.float32
    assert len(got[0]) <= k


def test_empty_and_all_padding():
    rows = np.full((5, 3), -1, np.int32)
    scores = np.ones((5, 3), np.float32)
    for seeds in ([], [0, 1]):
        r, s = neighbour_sum(seeds, np.ones(len(seeds)), rows, scores, 10)
        assert len(r) == len(s) == 0


def test_bad_input_is_refused():
    rows = np.zeros((5, 3), np.int32)
    scores = np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        neighbour_sum([5], [1.0], rows, scores, 3)
    with pytest.raises(ValueError, match="out of range"):
        neighbour_sum([-1], [1.0], rows, scores, 3)
    with pytest.raises(ValueError, match="weights"):
        neighbour_sum([1, 2], [1.0], rows, scores, 3)
    with pytest.raises(ValueError, match="finite"):
        neighbour_sum([1], [np.nan], rows, scores, 3)
    with pytest.raises(ValueError, match="shape"):
        neighbour_sum([1], [1.0], rows, scores[:, :2], 3)


def test_other_dtypes_are_converted():
    rng = np.random.default_rng(0)
    rows = rng.integers(-1, 50, size=(50, 8))                  # int64, converted once
    scores = rng.random((50, 8))                                # float64
    got = neighbour_sum([3, 4, 3], [1.0, 0.5, 0.25], rows, scores, 20)
    want = neighbour_sum_reference([3, 4, 3], [1.0, 0.5, 0.25], rows.astype(np.int32),
                                   scores.astype(np.float32), 20)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
