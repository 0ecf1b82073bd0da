"""trainer.baselines on hand-made matrices with known answers; bench/protocols.py: a smoke run, and its exact
ranking of every item (``ann-all``) against plain Python and against the bundle's own index."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

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
                        "0,1", "--quick", "--factors", "8", "--ranker-users", "120"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "protocol (a)" in p.stdout and "protocol (b)" in p.stdout
    assert "ALS reg, alpha per seed [[" in p.stdout         # chosen on the validation split, not the trainer's
    assert "item-kNN neighbours per seed [" in p.stdout
    # each seed's split has its own users and counts (the header showed the first seed's as everyone's)
    per_seed = re.search(r"protocol \(a\).*users per seed \[(\d+), (\d+)\].*train / test interactions per seed "
                         r"\[\((\d+), (\d+)\), \((\d+), (\d+)\)\]", p.stdout)
    assert per_seed, p.stdout[:2000]
    for m in ("popularity", "item-knn", "ease", "implicit-als", "recserve full(l=1)"):
        assert m in p.stdout


def test_protocols_refuses_a_missing_path_it_was_given(tmp_path):
    """Only the absent default data set is skipped; a path named on the command line must exist."""
    p = subprocess.run([sys.executable, str(REPO / "bench" / "protocols.py"), "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith(
        f"--data: {tmp_path / 'nope'} does not exist (--help for usage)"), p.stderr
    assert "Traceback" not in p.stderr


def _protocols():
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    import protocols

    return protocols


class _Art:
    """The three things ``rank_all`` reads of the trainer's artifacts."""

    def __init__(self, emb, unreleased, consumed):
        self.item_emb, self.unreleased, self._consumed = emb, np.asarray(unreleased, np.int64), consumed

    def consumed(self, u):
        return np.asarray(self._consumed[u], np.int64)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 60), st.integers(1, 8), st.integers(0, 2 ** 31 - 1), st.integers(1, 70))
def test_rank_all_is_the_exact_cosine_order_of_what_she_may_see(n_items, d, seed, n):
    """Against plain Python: the released items she did not consume, by cosine with her vector (float64),
    highest first; float32 near-ties may swap, so the check is on the scores, within 1e-5."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_items, d)).astype(np.float32)
    emb[rng.random(n_items) < 0.1] = 0.0                  # items without an embedding score 0
    unreleased = rng.choice(n_items, size=int(rng.integers(0, n_items // 2 + 1)), replace=False)
    consumed = {0: rng.choice(n_items, size=int(rng.integers(0, n_items)), replace=False), 1: np.zeros(0, int)}
    vecs = rng.normal(size=(3, d)).astype(np.float32)
    vecs[2] = 0.0
    got = _protocols().rank_all(_Art(emb, unreleased, consumed | {2: np.zeros(0, int)}), vecs, np.array([0, 1, 2]), n)
    assert len(got[2]) == 0                               # a zero vector: nothing to rank by
    for u in (0, 1):
        allowed = [r for r in range(n_items) if r not in set(unreleased.tolist()) | set(consumed[u].tolist())]

        def cos(r):
            e = emb[r].astype(np.float64)
            ne = np.linalg.norm(e)
            return 0.0 if ne == 0 else float(e @ vecs[u] / ne / np.linalg.norm(vecs[u].astype(np.float64)))

        ref = sorted((cos(r) for r in allowed), reverse=True)[:n]
        mine = [cos(r) for r in got[u].tolist()]
        assert len(set(got[u].tolist())) == len(mine) == len(ref)
        assert set(got[u].tolist()) <= set(allowed)
        np.testing.assert_allclose(mine, ref, atol=1e-5)


def test_rank_all_agrees_with_the_bundles_index_where_it_can_reach_every_item(demo_bundle):
    """On a real bundle of 200 items hnswlib can still return every item: its answer at k = all items is the
    exact ranking, bar a near-tie."""
    from recserve.bundle import Bundle
    from trainer.build import artifacts_from_bundle
    from trainer.retrieval import user_vecs

    b = Bundle.open(str(demo_bundle))
    try:
        art = artifacts_from_bundle(b)
        users = np.arange(0, b.n_users, 7)
        vecs = user_vecs(art, users, b.params)
        live = np.linalg.norm(vecs, axis=1) > 0
        users, vecs = users[live], vecs[live]
        assert len(users) > 20
        got = _protocols().rank_all(art, vecs, users, 20)
        art.index.set_ef(b.n_items)
        labels, _ = art.index.knn_query(vecs, k=b.n_items)
        agree = []
        for j, u in enumerate(users.tolist()):
            drop = set(art.consumed(u).tolist()) | set(np.asarray(art.unreleased).tolist())
            ref = [r for r in labels[j].tolist() if r not in drop][:20]
            agree.append(len(set(ref) & set(got[j].tolist())) / max(len(ref), 1))
            assert len(got[j]) == len(ref)
        assert np.mean(agree) >= 0.98, np.mean(agree)
    finally:
        b.close()
