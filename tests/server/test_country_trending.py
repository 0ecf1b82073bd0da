"""A cold request in trending order takes its country's trending list (``context.country``, else the user's
country from the users file) where the bundle holds one, and the global list otherwise."""
from __future__ import annotations

import numpy as np
import pytest

from recserve._core.candidates import not_in_sorted
from recserve.pipeline.messages import Filters
from recserve.pipeline.recommender import Recommender, RecRequest
from recserve.pipeline.regional import CountryTrending
from recserve.v1 import recommender_pb2 as pb


def _ask(rec, uid="", country="", k=20, filters=None):
    now = float(rec.tables.meta("now"))
    return rec.recommend(RecRequest(user_id=uid, k=k, timestamp=now, country=country, mmr_lambda=1.0,
                                    max_per_creator=0, filters=filters or Filters(in_stock_only=False)))


def _ids(r):
    return [i.item_id for i in r.items]


def _with_lists(rec):
    t = rec.tables
    return [t.id_of("country", c) for c in range(t.n_ids("country")) if rec.countries.code(t.id_of("country", c),
                                                                                           None) is not None]


def _reference(rec, code, allowed=None):
    """Every released item allowed, scored as the country scores it, best first (stable on ties)."""
    rows = np.arange(rec.n_items)
    keep = np.ones(rec.n_items, bool)
    keep[rec._hidden(float(rec.tables.meta("now")))] = False
    if allowed is not None:
        keep &= allowed
    rows = rows[keep]
    scores = rec.countries.score_of(code, rows)
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order]


def test_the_demo_bundle_holds_lists_for_its_larger_countries(bundle):
    rec = Recommender(bundle, None)
    assert rec.countries is not None and len(_with_lists(rec)) >= 2
    assert rec.countries.code("XX", None) is None and rec.countries.code("", None) is None


def test_a_country_answer_follows_its_list(bundle):
    rec = Recommender(bundle, None)
    glob = _ids(_ask(rec))
    differs = 0
    for c in _with_lists(rec):
        r = _ask(rec, country=c)
        code = rec.countries.code(c, None)
        rows, scores = _reference(rec, code)
        rank = {rec.tables.id_of("item", int(x)): j for j, x in enumerate(rows)}
        got = [rank[i] for i in _ids(r)]
        # scores are the country's; with MMR off and no creator cap the answer is the head of the country's
        # order, but for the swaps that keep a creator from following herself
        assert [i.score for i in r.items] == pytest.approx([float(scores[j]) for j in got])
        assert r.cold_start and got[0] == 0 and max(got) < 25, (c, got)
        assert all(i.sources == ["popular"] for i in r.items)
        assert (r.cold_list, r.trending_country) == ("country", c)
        differs += _ids(r) != glob
    assert differs, "no country's answer differs from the global one"


def test_no_list_means_the_global_answer(bundle):
    rec = Recommender(bundle, None)
    glob = _ids(_ask(rec))
    assert _ids(_ask(rec, country="XX")) == glob
    assert _ids(_ask(rec, uid="nobody-at-all", country="")) == glob
    c = _with_lists(rec)[0]
    off = Recommender(bundle, None, {"cold_trending": "global"})
    assert _ids(_ask(off, country=c)) == glob
    assert (_ask(off, country=c).cold_list, _ask(off, country=c).trending_country) == ("global", "")
    ranked = Recommender(bundle, None, {"cold_order": "ranker"})
    assert not ranked.cold_regional and ranked.warm_regional         # a warm request still reads its list
    assert (_ask(ranked, country=c).cold_list, _ask(ranked, country=c).trending_country) == ("ranker", "")
    t = rec.tables
    warm = next(t.id_of("user", u) for u in range(t.n_ids("user")) if rec.has_history(t.id_of("user", u)))
    r = _ask(rec, uid=warm, country=c)
    assert not r.cold_start and (r.cold_list, r.trending_country) == ("", "")


def test_a_known_user_without_history_takes_her_own_country(bundle):
    rec = Recommender(bundle, None)
    t = rec.tables
    lists = set(_with_lists(rec))
    codes = t.array("user_country")
    users = [t.id_of("user", u) for u in range(t.n_ids("user"))
             if not rec.has_history(t.id_of("user", u)) and codes[u] >= 0
             and t.id_of("country", int(codes[u])) in lists]
    assert users, "the demo bundle has users with no history before its cut"
    uid = users[0]
    own = t.id_of("country", int(codes[t.row_of("user", uid)]))
    other = next(c for c in sorted(lists) if c != own)
    assert _ids(_ask(rec, uid=uid)) == _ids(_ask(rec, country=own))
    # the request's context wins over the users file, where it has a list; where not, hers stands
    assert _ids(_ask(rec, uid=uid, country=other)) == _ids(_ask(rec, country=other))
    r = _ask(rec, uid=uid, country="XX")
    assert _ids(r) == _ids(_ask(rec, country=own)) and r.trending_country == own


