"""The ranker's base tree reads a source's rank; cross-validation over users chooses the correction trees."""
from __future__ import annotations

import numpy as np

from trainer import ranker as rk

NAMES = ["src.ann.rrank", "src.ann.score", "src.i2i.rrank", "src.i2i.score", "x.dot"]


def _rows(n_groups=240, n=40, seed=0, signal="rank"):
    """Groups of ``n`` candidates, i2i list order = row order; positives from the i2i rank (``rank``) or
    from ``x.dot`` alone (``dot``)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n_groups):
        score = np.sort(rng.gamma(2.0, 0.05, n))[::-1] * rng.uniform(0.5, 2.0)
        rank = np.arange(n)
        dot = rng.uniform(0.0, 1.0, n)
        ann_rank = np.argsort(np.argsort(-dot + rng.normal(0, 0.5, n)))
        x = np.column_stack([1.0 / (1.0 + ann_rank), dot, 1.0 / (1.0 + rank), score, dot]).astype(np.float32)
        if signal == "rank":
            y = (rank < 3).astype(np.int32)              # the i2i order is perfect
        else:
            y = (dot > np.quantile(dot, 0.9)).astype(np.int32)
        xs.append(x)
        ys.append(y)
    return np.vstack(xs), np.concatenate(ys), np.full(n_groups, n), np.arange(n_groups)


def test_base_follows_the_rank_beyond_the_training_scores():
    X, y, groups, users = _rows()
    text, info = rk.train(X, y, groups, NAMES, fixed_trees=1, group_users=users)
    assert info["base"] == "src.i2i.rrank"
    scorer = rk.Scorer(text)
    # served scores larger than any seen in training (a bundle refitted on more data): the order holds
    Xs = X[:40].copy()
    Xs[:, 3] *= 10.0
    s = scorer(Xs)
    assert (np.diff(s) < 0).all()


def test_no_correction_tree_when_the_base_is_already_right():
    X, y, groups, users = _rows(signal="rank")
    text, info = rk.train(X, y, groups, NAMES, group_users=users, rounds=60)
    assert info["labels"] == "base only" and info["best_iteration"] == 1
    assert text.count("\nTree=") == 1
    assert info["cv"]["folds"] == rk.CV_FOLDS
    assert info["cv"]["corrections"] == 0        # the trees kept (it said 1, the curve's best, which lost)


def test_correction_trees_when_another_feature_carries_the_signal():
    X, y, groups, users = _rows(signal="dot", seed=1)
    text, info = rk.train(X, y, groups, NAMES, group_users=users, rounds=60)
    assert info["best_iteration"] > 1
    assert info["cv"]["best_ndcg@10"] > info["cv"]["base_ndcg@10"]
    assert text.count("\nTree=") == info["best_iteration"]


def test_folds_keep_each_users_groups_together():
    users = np.array([5, 5, 7, 9, 9, 9, 11, 12, 13, 14])
    f = rk.user_folds(users, 3, seed=0)
    for u in np.unique(users):
        assert len(set(f[users == u].tolist())) == 1
    assert set(f.tolist()) == {0, 1, 2}


def test_many_users_early_stop_on_a_held_out_share():
    X, y, groups, users = _rows(signal="dot", seed=2)
    text, info = rk.train(X, y, groups, NAMES, group_users=users, rounds=60, cv_max_users=100)
    assert "cv" not in info and info["validation"]["users"] == round(len(users) * rk.VALID_SHARE)
    assert info["best_iteration"] == info["validation"]["corrections"] + 1 > 1
    assert text.count("\nTree=") == info["best_iteration"]
    X, y, groups, users = _rows(signal="rank", seed=2)
    text, info = rk.train(X, y, groups, NAMES, group_users=users, rounds=60, cv_max_users=100)
    assert info["labels"] == "base only" and text.count("\nTree=") == 1
    assert info["validation"]["corrections"] == 0
