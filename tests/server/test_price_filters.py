"""Price filters compare the prices as given (float64), not the float32 ranker feature."""
from __future__ import annotations

import numpy as np

from recserve.bundle import Bundle
from recserve.events import EventStore
from recserve.pipeline.filters import allowed_items
from recserve.pipeline.messages import Filters
from recserve.pipeline.recommender import Recommender


def _allowed(rec, **bounds) -> np.ndarray:
    mask, _, _ = allowed_items(rec.tables, rec.n_items, Filters(in_stock_only=False, **bounds),
                               rec._refresh_items())
    return np.ones(rec.n_items, bool) if mask is None else mask


def test_bounds_are_exact_for_given_and_updated_prices(demo_bundle, tmp_path):
    from trainer.synth import synth

    ds, _ = synth(300, 200, seed=0)                 # the demo bundle's data: its prices as given
    with Bundle.open(demo_bundle) as b:
        rec = Recommender(b, EventStore(tmp_path / "ev"))
        ids = [b.tables.id_of("item", r) for r in range(b.n_items)]
        given = dict(zip(map(str, ds.item_ids), ds.item_price))
        price = np.array([given[i] for i in ids])
        for p in price[:40]:                        # inclusive at the exact given price, both ends
            assert np.array_equal(_allowed(rec, min_price=p, max_price=p), price == p)
            assert np.array_equal(_allowed(rec, max_price=np.nextafter(p, -1)), price < p)
        # prices a float32 cannot hold: 1,000,000 is above 999,999.99; 20,000,001 is not 20,000,000
        rec.update_items([(ids[1], None, 1_000_000.0), (ids[2], None, 20_000_001.0)])
        assert not _allowed(rec, max_price=999_999.99)[1] and _allowed(rec, max_price=1e6)[1]
        assert not _allowed(rec, max_price=20_000_000)[2] and _allowed(rec, min_price=20_000_001)[2]
        assert not _allowed(rec, min_price=20_000_001.5)[2]
        res = rec.similar(ids[3], 20, Filters(min_price=999_999.999))
        assert sorted(i.item_id for i in res.items) == sorted([ids[1], ids[2]])


def test_a_bundle_without_exact_prices_filters_on_the_feature(demo_bundle, tmp_path):
    """Bundles written before ``item_price`` existed compare the float32 feature column, as they did."""
    with Bundle.open(demo_bundle) as b:
        rec = Recommender(b, EventStore(tmp_path / "ev"))
        rec.base_price = None
        rec._items = rec._snapshot(rec.base_feats, None)
        rec._items_gen = -1
        feat = np.asarray(b.item_feats[:, b.schema.item_columns.index("price")])
        p = float(feat[5])
        assert np.array_equal(_allowed(rec, min_price=p, max_price=p), feat == np.float32(p))
        rec.update_items([(b.tables.id_of("item", 5), None, 123.0)])
        assert _allowed(rec, min_price=123.0, max_price=123.0)[5]
