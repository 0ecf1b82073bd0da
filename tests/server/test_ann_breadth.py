"""Per-query HNSW search breadth: Recommend with the bundle's ef, SimilarItems with its similar_ef."""
from __future__ import annotations

import pytest

from recserve.pipeline.recommender import Filters, Recommender, RecRequest
from srvutil import index_queries


def test_each_query_searches_with_its_own_breadth(bundle):
    rec = Recommender(bundle, None, {"ef": 40, "similar_ef": 1000})     # above twice what SimilarItems asks
    rec.sim_rows = None                      # SimilarItems searches the index (not the stored lists)
    user, item = bundle.tables.id_of("user", 0), bundle.tables.id_of("item", 0)
    rec.similar(item, 5, Filters())
    assert bundle.index.ef == 1000
    rec.recommend(RecRequest(user_id=user, k=5))
    assert bundle.index.ef == 40
    rec.similar(item, 5, Filters())
    assert bundle.index.ef == 1000


def test_similar_items_searches_at_least_twice_as_broad_as_it_asks(bundle):
    from recserve._core.candidates import similar_breadth

    rec = Recommender(bundle, None, {"similar_ef": 12})
    rec.sim_rows = None
    calls = index_queries(rec)
    rec.similar(bundle.tables.id_of("item", 0), 5, Filters())
    (k, ef), = calls
    assert ef == similar_breadth(12, k) == 2 * k and bundle.index.ef == ef


def test_a_bundle_without_similar_ef_searches_items_with_its_ef(bundle):
    """Bundles built before similar_ef was tuned keep loading: SimilarItems searches with the bundle's ef."""
    saved = bundle.params.pop("similar_ef")
    try:
        rec = Recommender(bundle, None, None)
    finally:
        bundle.params["similar_ef"] = saved
    assert rec.similar_ef == rec.ef == int(bundle.params["ef"])
    rec.sim_rows = None
    calls = index_queries(rec)
    rec.similar(bundle.tables.id_of("item", 0), 5, Filters())
    (k, ef), = calls
    assert ef == max(rec.ef, 2 * k)


def test_the_demo_bundle_records_its_similar_ef(bundle):
    assert int(bundle.params["similar_ef"]) > 0


def test_a_short_index_answer_falls_back_to_the_exact_one():
    """hnswlib raises when it reaches fewer than k items (here: items marked deleted); the query answers
    exactly instead of failing the request."""
    import hnswlib
    import numpy as np

    from recserve.pipeline.candidates import AnnSource, brute_force

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = hnswlib.Index(space="cosine", dim=8)
    index.init_index(max_elements=50, M=4, ef_construction=20)
    index.add_items(emb, np.arange(50), num_threads=1)
    for r in range(10):
        index.mark_deleted(r)
    with pytest.raises(RuntimeError):           # hnswlib's own answer: the case the fallback is for
        index.knn_query(emb[:1], k=45, num_threads=1)
    rows, scores = AnnSource(index, emb).query(emb[0], 45, None, False, 20)
    want_rows, want_scores = brute_force(emb, emb[0], np.arange(50), 45)
    assert rows.tolist() == want_rows.tolist()
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
