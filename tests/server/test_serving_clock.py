"""Every ranker feature is a snapshot at the bundle's now, the trainer's fit time: the server crosses the
item age there, not at the request's time, which gives the context (hour, weekday) and which items are
released. So an answer does not drift as the bundle ages, and the offline evaluation (features at the cut,
context at the held-out event) is what the server answers at that event's time."""
from __future__ import annotations

import time

import numpy as np
import pytest

from recserve.bundle import Bundle
from recserve.pipeline.messages import Filters
from recserve.pipeline.recommender import Recommender, RecRequest
from srvutil import RELEASE

DAY = 86400.0


@pytest.fixture(scope="module")
def opened(prelisted):
    root, later = prelisted
    with Bundle.open(root) as b:
        yield b, later


def test_an_answer_does_not_drift_with_the_request_time(opened):
    b, _later = opened
    rec = Recommender(b, None)
    now = rec.now
    assert now == float(b.tables.meta("now"))
    soon, late = now + 30 * DAY, now + 3000 * DAY          # the same items released at both (not the 2100 ones)
    created = b.item_created()
    assert np.array_equal(created > soon, created > late)
    compared = 0
    for u in range(0, b.n_users, 6):
        uid = b.tables.id_of("user", u)
        a, z = (rec.recommend(RecRequest(user_id=uid, k=20, timestamp=t, hour=12, weekday=2, device=1))
                for t in (soon, late))
        assert [i.item_id for i in a.items] == [i.item_id for i in z.items], uid
        np.testing.assert_allclose([i.score for i in a.items], [i.score for i in z.items], rtol=1e-6, atol=1e-9)
        compared += 1
    assert compared >= 40


def test_the_evaluation_is_the_served_answer_at_the_held_out_time(opened, monkeypatch):
    """``full+mmr`` for held-out events 200 days after the bundle's now: the server's answer at that time,
    hour and weekday taken from its timestamp (stock not applied offline)."""
    from trainer import evaluate as ev, ranker as rk
    from trainer.build import artifacts_from_bundle

    b, _later = opened
    art = artifacts_from_bundle(b)
    when = art.now + 200 * DAY + 5 * 3600.0
    assert when < RELEASE
    users = np.array([u for u in range(0, b.n_users, 7) if art.hist_indptr[u + 1] > art.hist_indptr[u]])
    fresh = [next(i for i in range(b.n_items) if i not in set(art.history(int(u))[0].tolist())
                  and i not in set(art.unreleased.tolist())) for u in users]
    lists = []
    real = ev._metrics
    monkeypatch.setattr(ev, "_metrics", lambda rec, truths, *a: lists.append(rec) or real(rec, truths, *a))
    creators = b.item_feats[:, b.schema.item_columns.index("creator")].astype(np.int64)
    res = ev.evaluate(art, rk.Scorer(b.ranker_text), users, np.array(fresh), np.full(len(users), when), b.params,
                      creators)
    full = lists[ev.METHODS.index("full+mmr")]
    evaluated, _ = ev.eval_users(art, users, np.array(fresh), 2000, 0)
    assert res["users"] == len(evaluated) == len(full) >= 20
    rec = Recommender(b, None)
    tm, t0 = time.gmtime(when), time.gmtime(art.now)
    assert (tm.tm_hour, tm.tm_wday) != (t0.tm_hour, t0.tm_wday)         # the context is the event's own
    for u, mine in zip(evaluated.tolist(), full):
        req = RecRequest(user_id=b.tables.id_of("user", u), k=50, timestamp=when, filters=Filters(in_stock_only=False))
        served = b.tables.rows_of("item", [i.item_id for i in rec.recommend(req).items])
        np.testing.assert_array_equal(served, mine)