def test_filters_hold_on_the_country_path(bundle):
    rec = Recommender(bundle, None)
    c = _with_lists(rec)[0]
    cats = [rec.tables.id_of("category", 0)]
    r = _ask(rec, country=c, k=10, filters=Filters(in_stock_only=True, include_categories=cats, max_price=50.0))
    feats, col = rec.feats, rec.columns
    for it in r.items:
        row = rec.tables.row_of("item", it.item_id)
        assert feats[row, col["category"]] == 0 and feats[row, col["in_stock"]] == 1
        assert rec.base_price[row] <= 50.0
    assert len(r.items) > 0


def test_top_is_the_head_of_the_full_order(bundle):
    """``top`` reads the country's list and the global list only as far as needed: the same rows and scores
    as scoring every item and sorting, for random filters and exclusions; half of the draws with a weight
    on the global list large enough that items the country never took enter its answer."""
    rec = Recommender(bundle, None)
    countries = _with_lists(rec)
    unlisted_in = 0
    for seed in range(40):
        ct = CountryTrending(rec.tables, rec.trend_rows, rec.trend_scores, rec.trend_of_row)
        rng = np.random.default_rng(seed)
        code = ct.code(countries[seed % len(countries)], None)
        if seed % 2:
            ct.weight = np.array(ct.weight) * 200.0
        allowed = None if seed % 3 == 0 else rng.random(rec.n_items) < rng.uniform(0.05, 0.9)
        gone = np.unique(rng.choice(rec.n_items, size=rng.integers(0, 60), replace=True)).astype(np.int32)
        limit = int(rng.integers(1, 120))
        rows, scores = ct.top(code, allowed, gone, limit)
        keep = np.ones(rec.n_items, bool) if allowed is None else allowed.copy()
        keep[gone] = False
        every = np.flatnonzero(keep)
        want = np.sort(ct.score_of(code, every))[::-1][:limit]
        np.testing.assert_allclose(scores, want.astype(np.float32), rtol=1e-6, err_msg=str(seed))
        assert len(set(rows.tolist())) == len(rows) and keep[rows].all()
        np.testing.assert_allclose(ct.score_of(code, rows), scores, rtol=1e-6)
        unlisted_in += int(np.count_nonzero(not_in_sorted(rows, ct._listed(code)[0])))
    assert unlisted_in > 0, "no draw put an item the country never took into its answer"


def test_context_country_over_grpc(server, bundle):
    rec = Recommender(bundle, None)
    c = _with_lists(rec)[0]
    stub = server.stub()

    def ask(country):
        r = stub.Recommend(pb.RecommendRequest(k=10, context=pb.Context(country=country)), timeout=10)
        assert r.cold_start and r.trending_country == (country if country == c else "")
        return [i.item_id for i in r.items]

    assert ask(c) == _ids(rec.recommend(RecRequest(user_id="", k=10, country=c)))
    assert ask("XX") == ask("")


def test_an_unknown_cold_trending_is_refused():
    from recserve.config import ServeConfig, validate

    with pytest.raises(ValueError, match="cold_trending: one of country, global, got 'city'"):
        validate(ServeConfig(cold_trending="city"))


# -- the popular source of requests with a history (warm_trending) -------------------------------------------

def _full_order(rec, code):
    """Country ``code``'s whole ranked list from the tables alone (the numpy reference)."""
    from recserve._core.regional import order_reference

    return order_reference(rec.tables, code)


