"""bench/quality.py's outside baselines: chosen without the test window, plain popularity beside recserve's
trending row, and a MovieLens directory without data refused before the run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import quality  # noqa: E402


def _synth():
    from trainer.synth import synth

    ds, _ = synth(300, 200, seed=3)
    return ds, np.arange(len(ds.user_ids)), np.arange(len(ds.item_ids))


def test_the_validation_split_holds_only_the_training_window():
    """Settings chosen on the test window would flatter the baselines; chosen on nothing (the trainer's,
    made for another model) handicapped ALS: on synth 2000x1000 its Recall@20 was 0.1936 with the
    trainer's reg 20 / alpha 20 and 0.3180 with a validation-chosen pair."""
    ds, um, im = _synth()
    cut = float(np.quantile(ds.ts, 0.9))
    shape = (len(ds.user_ids), len(ds.item_ids))
    x, users, truths = quality.inner_split(ds, um, im, cut, shape, max_users=10_000, seed=0)
    inner = float(np.quantile(ds.ts[ds.ts < cut], 0.9))
    fit = ds.ts < inner
    expect = sp.csr_matrix((np.ones(int(fit.sum())), (ds.user[fit], ds.item[fit])), shape=shape)
    expect.sum_duplicates()
    assert (x != expect).nnz == 0                   # fitted on the older 90 % of the training window only
    val = (ds.ts >= inner) & (ds.ts < cut)
    pairs = {(int(u), int(i)) for u, i in zip(ds.user[val], ds.item[val]) if expect[u, i] == 0}
    assert {(int(u), i) for u, t in zip(users, truths) for i in t} == pairs and len(pairs) > 0
    x2, users2, _ = quality.inner_split(ds, um, im, cut, shape, max_users=10, seed=0)
    assert len(users2) == 10 and set(users2.tolist()) <= set(users.tolist())


def test_the_grid_picks_its_best_point():
    """``tuned`` returns the point whose lists score best on the validation truths."""
    n_items = 6
    stats = (np.eye(n_items, dtype=np.float32), np.full(n_items, 1.0 / n_items), np.zeros(n_items, bool))
    truths = [{3}, {3, 4}]
    fit = lambda x, us, first: ([np.array([first, 3, 4]), np.array([first, 4, 3])], 0.0)  # noqa: E731
    best, _ = quality.tuned(fit, [(0,), (3,), (5,)], None, np.array([0, 1]), truths, stats)
    assert best == (3,)


def test_item_knn_keeps_the_neighbours_asked_for():
    ds, um, im = _synth()
    x = sp.csr_matrix((np.ones(len(ds)), (ds.user, ds.item)), shape=(len(ds.user_ids), len(ds.item_ids)))
    x.sum_duplicates()
    every = quality.knn_similarity(x, 0).toarray()
    few = quality.knn_similarity(x, 5).toarray()
    assert np.allclose(every, every.T) and (np.diag(every) == 0).all()
    for j in range(every.shape[1]):
        kept = np.flatnonzero(few[:, j])
        assert len(kept) == min(5, np.count_nonzero(every[:, j]))
        np.testing.assert_allclose(few[kept, j], every[kept, j], rtol=1e-5)
        if len(kept):           # the best ones, ties at the fifth either way
            assert every[kept, j].min() >= np.sort(every[:, j])[::-1][len(kept) - 1] - 1e-6
    recs, _ = quality.item_knn(x, np.arange(40), 5)
    xb = (x > 0).astype(np.float64)
    for u, r in zip(range(40), recs):
        score = np.asarray(xb[u] @ few).ravel()
        assert (np.diff(score[r]) <= 1e-5).all() and not set(r.tolist()) & set(x[u].indices.tolist())


def test_plain_popularity_is_a_baseline_beside_the_trending_row():
    ds, um, im = _synth()
    x = sp.csr_matrix((np.ones(len(ds)), (ds.user, ds.item)), shape=(len(ds.user_ids), len(ds.item_ids)))
    x.sum_duplicates()
    recs, _ = quality.popularity(x, np.array([0, 1]))
    users_per_item = np.asarray((x > 0).sum(0)).ravel()
    for u, r in zip((0, 1), recs):
        seen = set(x[u].indices.tolist())
        rest = [i for i in np.argsort(-users_per_item, kind="stable") if i not in seen]
        assert r.tolist() == rest[:50]


def test_a_movielens_directory_without_data_is_refused_before_the_run(tmp_path):
    """It ran every synthetic build, then ended in a DataError traceback (exit 1) with no table."""
    p = subprocess.run([sys.executable, "bench/quality.py", "--synth", "300x200", "--movielens", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and p.stdout == "" and p.stderr.strip().splitlines()[-1] == (
        f"quality.py: error: --movielens: {tmp_path} holds neither ml-100k's u.data nor ml-latest's ratings.csv "
        "(--help for usage)"), p.stderr


def test_movielens_files_that_do_not_load_are_refused_before_the_run(tmp_path):
    """u.data present but holding a rating of 9 stars: refused in one line before any synthetic build (it
    ran them all, then ended in a DataError traceback)."""
    (tmp_path / "u.data").write_text("1\t10\t9\t881250949\n")
    (tmp_path / "u.item").write_text("10|Movie (1995)|01-Jan-1995||http://x|" + "|".join("0" * 19) + "\n")
    p = subprocess.run([sys.executable, "bench/quality.py", "--synth", "300x200", "--movielens", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and p.stdout == "" and p.stderr.strip().splitlines() == [
        f"quality.py: error: --movielens {tmp_path}: u.data: column rating has 1 rating(s) outside MovieLens' 0.5 "
        "to 5 stars, the first 9 on line 1 (--help for usage)"], p.stderr
