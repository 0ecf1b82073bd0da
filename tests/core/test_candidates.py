"""The shared retrieval helpers: ``sorted_unique``, the i2i seed count and the two-step ANN query."""
import hnswlib
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from recserve._core import candidates as C


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-5, 3000), max_size=600))
def test_sorted_unique_is_numpy_unique(xs):
    a = np.array(xs, np.int64)
    np.testing.assert_array_equal(C.sorted_unique(a), np.unique(a))
    assert C.sorted_unique(a.astype(np.int32)).dtype == np.int32


def test_i2i_seed_count_drops_only_negligible_weights():
    p = dict(C.DEFAULT_PARAMS, i2i_recent=1000, i2i_decay=0.0)
    assert C.i2i_seed_count(p) == 1000                      # no decay: every recent item counts
    for decay in (0.03, 0.1, 0.5):
        p = dict(p, i2i_decay=decay)
        n = C.i2i_seed_count(p)
        assert np.exp(-decay * (n - 1)) >= C.I2I_MIN_WEIGHT > np.exp(-decay * n)
    assert C.i2i_seed_count(dict(p, i2i_recent=20, i2i_decay=0.03)) == 20
    # a decay so small that the reach of the weights overflows a float: every recent item (was OverflowError)
    assert C.i2i_seed_count(dict(p, i2i_recent=20, i2i_decay=5e-324)) == 20


def _index(n=2000, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    emb = (centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    idx = hnswlib.Index(space="cosine", dim=d)
    idx.init_index(max_elements=n, ef_construction=100, M=16, random_seed=1)
    idx.add_items(emb, np.arange(n), num_threads=1)
    idx.set_ef(64)
    return idx, emb


def _recording_query(idx, vec):
    asked = []

    def query(k):
        asked.append(k)
        labels, dist = idx.knn_query(vec.reshape(1, -1), k=k, num_threads=1)
        return labels[0].astype(np.int32), (1.0 - dist[0]).astype(np.float32)

    return query, asked


def test_ann_lists_asks_once_for_short_histories_and_long_ones_it_fills():
    idx, emb = _index()
    p = dict(C.DEFAULT_PARAMS, quotas={"ann": 50, "i2i": 10, "session": 10, "popular": 10}, history_len=400)
    vec = emb[0]
    sims = emb @ vec
    far = np.argsort(sims)[:300]                 # a long history, none of it near the user vector
    query, asked = _recording_query(idx, vec)
    rows, _ = C.ann_lists(query, p, far[:30], len(emb))
    assert asked == [C.ann_k(p, 30, len(emb))] == [80]
    query, asked = _recording_query(idx, vec)
    rows, _ = C.ann_lists(query, p, far, len(emb))
    assert asked == [C.ann_first_k(p, 300, len(emb))] == [100]
    assert len(np.setdiff1d(rows, far)) >= 50


def test_ann_lists_asks_again_when_the_history_fills_the_first_answer():
    idx, emb = _index()
    p = dict(C.DEFAULT_PARAMS, quotas={"ann": 50, "i2i": 10, "session": 10, "popular": 10}, history_len=400)
    vec = emb[0]
    near = np.argsort(-(emb @ vec))[:300]        # the history is the user's 300 nearest items
    query, asked = _recording_query(idx, vec)
    rows, _ = C.ann_lists(query, p, near, len(emb))
    assert asked == [100, C.ann_k(p, 300, len(emb))] == [100, 350]
    assert len(np.setdiff1d(rows, near)) >= 50   # the quota is still there once the history is dropped
    # a request that allows consumed items is not short: one query
    query, asked = _recording_query(idx, vec)
    C.ann_lists(query, p, near, len(emb), drop_history=False)
    assert asked == [100]
    # a filter that disallows most of the first answer makes it short too
    allowed = np.ones(len(emb), bool)
    first = idx.knn_query(vec.reshape(1, -1), k=100)[0][0]
    allowed[first[:80]] = False
    query, asked = _recording_query(idx, vec)
    C.ann_lists(query, p, np.argsort(emb @ vec)[:300], len(emb), allowed=allowed)
    assert asked == [100, 350]


def _source_lists_reference(hist, ts, ann_rows, ann_scores, i2i_rows, i2i_scores, trend_rows, trend_scores,
                            params, drop_history=True):
    """The four lists from the numpy references of the history kernel and of the neighbour sum."""
    from recserve._core.history import drop_seen_reference, history_seeds_reference
    from recserve._core.neighbours import neighbour_sum_reference

    q = params["quotas"]
    seen, recent, sess = history_seeds_reference(hist, ts, C.i2i_seed_count(params), C.SESSION_SEEDS,
                                                 params["session_gap"])
    seen = seen if drop_history else seen[:0]
    w = np.exp(-float(params["i2i_decay"]) * np.arange(len(recent)))
    i2i = neighbour_sum_reference(recent, w, i2i_rows, i2i_scores, 3 * q["i2i"] + len(seen))
    ses = neighbour_sum_reference(sess, np.ones(len(sess)), i2i_rows, i2i_scores, 3 * q["session"] + len(seen))
    n_pop = 3 * q["popular"] + 2 * len(seen) + 1
    return [drop_seen_reference(r, s, seen) for r, s in
            ((ann_rows, ann_scores), i2i, ses, (trend_rows[:n_pop], trend_scores[:n_pop]))]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 40), st.booleans(), st.sampled_from([0.0, 0.1]))