@pytest.mark.parametrize("head_min", [256, 3])
def test_a_countrys_head_is_the_prefix_of_its_whole_order(bundle, monkeypatch, head_min):
    """Also as it grows (the demo catalogue is shorter than a first head: a small first head makes it grow)."""
    from recserve._core.regional import RegionalTrending

    monkeypatch.setattr(RegionalTrending, "HEAD_MIN", head_min)
    rec = Recommender(bundle, None)
    for c in _with_lists(rec):
        code = rec.countries.code(c, None)
        want_rows, want_scores = _full_order(rec, code)
        sizes = []
        for n in (1, 7, 5, 40, 13, rec.n_items, 60, rec.n_items + 5):    # growing, and shorter between
            rows, scores = rec.countries.head(code, n)
            np.testing.assert_array_equal(rows, want_rows[:n])
            np.testing.assert_allclose(scores, want_scores[:n].astype(np.float32), rtol=1e-6)
            assert not rows.flags.writeable
            sizes.append(len(rec.countries._heads[code][0]))
        assert sizes == sorted(sizes) and (head_min > rec.n_items or len(set(sizes)) >= 3), sizes


def _popular_lists(rec, monkeypatch, req, scores=False):
    """The popular source's list a request merged (rows best first; and its scores, with ``scores``)."""
    import recserve.pipeline.recommender as RM

    got = {}
    real = RM.merge_candidates

    def spy(lists, quotas, *a):
        got["popular"] = [np.asarray(x) for x in lists[rec.sources.index("popular")]]
        return real(lists, quotas, *a)

    monkeypatch.setattr(RM, "merge_candidates", spy)
    r = rec.recommend(req)
    monkeypatch.setattr(RM, "merge_candidates", real)
    return (*got["popular"], r) if scores else (got["popular"][0], r)


def test_a_warm_request_reads_its_countrys_list_as_its_popular_source(bundle, monkeypatch):
    """Her own country's list (the bundle's warm_trending), or the request's ``context.country``'s; hers
    when the request's has none; the global list when neither has one, or when the bundle's ranker was
    trained on the global list."""
    rec = Recommender(bundle, None)
    assert rec.warm_regional
    t = rec.tables
    now = float(t.meta("now"))
    hidden = set(rec._hidden(now).tolist())
    codes = np.asarray(t.array("user_country"))
    countries = _with_lists(rec)
    checked = 0
    for u in range(0, t.n_ids("user"), 7):
        uid = t.id_of("user", u)
        if not rec.has_history(uid):
            continue
        own = rec.countries.user_list(u)
        consumed = set(rec.histories.of(uid, u)[3].tolist())
        other = countries[u % len(countries)]
        for country, code in [("", own), (other, rec.countries.code(other, None)), ("XX", own)]:
            req = RecRequest(user_id=uid, k=10, timestamp=now, country=country, filters=Filters(in_stock_only=False))
            pop, r = _popular_lists(rec, monkeypatch, req)
            assert not r.cold_start
            order = _full_order(rec, code)[0] if code is not None else np.asarray(t.array("trend_rows"))
            want = [x for x in order.tolist() if x not in consumed and x not in hidden][:len(pop)]
            assert len(pop) >= rec.quotas["popular"] and pop.tolist() == want, (uid, country)
            checked += 1
        if own is not None and codes[u] >= 0:
            glob = Recommender(bundle, None, {"warm_trending": "global"})
            pop, _ = _popular_lists(glob, monkeypatch, RecRequest(user_id=uid, k=10, timestamp=now,
                                                                  filters=Filters(in_stock_only=False)))
            want = [x for x in t.array("trend_rows").tolist() if x not in consumed and x not in hidden]
            assert pop.tolist() == want[:len(pop)]
    assert checked >= 30


def test_a_filtered_warm_request_takes_the_best_allowed_items_of_its_countrys_list(bundle, monkeypatch):
    rec = Recommender(bundle, None)
    t = rec.tables
    now = float(t.meta("now"))
    c = _with_lists(rec)[0]
    code = rec.countries.code(c, None)
    uid = next(t.id_of("user", u) for u in range(t.n_ids("user")) if rec.has_history(t.id_of("user", u)))
    u = t.row_of("user", uid)
    price = rec.base_price
    req = RecRequest(user_id=uid, k=10, timestamp=now, country=c, filters=Filters(in_stock_only=False, max_price=40.0))
    pop, r = _popular_lists(rec, monkeypatch, req)
    consumed = set(rec.histories.of(uid, u)[3].tolist())
    hidden = set(rec._hidden(now).tolist())
    want = [x for x in _full_order(rec, code)[0].tolist()
            if price[x] <= 40.0 and x not in consumed and x not in hidden]
    assert 0 < len(pop) and pop.tolist() == want[:len(pop)]
    assert all(price[t.row_of("item", i.item_id)] <= 40.0 for i in r.items)


