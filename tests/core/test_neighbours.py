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


@settings(max_examples=300, deadline=None)
@given(tab=tables(), data=st.data(), k=st.integers(1, 50))
def test_a_score_that_is_not_finite_is_refused_where_it_is_read(tab, data, k):
    """NaN or inf in a seed's list is refused (a NaN sum never left the kernel's heap, while the reference
    sorts it last); elsewhere in the table, or under a -1 pad, it is never read and the answer is the
    reference's."""
    rows, scores = tab
    n, M = rows.shape
    bad = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, M - 1)), min_size=1, max_size=5))
    for i, j in bad:
        scores[i, j] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    seeds = data.draw(st.lists(st.integers(0, n - 1), max_size=10))
    weights = np.ones(len(seeds), np.float32)
    if any(i in seeds and rows[i, j] >= 0 for i, j in bad):
        with pytest.raises(ValueError, match="i2i score .* is not finite"):
            neighbour_sum(seeds, weights, rows, scores, k)
    else:
        got = neighbour_sum(seeds, weights, rows, scores, k)
        want = neighbour_sum_reference(seeds, weights, rows, scores, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


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


def test_a_k_beyond_every_neighbour_is_all_of_them():
    """k is capped by the seeds' neighbour lists (a huge k once overflowed the kernel's heap size)."""
    rng = np.random.default_rng(3)
    rows = rng.integers(-1, 50, size=(50, 6)).astype(np.int32)
    scores = rng.random((50, 6)).astype(np.float32)
    seeds, w = [1, 7, 7, 30], [1.0, 0.5, 0.5, 2.0]
    want = neighbour_sum_reference(seeds, w, rows, scores, 10**6)
    for k in (10**6, 2**59 + 1, 2**60, 2**63 - 1):
        got = neighbour_sum(seeds, w, rows, scores, k)
        assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1], rtol=1e-6)


def test_fractional_seeds_or_k_are_refused_not_truncated():
    rows = np.zeros((5, 3), np.int32)
    scores = np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match="i2i rows must hold integers"):
        neighbour_sum([1], [1.0], np.full((5, 3), 2.7), scores, 3)            # was truncated to 2
    with pytest.raises(ValueError, match="i2i rows: row 4294967301 is out of range"):
        neighbour_sum([1], [1.0], np.full((5, 3), 2**32 + 5), scores, 3)      # was wrapped to 5
    got = neighbour_sum([1], [1.0], np.arange(15, dtype=np.uint64).reshape(5, 3) % 5, scores, 3)
    assert got[0].tolist() == [0, 3, 4]                                         # row 1: 3, 4, 5 % 5
    with pytest.raises(ValueError, match="seed rows must hold integers"):
        neighbour_sum([1.7], [1.0], rows, scores, 3)
    with pytest.raises(TypeError, match="k must be an integer"):
        neighbour_sum([1], [1.0], rows, scores, 2.9)
