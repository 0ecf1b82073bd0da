"""The history kernel against its numpy references (hypothesis), and its edge cases."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from recserve._core.history import (drop_seen, drop_seen_reference, history_seeds, history_seeds_reference,
                                    recent_distinct_reference)

histories = st.integers(0, 60).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 25), min_size=n, max_size=n),            # few distinct rows: many repeats
    st.lists(st.floats(0, 5000, allow_nan=False), min_size=n, max_size=n)))


@settings(max_examples=300, deadline=None)
@given(histories, st.integers(0, 40), st.integers(0, 12), st.sampled_from([0.0, 100.0, 1800.0]))
def test_history_seeds_match_the_reference(h, n_recent, n_session, gap):
    rows, ts = np.array(h[0], np.int32), np.sort(np.array(h[1], np.float64))
    got = history_seeds(rows, ts, n_recent, n_session, gap)
    want = history_seeds_reference(rows, ts, n_recent, n_session, gap)
    for g, w in zip(got, want):
        assert g.dtype == np.int32
        np.testing.assert_array_equal(g, w)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-3, 40), max_size=80), st.lists(st.integers(0, 40), max_size=30))
def test_drop_seen_matches_the_reference(rows, seen):
    rows = np.array(rows, np.int32)
    scores = np.arange(len(rows), dtype=np.float32) * 0.5
    seen = np.unique(np.array(seen, np.int32))
    got, want = drop_seen(rows, scores, seen), drop_seen_reference(rows, scores, seen)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == np.int32 and got[1].dtype == np.float32


def test_seeds_of_a_known_history():
    rows = np.array([5, 3, 5, 9, 3, 7, 7, 2], np.int32)
    ts = np.array([0, 10, 20, 30, 5000, 5010, 5020, 5030], np.float64)     # a new session at index 4
    seen, recent, session = history_seeds(rows, ts, 3, 10, 1800.0)
    assert seen.tolist() == [2, 3, 5, 7, 9]
    assert recent.tolist() == [2, 7, 3]                                     # newest first, distinct
    assert session.tolist() == [2, 7, 3]                                    # events 4..7 only
    assert recent_distinct_reference(rows, 3).tolist() == [2, 7, 3]


def test_empty_and_bad_input():
    e = history_seeds(np.zeros(0, np.int32), np.zeros(0), 5, 5, 1800.0)
    assert all(len(a) == 0 for a in e)
    with pytest.raises(ValueError, match="timestamps"):
        history_seeds(np.arange(3), np.zeros(2), 5, 5, 1800.0)
    with pytest.raises(ValueError, match="scores"):
        drop_seen(np.arange(3), np.zeros(2), np.zeros(0, np.int32))
    r, s = drop_seen(np.zeros(0, np.int32), np.zeros(0, np.float32), np.arange(3))
    assert len(r) == 0 and len(s) == 0


def test_drop_seen_refuses_seen_rows_out_of_order():
    """The kernel binary-searches ``seen``: unsorted or repeated rows would give wrong answers."""
    for seen in ([5, 1, 3], [1, 1, 3]):
        with pytest.raises(ValueError, match="sorted and unique"):
            drop_seen([1, 2, 3, 4, 5], np.ones(5), seen)
    assert drop_seen([1, 2, 3, 4, 5], np.ones(5), [1, 3, 5])[0].tolist() == [2, 4]


@settings(max_examples=100, deadline=None)
@given(histories, st.integers(-3, 40), st.integers(-3, 12), st.sampled_from([0.25, 0.5, 0.9, 1.9]))
def test_fractional_counts_are_refused_not_truncated(h, n_recent, n_session, frac):
    """Counts must be integers (Python or numpy); 1.9 was truncated to 1. Negative counts: no seeds."""
    rows, ts = np.array(h[0], np.int32), np.sort(np.array(h[1], np.float64))
    with pytest.raises(TypeError, match="n_recent must be an integer"):
        history_seeds(rows, ts, n_recent + frac, n_session, 1800.0)
    with pytest.raises(TypeError, match="n_session must be an integer"):
        history_seeds(rows, ts, n_recent, float(n_session), 1800.0)
    got = history_seeds(rows, ts, np.int64(n_recent), np.int32(n_session), 1800.0)
    want = history_seeds_reference(rows, ts, n_recent, n_session, 1800.0)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
