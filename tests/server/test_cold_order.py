"""A cold request (no history, no session) is ordered by the trending score by default (``cold_order``), or
by the ranker when the bundle or the server says so; a request with anything of the user's is ranked."""
from __future__ import annotations

import numpy as np
import pytest

from recserve.config import ServeConfig, validate
from recserve.pipeline.messages import Filters
from recserve.pipeline.recommender import Recommender, RecRequest


def _cold(rec, uid, k=20, explain=False, lam=1.0):
    now = float(rec.tables.meta("now"))
    return rec.recommend(RecRequest(user_id=uid, k=k, timestamp=now, explain=explain, mmr_lambda=lam,
                                    max_per_creator=0, filters=Filters(in_stock_only=False)))


@pytest.mark.parametrize("uid", ["", "nobody-at-all"])
def test_cold_answers_follow_the_trending_list_by_default(bundle, uid):
    rec = Recommender(bundle, None)
    r = _cold(rec, uid, explain=True)
    assert r.cold_start and len(r.items) == 20
    now = float(rec.tables.meta("now"))
    released = [int(x) for x in rec.trend_rows if x not in set(rec._hidden(now).tolist())]
    rank = {rec.tables.id_of("item", x): j for j, x in enumerate(released)}
    trend = dict(zip(rec.tables.ids_of("item", rec.trend_rows), rec.trend_scores.tolist()))
    # each item's score is its trending score; with MMR off (lambda 1) and no creator cap the answer is the
    # released trending list's head in its order, but for the swaps that keep a creator from following herself
    assert [i.score for i in r.items] == pytest.approx([trend[i.item_id] for i in r.items])
    got = [rank[i.item_id] for i in r.items]
    assert got[0] == 0 and max(got) < 25 and np.corrcoef(got, np.arange(20))[0, 1] > 0.95, got
    assert all(i.sources == ["popular"] and i.contributions == [] for i in r.items)
    assert r.items[0].relevance == 1.0


def test_cold_order_ranker_ranks_the_same_candidates(bundle):
    trending = Recommender(bundle, None)
    ranked = Recommender(bundle, None, {"cold_order": "ranker"})
    for uid in ("", "nobody-at-all"):
        a, b = _cold(trending, uid, k=50), _cold(ranked, uid, k=50, explain=True)
        assert b.cold_start and len(b.items) == 50
        assert all(i.contributions for i in b.items), "ranked answers explain the ranker's features"
        ids_a, ids_b = [i.item_id for i in a.items], [i.item_id for i in b.items]
        assert ids_a != ids_b
        assert len(set(ids_b) & set(trending.tables.ids_of("item", trending.trend_rows[:200]))) == 50


def test_a_session_item_is_ranked_whatever_the_cold_order(bundle):
    rec = Recommender(bundle, None)
    item = rec.tables.id_of("item", int(rec.trend_rows[0]))
    r = rec.recommend(RecRequest(user_id="", k=10, session_item_ids=[item], explain=True))
    assert not r.cold_start and all(i.contributions for i in r.items)


def test_an_unknown_cold_order_is_refused():
    with pytest.raises(ValueError, match="cold_order: one of trending, ranker, got 'random'"):
        validate(ServeConfig(cold_order="random"))
