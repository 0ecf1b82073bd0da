from recserve.bundle import Bundle, resolve, verify


def test_demo_bundle_loads(demo_bundle):
    assert (demo_bundle / "CURRENT").is_file()
    m = verify(demo_bundle)
    assert resolve(demo_bundle).name == m["version"]
    with Bundle.open(demo_bundle) as b:
        assert b.n_items == 200 and b.n_users == 300
        assert b.item_emb.shape == (200, m["dim"])
        # every item finds itself (or an identical vector: cold items share a category mean) at distance 0
        labels, dist = b.index.knn_query(b.item_emb[:20], k=1)
        assert abs(dist[:, 0]).max() < 1e-4
        assert b.ranker_text.startswith("tree")
