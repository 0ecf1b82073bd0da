"""The item snapshot's catalogue-wide structures against plain numpy."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recserve._core.merge import exclusion_bitset
from recserve.pipeline.items import walk_allowed


def _bits_reference(n, rows):
    dense = np.zeros(n, np.uint8)
    dense[np.asarray(rows, np.int64)] = 1
    return np.packbits(dense, bitorder="little")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_exclusion_bitset_matches_packbits(n, data):
    rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=50)), np.int64)
    base_rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=50)), np.int64)
    want = _bits_reference(n, np.concatenate([rows, base_rows]))
    assert np.array_equal(exclusion_bitset(n, np.concatenate([rows, base_rows])), want)
    base = _bits_reference(n, base_rows)
    before = base.copy()
    assert np.array_equal(exclusion_bitset(n, rows, base), want)
    assert np.array_equal(base, before)          # the shared base is never modified


def test_exclusion_bitset_rejects_out_of_range():
    import pytest

    with pytest.raises(ValueError, match="out of range"):
        exclusion_bitset(10, np.array([10]))
    with pytest.raises(ValueError, match="out of range"):
        exclusion_bitset(10, np.array([-1]))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2000), st.floats(0.0, 1.0), st.integers(0, 600), st.integers(0, 10_000))
def test_walk_allowed_is_the_filtered_prefix(n, share, limit, seed):
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n).astype(np.int32)
    scores = np.sort(rng.random(n).astype(np.float32))[::-1]
    allowed = rng.random(n) < share
    r, s = walk_allowed(rows, scores, allowed, limit)
    keep = allowed[rows]
    assert np.array_equal(r, rows[keep][:limit])
    assert np.array_equal(s, scores[keep][:limit])
    assert r.dtype == np.int32 and s.dtype == np.float32


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=60), st.lists(st.integers(0, 50), max_size=30))
def test_drop_rows_keeps_order_and_drops_exactly_the_given_rows(rows, dropped):
    from recserve.pipeline.candidates import drop_rows

    rows = np.array(rows, np.int32)
    scores = np.arange(len(rows), dtype=np.float32)
    d = np.unique(np.array(dropped, np.int64))
    r, s = drop_rows(rows, scores, d)
    keep = ~np.isin(rows, d)
    assert np.array_equal(r, rows[keep]) and np.array_equal(s, scores[keep])
