import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from recserve._core.merge import exclusion_bitset, merge_candidates, merge_reference

N = 60


@st.composite
def sources(draw):
    S = draw(st.integers(1, 5))
    lists = []
    for _ in range(S):
        rows = draw(st.lists(st.integers(0, N - 1), max_size=40))
        scores = draw(st.lists(st.floats(-10, 10, width=32), min_size=len(rows), max_size=len(rows)))
        lists.append((np.array(rows, np.int32), np.array(scores, np.float32)))
    quotas = draw(st.lists(st.integers(0, 50), min_size=S, max_size=S))
    return lists, quotas


@settings(max_examples=300, deadline=None)
@given(src=sources(), cap=st.integers(0, 120), excluded=st.lists(st.integers(0, N - 1), max_size=N))
def test_matches_reference(src, cap, excluded):
    lists, quotas = src
    bits = exclusion_bitset(N, excluded) if excluded else None
    got = merge_candidates(lists, quotas, cap, N, bits)
    want = merge_reference(lists, quotas, cap, N, bits)
    np.testing.assert_array_equal(got.rows, want.rows)
    np.testing.assert_array_equal(got.rank, want.rank)
    np.testing.assert_array_equal(got.score, want.score)
    np.testing.assert_array_equal(got.sources, want.sources)
    # invariants: unique, nothing excluded, cap and quotas respected
    assert len(set(got.rows.tolist())) == len(got.rows) <= cap
    assert not set(got.rows.tolist()) & set(excluded)
    for s, q in enumerate(quotas):
        assert (got.rank[:, s] >= 0).sum() <= q


@settings(max_examples=200, deadline=None)
@given(src=sources(), data=st.data(), excluded=st.lists(st.integers(0, N - 1), max_size=N // 2))
def test_matches_reference_when_the_cap_binds(src, data, excluded):
    """A cap below the items the quotas would bring in: the round-robin decides which items get in, and the
    sources then only add their ranks to those (the reference's second phase)."""
    lists, quotas = src
    bits = exclusion_bitset(N, excluded) if excluded else None
    uncapped = len(merge_reference(lists, quotas, sum(quotas), N, bits))
    assume(uncapped > 0)
    cap = data.draw(st.integers(0, uncapped - 1))
    got = merge_candidates(lists, quotas, cap, N, bits)
    want = merge_reference(lists, quotas, cap, N, bits)
    for field in ("rows", "rank", "score", "sources"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert len(got) == cap


def test_duplicates_keep_every_source():
    a = (np.array([5, 6, 5]), np.array([3.0, 2.0, 1.0]))
    b = (np.array([6, 7]), np.array([9.0, 8.0]))
    m = merge_candidates([a, b], [10, 10], 10, 10)
    assert m.rows.tolist() == [5, 6, 7]
    i6 = m.rows.tolist().index(6)
    assert m.rank[i6].tolist() == [1, 0]
    assert m.sources[i6] == 0b11
    assert m.score[i6].tolist() == [2.0, 9.0]


def test_all_excluded_and_empty():
    lists = [(np.arange(5), np.ones(5))]
    m = merge_candidates(lists, [5], 5, 5, exclusion_bitset(5, range(5)))
    assert len(m) == 0
    assert len(merge_candidates([(np.array([], np.int32), np.array([], np.float32))], [3], 3, 5)) == 0


def test_round_robin_cap_takes_best_of_each_source():
    a = (np.arange(0, 10), np.ones(10))
    b = (np.arange(10, 20), np.ones(10))
    m = merge_candidates([a, b], [10, 10], 4, 20)
    assert m.rows.tolist() == [0, 10, 1, 11]


def test_bad_input_rejected():
    with pytest.raises(ValueError, match="out of range"):
        merge_candidates([(np.array([10]), np.array([1.0]))], [1], 1, 10)
    with pytest.raises(ValueError, match="not finite"):
        merge_candidates([(np.array([1]), np.array([np.nan]))], [1], 1, 10)
    with pytest.raises(ValueError, match="quotas"):
        merge_candidates([(np.array([1]), np.array([1.0]))], [1, 2], 1, 10)
    with pytest.raises(ValueError, match="bitset"):
        merge_candidates([(np.array([1]), np.array([1.0]))], [1], 1, 100, np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        exclusion_bitset(10, [10])


def test_wide_rows_never_wrap_into_range():
    # 2**32 would become row 0 if cast blindly to int32
    with pytest.raises(ValueError, match="out of range"):
        merge_candidates([(np.array([2**32], np.int64), np.array([1.0]))], [1], 1, 10)
    with pytest.raises(ValueError, match="out of range"):
        exclusion_bitset(10, np.array([2**32 + 1], np.int64))


def test_excluded_must_be_a_bitset_not_rows_or_a_mask():
    """Rows [2] or a bool mask would be read as bits (row 1 dropped, row 2 kept): refused instead."""
    lists = [(np.array([0, 1, 2]), np.array([3.0, 2.0, 1.0]))]
    for excluded in (np.array([2]), np.array([False, True, False])):
        with pytest.raises(ValueError, match="uint8 bitset"):
            merge_candidates(lists, [3], 5, 3, excluded)
    assert merge_candidates(lists, [3], 5, 3, exclusion_bitset(3, [2])).rows.tolist() == [0, 1]


def test_fractional_quotas_and_caps_are_refused_not_truncated():
    lists = [(np.array([0, 1, 2]), np.array([3.0, 2.0, 1.0]))]
    with pytest.raises(ValueError, match="quotas must hold integers"):
        merge_candidates(lists, [1.9], 5, 3)
    with pytest.raises(TypeError, match="cap must be an integer"):
        merge_candidates(lists, [3], 2.5, 3)
