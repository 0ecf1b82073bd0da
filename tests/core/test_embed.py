import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from recserve._core.embed import (UserVectorParams, user_vector, user_vector_reference, user_vectors,
                                  user_vectors_reference)

# by the dtype of the item embeddings given: the kernel computes on their float32 copy, the reference in float64
TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-4, atol=1e-5)}


def emb_matrix(n=50, d=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


params_st = st.builds(UserVectorParams,
                      decay_short=st.floats(0, 3), decay_long=st.floats(0, 0.5),
                      alpha=st.floats(0, 1), half_life=st.floats(0, 100))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.integers(0, 49), max_size=80), params=params_st, data=st.data())
def test_matches_reference(rows, params, data):
    E = emb_matrix()
    L = len(rows)
    w = data.draw(st.none() | hnp.arrays(np.float32, L, elements=st.floats(0.125, 5, width=32)))
    ages = data.draw(st.none() | hnp.arrays(np.float32, L, elements=st.floats(0, 500, width=32)))
    got = user_vector(E, rows, params, w, ages)
    want = user_vector_reference(E, rows, params, w, ages)
    np.testing.assert_allclose(got, want, **TOL[np.float32])


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=10), params=params_st, seed=st.integers(0, 9))
def test_batch_equals_single(lengths, params, seed):
    E = emb_matrix()
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(E), sum(lengths))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    w = rng.uniform(0.5, 2, len(rows)).astype(np.float32)
    batch = user_vectors(E, indptr, rows, params, w)
    for u in range(len(lengths)):
        s, e = indptr[u], indptr[u + 1]
        np.testing.assert_allclose(batch[u], user_vector(E, rows[s:e], params, w[s:e]), rtol=1e-6, atol=1e-7)


@settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=8), dtype=st.sampled_from([np.float32, np.float64]),
       params=st.builds(UserVectorParams, decay_short=st.floats(0, 3), decay_long=st.floats(0, 0.5),
                        alpha=st.floats(0, 1), half_life=st.floats(1, 100)),
       data=st.data())
def test_batch_matches_reference_with_weights_and_ages(lengths, dtype, params, data):
    """The batch kernel, user by user, against the numpy reference, with event weights and ages (half-life on):
    every user reads her own slice of both. Ages / half_life stay below 500, so no weight is subnormal."""
    E = np.random.default_rng(data.draw(st.integers(0, 9), label="seed")).normal(size=(30, 8)).astype(dtype)
    n = sum(lengths)
    rows = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, len(E) - 1)), label="rows")
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    w = data.draw(st.none() | hnp.arrays(np.float32, n, elements=st.floats(0.125, 5, width=32)), label="w")
    ages = data.draw(hnp.arrays(np.float32, n, elements=st.floats(0, 500, width=32)), label="ages")
    got = user_vectors(E, indptr, rows, params, w, ages)
    want = user_vectors_reference(E, indptr, rows, params, w, ages)
    assert got.shape == (len(lengths), E.shape[1]) and got.dtype == np.float32
    for u in range(len(lengths)):
        np.testing.assert_allclose(got[u], want[u], **TOL[dtype], err_msg=f"user {u}")


def test_newest_item_weighs_most():
    E = np.eye(3, dtype=np.float32)
    v = user_vector(E, [0, 1, 2], UserVectorParams(decay_short=1.0, decay_long=1.0))
    assert v[2] > v[1] > v[0] > 0
    assert np.isclose(np.linalg.norm(v), 1.0)


def test_empty_history_and_zero_norm_give_zeros():
    E = emb_matrix()
    assert not user_vector(E, [], UserVectorParams()).any()
    E2 = np.array([[1, 0], [-1, 0]], np.float32)
    assert not user_vector(E2, [0, 1], UserVectorParams(0, 0, 0.5)).any()
    assert not user_vector(E, [1, 2], UserVectorParams(), event_weights=[0, 0]).any()


@pytest.mark.parametrize("rows", [[-1], [50], [0, 10**6]])
def test_out_of_range_rows_rejected(rows):
    with pytest.raises(ValueError, match="out of range"):
        user_vector(emb_matrix(), rows, UserVectorParams())


def test_bad_inputs_rejected():
    E = emb_matrix()
    p = UserVectorParams()
    with pytest.raises(ValueError, match="not finite"):
        user_vector(E, [1, 2], p, event_weights=[1, np.nan])
    with pytest.raises(ValueError, match="not finite"):
        user_vector(E, [1, 2], p, ages=[np.inf, 1])
    with pytest.raises(ValueError, match="length"):
        user_vector(E, [1, 2], p, event_weights=[1])
    bad = E.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        user_vector(bad, [3], p)
    with pytest.raises(ValueError, match="integer"):
        user_vector(E, [1.5], p)
    with pytest.raises(ValueError):
        UserVectorParams(alpha=2)
    with pytest.raises(ValueError, match="indptr"):
        user_vectors(E, [0, 3], [1, 2], p)


def test_one_average_vanishing_leaves_the_other():
    # the short-term weights underflow to 0 (old item) or are 0 (weight 0): only the long-term mix remains
    E = emb_matrix()
    p = UserVectorParams(decay_short=1000.0, decay_long=0.0, alpha=0.3)
    got = user_vector(E, [1, 2], p, event_weights=[1, 0])
    np.testing.assert_allclose(got, user_vector_reference(E, [1, 2], p, event_weights=[1, 0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, E[1] / np.linalg.norm(E[1]), rtol=1e-5, atol=1e-6)


def test_indptr_must_be_integers():
    emb = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="indptr must hold integers"):
        user_vectors(emb, [0, 1.5, 2], np.array([0, 1], np.int32), UserVectorParams())
