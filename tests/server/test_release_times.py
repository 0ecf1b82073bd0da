"""An item whose creation time is after a request's time is not released yet: Recommend (at the request's
time, the server's clock when it gives none) and SimilarItems (at the server's clock) never answer with it;
once the time is past its creation it is an item like any other."""
from __future__ import annotations

import numpy as np
import pytest

from recserve.bundle import Bundle
from recserve.pipeline.messages import Filters
from recserve.pipeline.recommender import Recommender, RecRequest
from srvutil import RELEASE


@pytest.fixture(scope="module")
def prelisted_bundle(prelisted):
    root, later = prelisted
    with Bundle.open(root) as b:
        yield b, later


def _answers(rec, b, ts, users):
    out = []
    for u in users:
        r = rec.recommend(RecRequest(user_id=u, k=50, timestamp=ts, filters=Filters(in_stock_only=False)))
        out.append([i.item_id for i in r.items])
    return out


def test_recommend_leaves_out_items_not_released_at_the_requests_time(prelisted_bundle):
    b, later = prelisted_bundle
    rec = Recommender(b, None)
    users = [b.tables.id_of("user", r) for r in range(0, b.n_users, 6)] + ["someone-new"]
    for ts in (0.0, float(b.tables.meta("now")), RELEASE - 1.0):
        for ids in _answers(rec, b, ts, users):
            assert len(ids) == 50 and not set(ids) & later, ts
    released = _answers(rec, b, RELEASE + 86400.0, users)
    assert sum(len(set(ids) & later) for ids in released) > 0


def test_similar_items_leaves_out_items_not_released_yet(prelisted_bundle):
    b, later = prelisted_bundle
    rec = Recommender(b, None)
    rows = b.tables.rows_of("item", sorted(later))
    emb = np.asarray(b.item_emb)
    asked = 0
    for r in rows:
        sims = emb @ emb[r]
        sims[rows] = -np.inf
        near = int(np.argmax(sims))                 # the released item nearest to a pre-listed one
        res = rec.similar(b.tables.id_of("item", near), 30, Filters(in_stock_only=False))
        ids = [i.item_id for i in res.items]
        assert len(ids) == 30 and not set(ids) & later
        asked += 1
    assert asked == len(later)


def test_similar_items_of_an_unreleased_item_answers_with_released_ones(prelisted_bundle):
    """A page may preview an item before its release: its SimilarItems answer, without unreleased items."""
    b, later = prelisted_bundle
    rec = Recommender(b, None)
    for item in sorted(later):
        ids = [i.item_id for i in rec.similar(item, 20, Filters(in_stock_only=False)).items]
        assert len(ids) == 20 and not set(ids) & later and item not in ids