def test_source_lists_match_the_references(seed, n_hist, drop_history, decay):
    rng = np.random.default_rng(seed)
    n, m = 60, 6
    i2i_rows = rng.integers(-1, n, (n, m)).astype(np.int32)
    i2i_scores = rng.random((n, m)).astype(np.float32)
    hist = rng.integers(0, n, n_hist).astype(np.int32)
    ts = np.sort(rng.random(n_hist) * 20_000)
    ann_rows, ann_scores = rng.permutation(n)[:25].astype(np.int32), np.sort(rng.random(25))[::-1].astype(np.float32)
    trend_rows, trend_scores = rng.permutation(n).astype(np.int32), np.sort(rng.random(n))[::-1].astype(np.float32)
    params = dict(C.DEFAULT_PARAMS, quotas={"ann": 10, "i2i": 8, "session": 4, "popular": 5}, i2i_recent=12,
                  i2i_decay=decay)
    got = C.source_lists(hist, ts, ann_rows, ann_scores, i2i_rows, i2i_scores, trend_rows, trend_scores, params,
                         drop_history)
    want = _source_lists_reference(hist, ts, ann_rows, ann_scores, i2i_rows, i2i_scores, trend_rows,
                                   trend_scores, params, drop_history)
    for (gr, gs), (wr, ws) in zip(got, want):
        np.testing.assert_array_equal(gr, wr)
        np.testing.assert_allclose(gs, ws, rtol=1e-6)


def test_releases_hide_the_items_created_after_a_time():
    """An item is in the catalogue from its creation time on (created at t: there at t); an unknown time
    (NaN) is always there."""
    from recserve._core.candidates import Releases, ann_filter

    created = np.array([100.0, np.nan, 300.0, 200.0, 300.0, 0.0])
    r = Releases(created)
    assert r.hidden(0.0).tolist() == [0, 2, 3, 4] and r.hidden(-1.0).tolist() == [0, 2, 3, 4, 5]
    assert r.hidden(100.0).tolist() == [2, 3, 4]
    assert r.hidden(250.0).tolist() == [2, 4]
    assert r.hidden(300.0).tolist() == [] and r.hidden(1e12).tolist() == []
    assert ann_filter(r.hidden(300.0)) is None
    keep = ann_filter(r.hidden(250.0))
    assert [keep(i) for i in range(6)] == [True, True, False, True, False, True]


def test_an_event_dated_after_the_request_weighs_as_one_at_the_request():
    """RecordEvents allows a day of clock skew; such an event has age 0, not a weight above 1."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 8)).astype(np.float32)
    params = {"decay_short": 0.3, "decay_long": 0.02, "alpha": 0.7, "half_life_days": 2.0,
              "event_weights": [1.0, 2.0, 3.0, 5.0, 4.0]}
    now = 1_700_000_000.0
    at = C.history_vector(emb, np.array([1, 4, 7], np.int32), [0, 1, 3], [now - 86400.0, now - 3600.0, now], now,
                          params)
    ahead = C.history_vector(emb, np.array([1, 4, 7], np.int32), [0, 1, 3],
                             [now - 86400.0, now - 3600.0, now + 80000.0], now, params)
    np.testing.assert_array_equal(at, ahead)


@pytest.mark.parametrize("years", [1, 100, 1000])
def test_a_request_long_after_the_history_keeps_its_user_vector(years):
    """The recency weights are normalised, so the vector depends on the events' ages relative to each other:
    a request dated long after them gets the same one (before: at about 100 years every weight underflowed
    to 0, and the request went without its ANN source)."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(10, 8)).astype(np.float32)
    params = {"decay_short": 0.3, "decay_long": 0.02, "alpha": 0.7, "half_life_days": 30.0,
              "event_weights": [1.0, 2.0, 3.0, 5.0, 4.0]}
    last = 1_700_000_000.0
    rows, ev, ts = np.array([1, 4, 7, 2], np.int32), [0, 1, 3, 2], [last - 90 * 86400.0, last - 86400.0, last - 3600.0,
                                                                   last]
    near = C.history_vector(emb, rows, ev, ts, last + 3600.0, params)
    far = C.history_vector(emb, rows, ev, ts, last + years * 365.25 * 86400.0, params)
    assert np.linalg.norm(near) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(far, near, atol=1e-5)


@pytest.mark.parametrize("every, k, quota", [(8, 50, 10), (16, 66, 5), (7, 66, 10), (10, 58, 20)])
def test_top_up_reaches_four_times_k_where_the_popular_items_overlap_another_source_far_down(every, k, quota):
    """The other source holds all but every ``every``-th item of the trending order, far past the popular
    quota: each top-up used to ask for as many more popular items as were missing, as if all were new, and
    three top-ups ended short of 4k (195 of 200 at every = 8, k = 50, quota 10). Past the list's end the
    quota now grows at the share of new items seen so far."""
    from recserve._core.merge import merge_candidates

    n, target = 3000, C.PER_K * k
    trend = np.arange(n, dtype=np.int32)
    other = np.array([i for i in range(n) if i % every][:int(target * 0.9)], np.int32)
    lists = [(other, np.ones(len(other), np.float32))]

    def popular_for(q):        # as the server's refill: a list just longer than the quota
        return trend[:q + 1], np.ones(q + 1, np.float32)

    def merge(pop, q):
        return merge_candidates(lists + [pop], [len(other), q], max(200, target), n)

    merged, _ = C.top_up(merge, popular_for, quota, target, 1, None)
    assert len(merged) >= target
    assert len(np.unique(merged.rows)) == len(merged)
