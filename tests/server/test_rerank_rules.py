"""Business rules of the re-rank stage on a real bundle, in process: creators and new items."""
from __future__ import annotations

import numpy as np
import pytest

from recserve.events import EventStore
from recserve.pipeline.recommender import Recommender, RecRequest


def _users(b, n=25):
    return [b.tables.id_of("user", r) for r in range(0, min(n, b.n_users))]


def _creators(b, item_ids):
    cols = b.tables.columns("item_feats")
    rows = b.tables.rows_of("item", item_ids)
    return np.asarray(b.item_feats)[rows, cols.index("creator")].astype(int)


def test_no_two_adjacent_items_by_one_creator(bundle, tmp_path):
    rec = Recommender(bundle, EventStore(tmp_path / "ev"))
    checked = 0
    for u in _users(bundle):
        res = rec.recommend(RecRequest(user_id=u, k=20))
        c = _creators(bundle, [i.item_id for i in res.items])
        known = c >= 0
        if len(set(c[known].tolist())) < 2:
            continue
        checked += 1
        assert not any(c[j] >= 0 and c[j] == c[j + 1] for j in range(len(c) - 1)), (u, c.tolist())
    assert checked > 0


def test_novelty_boost_promotes_new_items(bundle, tmp_path):
    cols = bundle.tables.columns("item_feats")
    created = np.asarray(bundle.item_feats)[:, cols.index("created_days")]
    newest_day = float(created.max())
    # "new" = created in the last 10% of the catalogue's time span, seen from the newest item's day
    span = newest_day - float(created.min())
    params = {"novelty_boost": 5.0, "new_item_days": 0.1 * span}
    plain = Recommender(bundle, EventStore(tmp_path / "a"))
    boosted = Recommender(bundle, EventStore(tmp_path / "b"), params)
    new_rows = set(np.flatnonzero(created >= newest_day - 0.1 * span).tolist())
    ts = newest_day * 86400.0
    share = []
    for rec in (plain, boosted):
        hits = total = 0
        for u in _users(bundle):
            res = rec.recommend(RecRequest(user_id=u, k=10, timestamp=ts))
            rows = bundle.tables.rows_of("item", [i.item_id for i in res.items]).tolist()
            hits += sum(r in new_rows for r in rows)
            total += len(rows)
        share.append(hits / max(total, 1))
    assert share[1] > share[0]


def test_candidates_setting_scales_quotas_and_cap(bundle):
    from recserve.pipeline.recommender import scaled_quotas

    base = Recommender(bundle, None)
    big = Recommender(bundle, None, {"candidates": 3 * base.cap})
    assert big.cap == 3 * base.cap
    assert sum(big.quotas.values()) >= 3 * base.cap
    assert set(big.quotas) == set(base.quotas)
    assert big.cparams["quotas"] == big.quotas            # the shared retrieval sees the same quotas
    with pytest.raises(ValueError, match="candidates"):
        scaled_quotas({"ann": 10}, 0)
    u = _users(bundle, 1)[0]
    counts = []
    for rec in (base, big):
        res = rec.recommend(RecRequest(user_id=u, k=20))
        assert len(res.items) == 20
    import recserve.pipeline.recommender as RM

    orig = RM.merge_candidates
    try:
        RM.merge_candidates = lambda *a, **kw: counts.append(len(orig(*a, **kw))) or orig(*a, **kw)
        base.recommend(RecRequest(user_id=u, k=20))
        big.recommend(RecRequest(user_id=u, k=20))
    finally:
        RM.merge_candidates = orig
    assert counts[1] > counts[0]


def test_fill_pass_keeps_creators_apart():
    """The creator cap runs out, the uncapped fill starts after an item by the same creator: reordered."""
    from recserve.pipeline.rerank import diversify

    emb = np.eye(6, dtype=np.float32)
    rows = np.arange(6, dtype=np.int32)
    creators = np.array([0, 1, 0, 1, 1, 0])
    rel = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], np.float32)   # the fill prefers creator 1 (row 4)
    pos, pen = diversify(rel, emb, rows, 6, 1.0, creators, 2)
    c = creators[pos]
    assert sorted(pos.tolist()) == list(range(6))
    assert all(c[j] != c[j + 1] for j in range(5)), c.tolist()
    assert len(pen) == 6


def test_last_item_moves_up_when_nothing_later_separates():
    from recserve.pipeline.rerank import diversify

    emb = np.eye(5, dtype=np.float32)
    creators = np.array([0, 1, 2, 0, 0])
    rel = np.array([1.0, 0.9, 0.8, 0.7, 0.6], np.float32)
    pos, _ = diversify(rel, emb, np.arange(5, dtype=np.int32), 5, 1.0, creators, 2)
    c = creators[pos]
    assert sorted(pos.tolist()) == list(range(5))
    assert all(c[j] != c[j + 1] for j in range(4)), c.tolist()
    # one creator only: nothing to separate, the order is kept
    pos, _ = diversify(rel, emb, np.arange(5, dtype=np.int32), 5, 1.0, np.zeros(5, int), 2)
    assert pos.tolist() == [0, 1, 2, 3, 4]


def test_deadline_stops_the_pipeline(bundle):
    """A deadline that has passed stops Recommend at the next stage boundary and SimilarItems at once,
    with DEADLINE_EXCEEDED; a future one changes nothing."""
    import time

    import grpc

    from recserve.pipeline.errors import DeadlineExceeded
    from recserve.pipeline.recommender import Filters
    from recserve.service import status_of

    rec = Recommender(bundle, None)
    user = _users(bundle, 1)[0]
    with pytest.raises(DeadlineExceeded) as e:
        rec.recommend(RecRequest(user_id=user, k=10, deadline=time.monotonic() - 0.001))
    assert e.value.stage == "validate"
    assert status_of(e.value)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    item = bundle.tables.id_of("item", 0)
    with pytest.raises(DeadlineExceeded):
        rec.similar(item, 5, Filters(), deadline=time.monotonic() - 0.001)
    later = time.monotonic() + 60
    assert len(rec.recommend(RecRequest(user_id=user, k=10, deadline=later)).items) == 10
    assert len(rec.similar(item, 5, Filters(), deadline=later).items) == 5
