"""The ranker's training rows are exactly what serving computes for the same (user, item, context)."""
from __future__ import annotations

import numpy as np
import pytest

from recserve._core import candidates as C
from recserve._core.cross import cross_reference
from recserve.bundle import Bundle
from trainer import ranker as rk
from trainer.build import artifacts_from_bundle
from trainer.retrieval import candidates_for


def _training_groups(art, params, users):
    """Label the top candidate of each user as positive and run the trainer's own row builder."""
    cands = {u: m for u, _v, _l, m in candidates_for(art, users, params)}
    labels = {u: {int(m.rows[0]): 1} for u, m in cands.items() if len(m) > 1}
    first = {u: (art.now, 0) for u in labels}
    X, y, groups, gusers, _ = rk.training_rows(art, np.array(sorted(labels)), labels, first, params)
    starts = np.r_[0, np.cumsum(groups)]
    return {int(u): (X[starts[k]:starts[k + 1]], cands[int(u)]) for k, u in enumerate(gusers)}


def _trending_of(t, params: dict, u: int):
    """The trending list user ``u``'s popular source reads, from the tables alone: with ``warm_trending``
    country and a list for her country, that country's whole order (the numpy reference); else the global
    list."""
    from recserve._core.regional import order_reference

    rows, scores = np.array(t.array("trend_rows")), np.array(t.array("trend_scores"))
    if params.get("warm_trending") != "country":
        return rows, scores
    c, ip = int(t.array("user_country")[u]), np.array(t.array("country_indptr"))
    if c < 0 or ip[c + 1] == ip[c]:
        return rows, scores
    order, s = order_reference(t, c)
    return order.astype(np.int32), s.astype(np.float32)


def test_the_demo_bundle_trains_warm_users_on_their_countrys_list(demo_bundle):
    """The parity tests below run with the per-country popular source: the demo data has countries."""
    with Bundle.open(demo_bundle) as b:
        assert b.params["warm_trending"] == "country" and b.tables.has_array("country_indptr")
        code, ip = np.asarray(b.tables.array("user_country")), np.asarray(b.tables.array("country_indptr"))
        with_list = (code >= 0) & (np.diff(ip)[np.maximum(code, 0)] > 0)
        assert 0.3 < with_list.mean() < 1.0          # users of both kinds


