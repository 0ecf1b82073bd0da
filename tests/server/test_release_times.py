"""An item whose creation time is after a request's time is not released yet: Recommend (at the request's
time, the server's clock when it gives none) and SimilarItems (at the server's clock) never answer with it;
once the time is past its creation it is an item like any other."""
from __future__ import annotations

import numpy as np
import pytest

from recserve.bundle import Bundle
from recserve.pipeline.messages import Filters
from recserve.pipeline.recommender import Recommender, RecRequest

RELEASE = 4102444800.0          # 2100-01-01T00:00:00Z: after any clock these tests run under


@pytest.fixture(scope="module")
def prelisted(tmp_path_factory):
    """A bundle whose catalogue lists 15 items to be released in 2100 (their interactions kept), and their
    ids."""
    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    ds, _ = synth(300, 200, seed=2)
    rows = np.sort(np.random.default_rng(0).choice(ds.n_items, 15, replace=False))
    ds.item_created[rows] = RELEASE
    root = tmp_path_factory.mktemp("prelisted")
    build(ds, root, {"seed": 0, "factors": 16, "ranker_users": 300, "ranker_rounds": 30, "holdout": 0},
          timer=Timer(verbose=False))
    with Bundle.open(root) as b:
        yield b, {str(ds.item_ids[r]) for r in rows}


def _answers(rec, b, ts, users):
    out = []
    for u in users:
        r = rec.recommend(RecRequest(user_id=u, k=50, timestamp=ts, filters=Filters(in_stock_only=False)))
        out.append([i.item_id for i in r.items])
    return out


def test_recommend_leaves_out_items_not_released_at_the_requests_time(prelisted):
    b, later = prelisted
    rec = Recommender(b, None)
    users = [b.tables.id_of("user", r) for r in range(0, b.n_users, 6)] + ["someone-new"]
    for ts in (0.0, float(b.tables.meta("now")), RELEASE - 1.0):
        for ids in _answers(rec, b, ts, users):
            assert len(ids) == 50 and not set(ids) & later, ts
    released = _answers(rec, b, RELEASE + 86400.0, users)
    assert sum(len(set(ids) & later) for ids in released) > 0


def test_similar_items_leaves_out_items_not_released_yet(prelisted):
    b, later = prelisted
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
