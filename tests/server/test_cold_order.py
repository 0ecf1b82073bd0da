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


def _new_rows(rec, ts, days=14.0):
    """Rows created within ``days`` before ``ts`` and released at it (the novelty boost's new items)."""
    age = (ts - rec.created) / 86400.0
    return set(np.flatnonzero((age >= 0) & (age <= days)).tolist()) - set(rec._hidden(ts).tolist())


def test_a_cold_answer_weighs_new_items_when_the_novelty_boost_is_on(bundle):
    """New items have had little time to trend: with the boost on, a cold answer adds up to k of them to its
    trending candidates (source "new"), released at the request's time, and the boost brings them up."""
    off = Recommender(bundle, None)
    on = Recommender(bundle, None, {"novelty_boost": 1.0})
    now = float(on.tables.meta("now"))
    seen_new = 0
    for ts in (now, now + 10 * 86400.0):
        fresh = _new_rows(on, ts)
        assert fresh, "the demo bundle has items created in the fortnight before these times"
        req = RecRequest(user_id="", k=20, timestamp=ts, filters=Filters(in_stock_only=False))
        a, b = off.recommend(req), on.recommend(req)
        assert "new" not in a.source_counts and all("new" not in i.sources for i in a.items)
        assert 0 < b.source_counts["new"] <= 20
        new = [i for i in b.items if i.sources == ["new"]]
        assert new and {on.tables.row_of("item", i.item_id) for i in new} <= fresh
        assert not {on.tables.row_of("item", i.item_id) for i in b.items} & set(on._hidden(ts).tolist())
        seen_new += len(new)
    assert seen_new >= 2


def test_new_items_keep_to_the_filters_and_stay_out_of_ranked_answers(bundle):
    on = Recommender(bundle, None, {"novelty_boost": 1.0})
    ts = float(on.tables.meta("now")) + 10 * 86400.0
    fresh = sorted(_new_rows(on, ts))
    cat_of = on.base_feats[:, on.c_cat].astype(np.int64)
    cat = on.tables.id_of("category", int(cat_of[fresh[0]]))
    r = on.recommend(RecRequest(user_id="", k=20, timestamp=ts, filters=Filters(in_stock_only=False,
                                                                                include_categories=[cat])))
    # all of the category's items are among its trending candidates already, and the boost brings up the new
    assert {int(cat_of[on.tables.row_of("item", i.item_id)]) for i in r.items} == {int(cat_of[fresh[0]])}
    assert on.tables.id_of("item", fresh[0]) in [i.item_id for i in r.items]
    excluded = on.tables.id_of("item", fresh[0])
    r = on.recommend(RecRequest(user_id="", k=20, timestamp=ts, filters=Filters(in_stock_only=False,
                                                                                exclude_item_ids=[excluded])))
    assert excluded not in [i.item_id for i in r.items]
    # the ranker's answers (cold_order ranker, or a session) meet new items through their own sources
    ranked = Recommender(bundle, None, {"novelty_boost": 1.0, "cold_order": "ranker"})
    item = on.tables.id_of("item", int(on.trend_rows[0]))
    for rec, req in ((ranked, RecRequest(user_id="", k=20, timestamp=ts)),
                     (on, RecRequest(user_id="", k=20, timestamp=ts, session_item_ids=[item]))):
        res = rec.recommend(req)
        assert "new" not in res.source_counts and all("new" not in i.sources for i in res.items)


@pytest.mark.parametrize("seed", range(20))
def test_new_items_are_the_plain_filter_and_sort(seed):
    """NewItems.rows against the plain reference: filter every item, sort by trending then newest, take k."""
    from recserve.pipeline.novelty import NewItems

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    days = np.round(rng.uniform(0, 60, n), int(rng.integers(0, 2)))        # whole days in some cases: ties
    trend = np.where(rng.random(n) < 0.6, 0.0, rng.random(n)).astype(np.float32)
    allowed = rng.random(n) < 0.7 if seed % 2 else None
    excluded = rng.choice(n, size=int(rng.integers(0, n)), replace=False)
    now_days, new_days, k = float(rng.uniform(30, 70)), float(rng.uniform(0, 30)), int(rng.integers(1, 40))
    got = NewItems(days, trend).rows(now_days * 86400.0, new_days, k, allowed, excluded)
    ok = (days >= now_days - new_days) & (days <= now_days) & ~np.isin(np.arange(n), excluded)
    if allowed is not None:
        ok &= allowed
    cand = np.flatnonzero(ok)
    want = cand[np.lexsort((-days[cand], -trend[cand].astype(np.float64)))][:k]
    np.testing.assert_array_equal(got, want)


def test_an_item_is_new_from_the_second_it_is_released(bundle):
    """The window of new items ends at the exact creation times that decide the release (the float32 day
    feature is some 80 s off), so an item released a second before the request is among them."""
    on = Recommender(bundle, None, {"novelty_boost": 1.0})
    created = bundle.item_created()
    none = np.zeros(0, np.int64)
    for row in np.argsort(-created)[:20].tolist():
        t = float(created[row])
        assert row in on.new_items.rows(t + 1.0, 14.0, bundle.n_items, None, none).tolist()
        assert row not in on.new_items.rows(t - 1.0, 14.0, bundle.n_items, None, none).tolist()
    assert Recommender(bundle, None).new_items is None         # no boost: nothing built
