"""EASE's weights against plain numpy: ``spd_inverse`` (Cholesky, with ``numpy.linalg.inv`` as its fallback)
and the untruncated lists of ``ease_from_gram`` against ``B = I - P / diag(P)``, ``P = (G + Lambda)^-1``."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer import neighbours as nb


def _gram(seed, users, items, density):
    rng = np.random.default_rng(seed)
    x = (rng.random((users, items)) < density).astype(np.float64)
    return x.T @ x


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 700), st.floats(0.01, 100.0))
def test_spd_inverse_is_the_inverse(seed, n, ridge):
    g = _gram(seed, 30, n, 0.2)
    g[np.diag_indices_from(g)] += ridge
    keep = g.copy()
    reference = np.linalg.inv(keep)
    with pytest.MonkeyPatch.context() as mp:            # by Cholesky: numpy's inverse is not called
        mp.setattr(np.linalg, "inv", None)
        got = nb.spd_inverse(g)
        inplace = nb.spd_inverse(np.array(keep, order="F"), overwrite_a=True)
    np.testing.assert_array_equal(inplace, got)
    np.testing.assert_array_equal(g, keep)                 # its argument is left as it was
    assert got.flags.c_contiguous
    np.testing.assert_allclose(got, got.T, rtol=0, atol=1e-12 * np.abs(got).max())
    np.testing.assert_allclose(got, reference, rtol=1e-7, atol=1e-10 * np.abs(got).max())


def test_spd_inverse_of_a_matrix_that_is_not_positive_definite_is_numpys():
    a = np.array([[0.0, 2.0, 1.0], [2.0, 1.0, 0.0], [1.0, 0.0, -3.0]])      # symmetric, indefinite
    np.testing.assert_allclose(nb.spd_inverse(a), np.linalg.inv(a), rtol=1e-12)
    with pytest.raises(np.linalg.LinAlgError):
        nb.spd_inverse(np.zeros((3, 3)))
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        nb.spd_inverse(np.asfortranarray(a), overwrite_a=True)
    g = _gram(4, 10, 30, 0.3)                               # EASE with no ridge on a singular Gram matrix
    with pytest.raises(np.linalg.LinAlgError):
        nb.ease_from_gram(g, 0.0, M=5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(2, 80), st.sampled_from([1.0, 20.0, 500.0]),
       st.sampled_from([0.0, 0.25, 1.0]))
def test_untruncated_ease_lists_are_the_closed_form(seed, n, lam, dropout):
    g = _gram(seed, 60, n, 0.15)
    rows, scores = nb.ease_from_gram(g, lam, M=n - 1, dropout=dropout)
    reg = g + np.diag(lam + dropout * np.diag(g))
    p = np.linalg.inv(reg)
    ref = p / (-np.diag(p))[None, :]
    np.fill_diagonal(ref, 0.0)
    ref[np.diag(g) == 0, :] = 0.0
    got = np.zeros((n, n))
    for i in range(n):
        k = rows[i] >= 0
        got[i, rows[i][k]] = scores[i][k]
        assert (np.diff(scores[i][k]) <= 0).all()           # best first
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_ease_holds_no_more_than_the_memory_the_build_checks_for():
    """The peak of what ``ease_from_gram`` allocates (numpy and LAPACK buffers, seen by tracemalloc), with
    the Gram matrix the caller holds, is within ``artifacts.ease_bytes``: the figure a build compares with
    the memory available."""
    import tracemalloc

    from trainer import artifacts

    n, m = 1500, 50
    g = _gram(2, 200, n, 0.05)
    tracemalloc.start()
    try:
        nb.ease_from_gram(g, 100.0, M=m)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = peak + g.nbytes
    assert held <= artifacts.ease_bytes(n, m), (held, artifacts.ease_bytes(n, m))
    assert held > (artifacts.EASE_DENSE_COPIES - 0.5) * g.nbytes      # and the estimate is not loose
