"""EASE lists: the kept weights re-solved on their support (``neighbours.refit_support``)."""
from __future__ import annotations

import numpy as np

from trainer import neighbours as nb


def _gram(seed=0, users=400, items=60):
    rng = np.random.default_rng(seed)
    taste = rng.standard_normal((users, 4)) @ rng.standard_normal((4, items))
    x = (taste + rng.standard_normal((users, items)) > 1.2).astype(np.float64)
    return x, x.T @ x


def _dense(rows, scores, n):
    w = np.zeros((n, n))
    for i in range(n):
        k = rows[i] >= 0
        w[i, rows[i][k]] = scores[i][k]
    return w


def test_refit_solves_the_ridge_regression_on_each_support():
    x, g = _gram()
    n, lam, m = len(g), 50.0, 12
    rows0, scores0 = nb.ease_from_gram(g, lam, M=m)
    rows, scores = nb.ease_from_gram(g, lam, M=m, refit_iters=25)
    w0, w = _dense(rows0, scores0, n), _dense(rows, scores, n)
    assert ((w0 != 0) == (w != 0)).all()                  # the same neighbours, new weights
    for j in range(n):
        s = np.flatnonzero(w[:, j])
        if len(s) == 0:
            continue
        exact = np.linalg.solve(g[np.ix_(s, s)] + lam * np.eye(len(s)), g[s, j])
        np.testing.assert_allclose(w[s, j], exact, rtol=2e-3, atol=2e-5)
    # the regression's objective on the data is better than with the truncated full solution
    loss = lambda b: float(((x - x @ b) ** 2).sum() + lam * (b ** 2).sum())
    assert loss(w) < loss(w0)
    for r in range(n):                                      # lists stay sorted by weight, best first
        k = rows[r] >= 0
        assert (np.diff(scores[r][k]) <= 0).all()


def test_refit_of_an_untruncated_list_changes_nothing():
    _x, g = _gram(seed=1, items=30)
    rows0, scores0 = nb.ease_from_gram(g, 20.0, M=29)
    rows, scores = nb.ease_from_gram(g, 20.0, M=29, refit_iters=3)
    np.testing.assert_array_equal(rows, rows0)
    np.testing.assert_allclose(scores, scores0, atol=1e-5)