def test_training_rows_equal_numpy_reference(demo_bundle):
    with Bundle.open(demo_bundle) as b:
        art = artifacts_from_bundle(b)
        params = b.params
        t = b.tables
        ip, hi, hts, hev = (np.array(t.array(n)) for n in ("hist_indptr", "hist_items", "hist_ts", "hist_event"))
        stored = [np.array(t.array(n)) for n in ("consumed_users", "consumed_indptr", "consumed_items")]
        # with the users whose history, bounded, misses some of their items
        users = np.union1d(np.arange(0, b.n_users, 7), stored[0])
        groups = _training_groups(art, params, users)
        assert len(groups) >= 10 and set(groups) & set(stored[0].tolist())
        # the catalogue at the bundle's now: the items created after it are in no list
        hidden = np.flatnonzero(np.asarray(t.array("item_created")) > art.now)
        assert len(hidden) > 0
        skip = set(hidden.tolist())
        for u, (X, merged) in groups.items():
            # independently: history straight from the tables, one-user ANN query, shared merge, numpy crossing
            a, e = ip[u], ip[u + 1]
            consumed = C.stored_consumed(*stored, u)
            consumed = C.sorted_unique(hi[a:e]) if consumed is None else consumed
            vec = C.history_vector(b.item_emb, hi[a:e], hev[a:e], hts[a:e], art.now, params)
            if np.linalg.norm(vec) > 0:
                def query(k):
                    labels, dist = b.index.knn_query(vec, k=k, filter=lambda r: r not in skip)
                    return labels[0], 1 - dist[0]
                ann = C.ann_lists(query, params, hi[a:e], b.n_items - len(hidden), consumed=consumed)
            else:                      # no history: a cold user, no ANN list
                ann = np.zeros(0, np.int64), np.zeros(0, np.float32)
            lists = C.source_lists(hi[a:e], hts[a:e], ann[0], ann[1], np.array(t.array("i2i_rows")),
                                   np.array(t.array("i2i_scores")), *_trending_of(t, params, u), params,
                                   hidden=hidden)
            m2 = C.merge_for_user(lists, consumed, b.n_items, params, extra_excluded=hidden)
            np.testing.assert_array_equal(m2.rows, merged.rows)
            assert not set(m2.rows.tolist()) & skip
            ref = cross_reference(b.schema, b.item_feats, b.item_emb, b.user_feats[u], vec, m2.rows,
                                  C.context_vector(art.now), m2.rank, m2.score, art.now / 86400.0)
            np.testing.assert_allclose(X, ref, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("ef, head_min", [(None, 256), (3, 256), (None, 3)])
def test_training_rows_equal_server_rows(demo_bundle, monkeypatch, ef, head_min):
    """Through the server's Recommender (the serving code path), when it is present; also with a search
    breadth below the ANN quota, where hnswlib's answer depends on k (the server once asked for one more),
    and with country heads that grow from 3 items (the demo catalogue is shorter than the default first
    head), on both sides."""
    from recserve._core.regional import RegionalTrending

    monkeypatch.setattr(RegionalTrending, "HEAD_MIN", head_min)
    try:
        from recserve.pipeline import ranking as R
        from recserve.pipeline.recommender import Filters, RecRequest, Recommender
    except ImportError as exc:
        pytest.skip(f"server pipeline not importable: {exc}")
    captured = {}
    real = R.features

    def spy(crosser, user_row, user_vec, merged, context, now_days):
        out = real(crosser, user_row, user_vec, merged, context, now_days)
        captured["X"], captured["rows"] = out, np.array(merged.rows)
        return out

    monkeypatch.setattr(R, "features", spy)
    with Bundle.open(demo_bundle) as b:
        art = artifacts_from_bundle(b)
        params = dict(b.params, **({} if ef is None else {"ef": ef}))
        # with the users whose history, bounded, misses some of their items
        groups = _training_groups(art, params, np.union1d(np.arange(0, b.n_users, 11), art.consumed_users))
        rec = Recommender(b, None, {"ef": ef})
        asked = []
        query = rec.ann.query
        monkeypatch.setattr(rec.ann, "query", lambda vec, k, *a: asked.append(k) or query(vec, k, *a))
        now = art.now
        ctx = C.context_vector(now)
        ip = np.asarray(b.tables.array("hist_indptr"))
        # a k above the popular quota too (the API's default 20 is, on tuned bundles with a quota of 10):
        # the popular source keeps its trained quota while the sources hold four times k, so its ranks
        # are those the ranker was trained on (it once took k, ranks the ranker never saw)
        big_k = int(params["quotas"]["popular"]) + 5
        assert C.PER_K * big_k <= int(params["cap"])
        checked = 0
        for u, (X, merged) in groups.items():
            if ip[u + 1] == ip[u]:          # no history: served four times k popular items, by design
                continue
            for k in (10, big_k):
                if len(merged.rows) < C.PER_K * k:      # the popular source goes deeper, by design
                    continue
                req = RecRequest(user_id=b.tables.id_of("user", u), k=k, timestamp=now, hour=int(ctx[0]),
                                 weekday=int(ctx[1]), device=0, filters=Filters(in_stock_only=False))
                asked.clear()
                rec.recommend(req)
                n = int(ip[u + 1] - ip[u])      # the index is asked for the trainer's k (ef <= k: it matters)
                m = b.n_items - len(art.unreleased)     # the catalogue at now
                assert set(asked) <= {C.ann_first_k(params, n, m), C.ann_k(params, n, m)}, asked
                np.testing.assert_array_equal(captured["rows"], merged.rows)
                np.testing.assert_allclose(captured["X"], X, rtol=1e-6, atol=1e-6, equal_nan=True)
                checked += k == big_k
        assert checked >= 5


def test_user_emb_is_the_long_term_history_vector(demo_bundle):
    from recserve._core.embed import UserVectorParams, user_vector_reference

    with Bundle.open(demo_bundle) as b:
        t = b.tables
        ue, ip, hi, hev = (np.array(t.array(n)) for n in ("user_emb", "hist_indptr", "hist_items", "hist_event"))
        p = b.params
        lt = UserVectorParams(p["decay_long"], p["decay_long"], 1.0, 0.0)
        for u in range(0, b.n_users, 13):
            a, e = ip[u], ip[u + 1]
            ref = user_vector_reference(b.item_emb, hi[a:e], lt,
                                        event_weights=np.asarray(p["event_weights"])[hev[a:e]])
            np.testing.assert_allclose(ue[u], ref, atol=1e-5)


def test_the_evaluated_full_pipeline_is_what_the_server_answers(demo_bundle, monkeypatch):
    """``full+mmr`` in the offline table is the server's answer to k = 50 (stock not applied, the same
    time): the same candidates, ranker and re-rank code, creator fill and back-to-back rule included."""
    from recserve.pipeline.recommender import Filters, RecRequest, Recommender
    from trainer import evaluate as ev

    captured = {}
    real = ev._metrics

    def spy(rec, truths, *a):
        captured.setdefault("lists", []).append(rec)
        return real(rec, truths, *a)

    monkeypatch.setattr(ev, "_metrics", spy)
    with Bundle.open(demo_bundle) as b:
        art = artifacts_from_bundle(b)
        users = np.arange(0, b.n_users, 9)
        fresh = [next(i for i in range(b.n_items) if i not in set(art.consumed(u).tolist())) for u in users]
        creators = b.item_feats[:, b.schema.item_columns.index("creator")].astype(np.int64)
        res = ev.evaluate(art, rk.Scorer(b.ranker_text), users, np.array(fresh), np.full(len(users), art.now),
                          b.params, creators)
        full = captured["lists"][ev.METHODS.index("full+mmr")]
        evaluated, _ = ev.eval_users(art, users, np.array(fresh), 2000, 0)       # those with a history
        assert res["users"] == len(evaluated) == len(full) >= 20
        rec = Recommender(b, None)
        ctx = C.context_vector(art.now)
        for u, mine in zip(evaluated.tolist(), full):
            req = RecRequest(user_id=b.tables.id_of("user", u), k=50, timestamp=art.now, hour=int(ctx[0]),
                             weekday=int(ctx[1]), filters=Filters(in_stock_only=False))
            served = b.tables.rows_of("item", [i.item_id for i in rec.recommend(req).items])
            np.testing.assert_array_equal(served, mine)


def test_popular_ranks_are_the_trained_ones_when_out_of_stock_items_are_skipped(demo_bundle, monkeypatch):
    """With the default in-stock filter and k above the popular quota, the popular list is refilled from
    the whole trending list: an item's rank there (a ranker feature) is the one it has unfiltered, as in
    training (before: its rank among in-stock items only)."""
    from recserve.pipeline import ranking as R
    from recserve.pipeline.recommender import Filters, RecRequest, Recommender

    seen = []
    real = R.features
    monkeypatch.setattr(R, "features", lambda c, u, v, merged, *a: seen.append(merged) or real(c, u, v, merged, *a))
    with Bundle.open(demo_bundle) as b:
        rec = Recommender(b, None)
        s = list(b.schema.sources).index("popular")
        stock = np.asarray(b.item_feats)[:, b.schema.item_columns.index("in_stock")] > 0.5
        assert not stock.all()
        k = 150                                 # above the popular list the sources give: refilled
        compared = 0
        for u in range(0, b.n_users, 25):
            uid = b.tables.id_of("user", u)
            rec.recommend(RecRequest(user_id=uid, k=k, filters=Filters(in_stock_only=False)))
            rec.recommend(RecRequest(user_id=uid, k=k))
            every, in_stock = seen[-2], seen[-1]
            rank_of = {int(r): int(x) for r, x in zip(every.rows, every.rank[:, s]) if x >= 0}
            for r, x in zip(in_stock.rows, in_stock.rank[:, s]):
                if x >= 0 and int(r) in rank_of:
                    assert rank_of[int(r)] == int(x), (uid, int(r))
                    compared += 1
        assert compared > 50


def test_the_evaluations_trending_row_is_the_sources_first_k(demo_bundle):
    """``candidates_for(k=...)`` gives, as the popular list, the trending source's first k items the user
    has not consumed (the evaluation's trending row, at k = 50), however few of them the merge took: the
    popular source keeps its trained quota where the other sources hold four times k (a quota of 5:
    the trending list the sources read is shorter than k for users with a short history)."""
    k = 20
    with Bundle.open(demo_bundle) as b:
        art = artifacts_from_bundle(b)
        params = dict(b.params, quotas=dict(b.params["quotas"], popular=5))
        users = np.flatnonzero(np.diff(np.asarray(b.tables.array("hist_indptr"))) > 0)[::7]
        checked = 0
        for u, _v, lists, merged in candidates_for(art, users, params, k=k):
            gone = set(art.consumed(u).tolist()) | set(np.asarray(art.unreleased).tolist())
            trend, _ = _trending_of(b.tables, params, u)
            want = [r for r in trend.tolist() if r not in gone][:k]
            got = [r for r in lists[C.SOURCES.index("popular")][0].tolist() if r not in gone][:k]
            assert got == want, u
            checked += len(merged) >= C.PER_K * k
        assert checked >= 5
