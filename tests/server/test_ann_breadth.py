"""Per-query HNSW search breadth: Recommend with the bundle's ef, SimilarItems with its similar_ef."""
from __future__ import annotations

from recserve.pipeline.recommender import Filters, Recommender, RecRequest


def test_each_query_searches_with_its_own_breadth(bundle):
    rec = Recommender(bundle, None, {"ef": 40, "similar_ef": 12})
    rec.sim_rows = None                      # SimilarItems searches the index (not the stored lists)
    user, item = bundle.tables.id_of("user", 0), bundle.tables.id_of("item", 0)
    rec.similar(item, 5, Filters())
    assert bundle.index.ef == 12
    rec.recommend(RecRequest(user_id=user, k=5))
    assert bundle.index.ef == 40
    rec.similar(item, 5, Filters())
    assert bundle.index.ef == 12


def test_a_bundle_without_similar_ef_searches_items_with_its_ef(bundle):
    """Bundles built before similar_ef was tuned keep loading: SimilarItems searches with the bundle's ef."""
    saved = bundle.params.pop("similar_ef")
    try:
        rec = Recommender(bundle, None, None)
    finally:
        bundle.params["similar_ef"] = saved
    assert rec.similar_ef == rec.ef == int(bundle.params["ef"])
    rec.sim_rows = None
    rec.similar(bundle.tables.id_of("item", 0), 5, Filters())
    assert bundle.index.ef == rec.ef


def test_the_demo_bundle_records_its_similar_ef(bundle):
    assert int(bundle.params["similar_ef"]) > 0