@pytest.mark.parametrize("n_cats, head_min, max_price", [(1, 256, None), (2, 256, None), (2, 3, None), (2, 3, 30.0)])
def test_a_warm_request_with_categories_takes_each_categorys_best_of_its_countrys_list(bundle, monkeypatch, n_cats,
                                                                                    head_min, max_price):
    """Under ``include_categories`` the popular source walks each category in the country's order (not the
    global list's), the categories interleaved; also when a category's cached head must grow (a small first
    head, a price filter that leaves out part of it)."""
    from recserve._core.regional import RegionalTrending

    monkeypatch.setattr(RegionalTrending, "HEAD_MIN", head_min)
    rec = Recommender(bundle, None)
    price = rec.base_price
    t = rec.tables
    now = float(t.meta("now"))
    hidden = set(rec._hidden(now).tolist())
    cat = rec.feats[:, rec.c_cat].astype(np.int64)
    names = [t.id_of("category", c) for c in range(t.n_ids("category"))]
    checked = differs = 0
    for c in _with_lists(rec):
        code = rec.countries.code(c, None)
        order = _full_order(rec, code)[0].tolist()
        glob = np.asarray(t.array("trend_rows")).tolist()
        for u in range(0, t.n_ids("user"), 11):
            uid = t.id_of("user", u)
            if not rec.has_history(uid):
                continue
            consumed = set(rec.histories.of(uid, u)[3].tolist())
            picked = [(u + j) % len(names) for j in range(n_cats)]
            req = RecRequest(user_id=uid, k=10, timestamp=now, country=c,
                             filters=Filters(in_stock_only=False, include_categories=[names[p] for p in picked],
                                             max_price=max_price))
            pop, pop_scores, r = _popular_lists(rec, monkeypatch, req, scores=True)
            per = [[x for x in order if cat[x] == p and x not in consumed and x not in hidden
                    and (max_price is None or price[x] <= max_price)] for p in picked]
            want = [l[i] for i in range(max(map(len, per))) for l in per if i < len(l)]
            # as long as the popular quota asks at least (longer when the other sources hold some of its items
            # and fewer than four times k are distinct), or every item the categories hold, interleaved
            assert min(len(want), max(rec.quotas["popular"], 10)) <= len(pop) <= len(want), (len(pop), len(want))
            assert pop.tolist() == want[:len(pop)], (uid, c, picked)
            # scored as the country scores them (the scale the ranker was trained on)
            np.testing.assert_allclose(pop_scores, rec.countries.score_of(code, pop).astype(np.float32), rtol=1e-6)
            assert all(cat[t.row_of("item", i.item_id)] in picked for i in r.items)
            # the global walk of the same categories would differ somewhere in the demo's lists
            per_glob = [[x for x in glob if cat[x] == p and x not in consumed and x not in hidden
                         and (max_price is None or price[x] <= max_price)] for p in picked]
            differs += [l[i] for i in range(max(map(len, per_glob))) for l in per_glob if i < len(l)][:len(pop)] \
                != pop.tolist()
            checked += 1
            if checked % 6 == 0:
                break
    assert checked >= 8 and differs >= 1, (checked, differs)


def test_a_categorys_cached_head_grows_until_the_filter_leaves_enough(bundle, monkeypatch):
    """``in_categories`` over one category is ``top`` with that category's mask, whatever share of the
    cached head the filter and the gone items leave (a first head of a few items, grown as needed)."""
    from recserve._core.regional import RegionalTrending

    monkeypatch.setattr(RegionalTrending, "HEAD_MIN", 3)
    rec = Recommender(bundle, None)
    cat = rec.feats[:, rec.c_cat].astype(np.int64)
    rng = np.random.default_rng(0)
    checked = 0
    for c in _with_lists(rec):
        code = rec.countries.code(c, None)
        for k in np.unique(cat):
            for limit, share in ((1, 0.1), (2, 0.3), (5, 1.0), (40, 0.5)):
                allowed = rng.random(rec.n_items) < share
                gone = np.sort(rng.choice(rec.n_items, 20, replace=False)).astype(np.int32)
                rows, scores = rec.countries.in_categories(code, np.array([k]), cat, allowed, gone, limit)
                want_rows, want_scores = rec.countries.top(code, allowed & (cat == k), gone, limit)
                assert rows.tolist() == want_rows.tolist(), (c, k, limit, share)
                np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
                checked += len(rows) > 0
    assert checked >= 20
    assert max(h[2] for h in rec.countries._cat_heads.values()) > 2 * 40     # some head grew past its first size
