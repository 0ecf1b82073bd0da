"""The trainer's batched ANN step asks the index exactly as the server's per-request ``ann_lists`` does."""
from types import SimpleNamespace

import hnswlib
import numpy as np
import pytest

from recserve._core import candidates as C
from recserve.pipeline.candidates import AnnSource
from trainer.retrieval import ann_batch


@pytest.mark.parametrize("n_hidden", [0, 150])
def test_ann_batch_equals_per_user_two_step_queries(n_hidden):
    """Also with items not in the catalogue at the artifacts' now (``unreleased``): the search skips them
    (the server's ``AnnSource.query`` with ``hidden``) and asks for k out of the catalogue that is left."""
    rng = np.random.default_rng(3)
    n, d = 1500, 16
    emb = rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    idx = hnswlib.Index(space="cosine", dim=d)
    idx.init_index(max_elements=n, ef_construction=100, M=16, random_seed=1)
    idx.add_items(emb, np.arange(n), num_threads=1)
    p = dict(C.DEFAULT_PARAMS, quotas={"ann": 40, "i2i": 10, "session": 10, "popular": 10}, history_len=300,
             ef=48)
    vecs = emb[rng.integers(0, n, 12)] + 0.05 * rng.standard_normal((12, d)).astype(np.float32)
    vecs[5] = 0.0                                         # a user without a vector gets no ANN list
    hists = []
    for u, v in enumerate(vecs):
        order = np.argsort(-(emb @ v))
        if u % 3 == 0:
            hists.append(order[:200])                     # long and near: the first answer is short
        elif u % 3 == 1:
            hists.append(order[-200:])                    # long and far: the first answer is enough
        else:
            hists.append(order[:10])                      # short
    indptr = np.r_[0, np.cumsum([len(h) for h in hists])]
    items = np.concatenate(hists).astype(np.int32)
    hidden = np.sort(rng.choice(n, n_hidden, replace=False)).astype(np.int64)
    art = SimpleNamespace(item_emb=emb, index=idx, hist_indptr=indptr, unreleased=hidden,
                          history=lambda u: (items[indptr[u]:indptr[u + 1]], None, None),
                          consumed=lambda u: C.sorted_unique(items[indptr[u]:indptr[u + 1]]))
    got = ann_batch(art, vecs.astype(np.float32), np.arange(12), p, threads=1)
    idx.set_ef(48)
    served = AnnSource(idx, emb)
    asked_twice = 0
    for u, v in enumerate(vecs):
        if u == 5:
            assert len(got[u][0]) == 0
            continue
        asked = []

        def query(k):
            asked.append(k)
            return served.query(v, k, None, False, 48, hidden)        # the server's search

        want = C.ann_lists(query, p, hists[u], n - n_hidden)
        assert not np.isin(got[u][0], hidden).any()
        np.testing.assert_array_equal(got[u][0], want[0])
        np.testing.assert_allclose(got[u][1], want[1], rtol=1e-6)
        asked_twice += len(asked) == 2
    assert asked_twice == 4                               # users 0, 3, 6, 9
