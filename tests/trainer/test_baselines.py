"""trainer.baselines on hand-made matrices with known answers, and a smoke run of bench/protocols.py."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import scipy.sparse as sp

from cliutil import REPO, run_cli
from trainer import baselines as bl


def _m(rows, n_items):
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(rows), n_items))


# items 0 and 1 always come together; 2..5 are unrelated noise; item 5 is the most popular
X = _m([[0, 1, 5], [0, 1, 5], [0, 1, 2, 5], [0, 1, 3], [2, 3, 5], [3, 4, 5], [2, 4, 5], [0]], 6)


def test_popularity_known_order_and_unseen():
    rec = bl.popularity(X, [7, 4], k=3)
    # counts: 0:5, 1:4, 2:3, 3:3, 4:2, 5:6 -> user 7 (has 0): 5, 1, then 2 (tie with 3, lower id first)
    assert rec[0].tolist() == [5, 1, 2]
    assert not set(rec[1].tolist()) & {2, 3, 5}


def test_ease_recovers_always_cooccurring_item():
    for lam in (0.5, 5.0):
        rec = bl.ease(X, [7], k=1, lam=lam)
        assert rec[0, 0] == 1          # the user who only has item 0 gets item 1
    b = bl.ease_weights(X, 1.0)
    assert np.allclose(np.diag(b), 0.0)
    assert b[0, 1] == b[0].max()       # item 1's strongest predictor is item 0


def test_item_knn_cosine_and_neighbour_cut():
    s = bl.item_knn_similarity(X, neighbours=100)
    # cos(0, 1) = 4 / sqrt(5 * 4)
    assert np.isclose(s[0, 1], 4 / np.sqrt(20))
    assert np.allclose(np.diag(s), 0.0)
    s1 = bl.item_knn_similarity(X, neighbours=1)
    assert ((s1 > 0).sum(0) <= 1).all()          # each target item keeps one neighbour
    assert bl.item_knn(X, [7], k=1)[0, 0] == 1


def test_no_training_items_recommended_and_padding():
    x = sp.random(40, 30, density=0.3, random_state=1, format="csr")
    for fn in (bl.popularity, bl.item_knn, lambda m, u, k: bl.ease(m, u, k, lam=10.0)):
        rec = fn(x, np.arange(40), 30)
        xb = bl.binarize(x)
        for u in range(40):
            seen = set(xb.indices[xb.indptr[u]:xb.indptr[u + 1]].tolist())
            got = rec[u][rec[u] >= 0].tolist()
            assert not seen & set(got)
            assert len(got) == len(set(got))
    full = _m([[0, 1, 2]], 3)
    assert (bl.popularity(full, [0], 2) == -1).all()


def test_tune_ease_picks_from_grid():
    x = sp.random(200, 50, density=0.2, random_state=2, format="csr")
    lam, scores = bl.tune_ease(x, grid=(10.0, 100.0), seed=0)
    assert lam in (10.0, 100.0) and set(scores) == {10.0, 100.0}


def test_protocols_smoke(tmp_path):
    data = tmp_path / "data"
    run_cli("synth", data, "--users", "120", "--items", "80", "--seed", "3", check=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(REPO / "bench" / "protocols.py"), "--data-dir", str(data), "--seeds",
                        "0", "--quick", "--factors", "8", "--ranker-users", "120"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "protocol (a)" in p.stdout and "protocol (b)" in p.stdout
    for m in ("popularity", "item-knn", "ease", "implicit-als", "recserve full(l=1)"):
        assert m in p.stdout


def test_protocols_refuses_a_missing_path_it_was_given(tmp_path):
    """Only the absent default data set is skipped; a path named on the command line must exist."""
    p = subprocess.run([sys.executable, str(REPO / "bench" / "protocols.py"), "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith(
        f"--data: {tmp_path / 'nope'} does not exist (--help for usage)"), p.stderr
    assert "Traceback" not in p.stderr
