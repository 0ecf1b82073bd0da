"""Business rules of the re-rank stage on a real bundle, in process: creators and new items."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

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


def test_explained_relevance_is_what_mmr_weighed_with_the_novelty_boost(bundle, tmp_path):
    cols = bundle.tables.columns("item_feats")
    created = np.asarray(bundle.item_feats)[:, cols.index("created_days")]
    newest_day, span = float(created.max()), float(created.max() - created.min())
    rec = Recommender(bundle, EventStore(tmp_path / "ev"), {"novelty_boost": 1.0, "new_item_days": 0.1 * span})
    new_rows = set(np.flatnonzero(created >= newest_day - 0.1 * span).tolist())
    seen_new = seen_old = 0
    for u in _users(bundle):
        res = rec.recommend(RecRequest(user_id=u, k=10, timestamp=newest_day * 86400.0, explain=True))
        rel = [i.relevance for i in res.items]
        # the first pick has no penalty: it is the candidate MMR weighed highest
        assert res.items[0].mmr_penalty == 0.0 and rel[0] == max(rel), (u, rel)
        for it, r in zip(res.items, bundle.tables.rows_of("item", [i.item_id for i in res.items]).tolist()):
            if r in new_rows:
                seen_new += 1
                assert 1.0 <= it.relevance <= 2.0, (u, it)
            else:
                seen_old += 1
                assert 0.0 <= it.relevance <= 1.0, (u, it)
    assert seen_new and seen_old


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
    from recserve._core.rerank import diversify

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
    from recserve._core.rerank import diversify

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
    assert e.value.stage == "validate" and e.value.when == "after"     # checked as the stage ends
    assert str(e.value) == "the deadline passed by the end of the validate stage"     # (it had before it)
    assert status_of(e.value)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    item = bundle.tables.id_of("item", 0)
    with pytest.raises(DeadlineExceeded):
        rec.similar(item, 5, Filters(), deadline=time.monotonic() - 0.001)
    later = time.monotonic() + 60
    assert len(rec.recommend(RecRequest(user_id=user, k=10, deadline=later)).items) == 10
    assert len(rec.similar(item, 5, Filters(), deadline=later).items) == 5


@pytest.mark.parametrize("in_stock_only", [True, False])
def test_items_consumed_before_the_history_window_do_not_stop_the_top_up(bundle, tmp_path, in_stock_only):
    """The popular list as trained leaves out the history window's items only; items consumed before it are
    excluded by the merge. They no longer count toward the list's length: before, the popular source then
    filled less than its quota, which read as "no more popular items", and the request stayed short of 4k."""
    import time

    import recserve.pipeline.recommender as RM
    from recserve.events import Event
    from recserve.pipeline.recommender import Filters

    rec = Recommender(bundle, EventStore(tmp_path / "ev"), {"history_len": 3})
    trend = np.asarray(rec.trend_rows)
    now = time.time()
    rec.record_events([Event("heavy", bundle.tables.id_of("item", int(r)), 0, now - 86400 + i)
                       for i, r in enumerate(trend[:60])])
    rec.record_events([Event("heavy", bundle.tables.id_of("item", int(trend[150])), 0, now - 60 + i) for i in range(3)])
    consumed = rec.histories.of("heavy", None)[3]
    assert len(consumed) == 61
    cols = bundle.tables.columns("item_feats")
    stock = np.asarray(bundle.item_feats)[:, cols.index("in_stock")] > 0.5
    servable = int(np.count_nonzero(np.delete(stock if in_stock_only else np.ones(len(stock), bool), consumed)))
    sizes = []
    orig = RM.merge_candidates
    try:
        RM.merge_candidates = lambda *a, **kw: sizes.append(len(orig(*a, **kw))) or orig(*a, **kw)
        for k in (20, 30, 40, 50):
            rec.recommend(RecRequest(user_id="heavy", k=k, timestamp=now,
                                     filters=Filters(in_stock_only=in_stock_only)))
            assert sizes[-1] >= min(4 * k, servable), (k, sizes[-1])
    finally:
        RM.merge_candidates = orig


def test_a_capped_answer_keeps_creators_apart_when_only_one_is_left_under_the_cap():
    """The cap fills k, but its greedy has only one creator left for the last picks: her items move up
    between two others' (before: B C A A A, where A B A C A keeps the same items and the cap)."""
    from recserve._core.rerank import diversify

    emb = np.eye(5, dtype=np.float32)
    creators = np.array([1, 2, 0, 0, 0])
    rel = np.array([1.0, 0.9, 0.8, 0.7, 0.6], np.float32)
    pos, pen = diversify(rel, emb, np.arange(5, dtype=np.int32), 5, 1.0, creators, 3)
    c = creators[pos]
    assert sorted(pos.tolist()) == list(range(5)) and len(pen) == 5
    assert all(c[j] != c[j + 1] for j in range(4)), c.tolist()


def test_unknown_creators_are_nobodys_in_the_fill():
    """Items of unknown creator (-1) are exempt from the cap and the back-to-back rule, in the fill too:
    they are not moved out of the answer to separate them (before: three items by creator 7 at cap 1)."""
    from recserve._core.rerank import diversify

    emb = np.eye(8, dtype=np.float32)
    creators = np.array([-1, -1, -1, -1, 7, 7, 7, 7])
    rel = np.linspace(1.0, 0.3, 8).astype(np.float32)
    pos, _ = diversify(rel, emb, np.arange(8, dtype=np.int32), 6, 1.0, creators, 1)
    assert sorted(pos.tolist()) == [0, 1, 2, 3, 4, 5]        # the four unknown ones and the fewest 7s
    c = creators[pos]
    assert not any(c[j] == c[j + 1] == 7 for j in range(5)), c.tolist()


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 40), st.integers(1, 4), st.integers(1, 3), st.floats(0.0, 1.0), st.integers(0, 10_000))
@example(35, 3, 3, 0.75, 599)       # a fill spare pulled into the first k had pushed a capped item out
def test_no_creator_back_to_back_while_the_answer_holds_another(n, n_creators, mpc, lam, seed):
    """Whatever the cap leaves to the uncapped fill: two items by one creator are adjacent only where
    every later item of the answer is hers too and no earlier slot between two others' items is left
    (before: the capped part could end with a pair that the fill's items, or a move up, could have
    separated)."""
    from recserve._core.rerank import diversify

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    creators = rng.integers(-1, n_creators, n)                # -1: unknown, nobody's
    rel = rng.random(n).astype(np.float32)
    k = int(rng.integers(1, n + 1))
    pos, pen = diversify(rel, emb, np.arange(n, dtype=np.int32), k, lam, creators, mpc)
    assert len(pos) == k == len(pen) and len(set(pos.tolist())) == k
    c = creators[pos]
    for j in range(1, k):
        if c[j] == c[j - 1] >= 0:
            assert set(c[j + 1:].tolist()) <= {c[j], -1} and -1 not in c[j + 1:], (j, c.tolist())
            # and no earlier slot between two other creators' items could take her
            assert c[0] == c[j] and not any(c[i - 1] != c[j] != c[i] for i in range(1, j)), (j, c.tolist())
    # the cap is broken only as far as the fill must: no more over-cap items than k minus what fits
    known = c[c >= 0]
    fits = int((creators < 0).sum()) + sum(min(mpc, int((creators == x).sum())) for x in set(creators.tolist()) - {-1})
    over = sum(max(0, int((known == x).sum()) - mpc) for x in set(known.tolist()))
    assert over <= max(0, k - fits), (c.tolist(), over, fits)


def test_cold_users_get_the_creator_cap_too(bundle):
    """An anonymous, unknown or history-less user has only popular candidates: four times k of them, so
    the cap holds (before: about k candidates, and the uncapped fill put some creators in more than the cap)."""
    from collections import Counter

    rec = Recommender(bundle, None)
    cols = bundle.tables.columns("item_feats")
    feats = np.asarray(bundle.item_feats)
    stock = feats[:, cols.index("in_stock")] > 0.5
    n_creators = len(set(feats[stock, cols.index("creator")].astype(int).tolist()) - {-1})
    assert n_creators >= 5
    ip = np.asarray(bundle.tables.array("hist_indptr"))
    known_without_history = bundle.tables.id_of("user", int(np.flatnonzero(np.diff(ip) == 0)[0]))
    for user, cap in (("", 1), ("nobody-we-know", 2), (known_without_history, 1)):
        k = cap * n_creators                       # room for exactly `cap` items of every creator
        res = rec.recommend(RecRequest(user_id=user, k=k, max_per_creator=cap))
        assert len(res.items) == k
        c = Counter(_creators(bundle, [i.item_id for i in res.items]).tolist())
        assert -1 not in c and max(c.values()) == cap, c


@pytest.mark.parametrize("k, cap", [(30, 3), (40, 4), (24, 2)])
def test_the_creator_cap_holds_for_users_with_history_when_k_nears_the_candidate_cap(bundle, k, cap):
    """Users with a history, k near the server's candidate cap (40): the candidates are four times k, so the
    creator cap holds where the catalogue allows it (before: at most k candidates, and up to 14 items of one
    creator in 40)."""
    from collections import Counter

    rec = Recommender(bundle, None, {"cap": 40})
    ip = np.diff(np.asarray(bundle.tables.array("hist_indptr")))
    users = [bundle.tables.id_of("user", int(r)) for r in np.flatnonzero(ip > 0)[:40]]
    for user in users:
        res = rec.recommend(RecRequest(user_id=user, k=k, max_per_creator=cap))
        assert len(res.items) == k
        c = Counter(_creators(bundle, [i.item_id for i in res.items]).tolist())
        c.pop(-1, None)
        assert max(c.values()) <= cap, (user, c)


@pytest.mark.parametrize("k", [12, 30, 45])
def test_users_with_history_get_four_times_k_distinct_candidates(bundle, k):
    """The popular source's quota counts items the other sources found too: where they overlap, it makes
    up the shortfall, so a request ranks at least four times k distinct candidates where the catalogue
    has them (before: 4k was the sum of the quotas, and about 100 of 120 were distinct at k = 30)."""
    import recserve.pipeline.recommender as RM

    rec = Recommender(bundle, None, {"cap": 40})
    indptr = np.asarray(bundle.tables.array("hist_indptr"))
    users = [bundle.tables.id_of("user", int(r)) for r in np.flatnonzero(np.diff(indptr) > 0)[:30]]
    cols = bundle.tables.columns("item_feats")
    stock = np.asarray(bundle.item_feats)[:, cols.index("in_stock")] > 0.5
    sizes = []
    orig = RM.merge_candidates
    try:
        RM.merge_candidates = lambda *a, **kw: sizes.append(len(orig(*a, **kw))) or orig(*a, **kw)
        short = []
        for user in users:
            sizes.clear()
            res = rec.recommend(RecRequest(user_id=user, k=k))
            assert len(res.items) == k
            r = bundle.tables.row_of("user", user)
            seen = np.asarray(bundle.tables.array("hist_items"))[indptr[r]:indptr[r + 1]]
            servable = int(np.count_nonzero(np.delete(stock, seen)))     # in stock, not consumed (or fewer)
            if sizes[-1] < min(4 * k, servable):
                short.append((user, sizes[-1]))
    finally:
        RM.merge_candidates = orig
    assert not short, short


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.0])
def test_explained_mmr_penalty_is_what_mmr_subtracts(bundle, lam):
    """(1 - λ) x the largest cosine similarity to the items above, in the answer's order (before: -inf
    at λ = 1, and the bare similarity otherwise)."""
    rec = Recommender(bundle, None)
    u = _users(bundle, 1)[0]
    res = rec.recommend(RecRequest(user_id=u, k=15, mmr_lambda=lam, explain=True))
    rows = bundle.tables.rows_of("item", [i.item_id for i in res.items])
    e = np.asarray(bundle.item_emb, np.float64)[rows]
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    want = [0.0] + [(1 - lam) * max(float(e[j] @ e[i]) for i in range(j)) for j in range(1, len(rows))]
    got = [i.mmr_penalty for i in res.items]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_explanations_are_computed_a_few_items_between_pauses(bundle):
    """LightGBM's pred_contrib is the costliest step of an explained Recommend: it runs a few items at a
    time with a pause point (and a deadline check) between, so a cheap call waits for a few items only."""
    from recserve.pipeline.errors import DeadlineExceeded
    from recserve.pipeline.messages import EXPLAIN_CHUNK

    rec = Recommender(bundle, None)
    u = _users(bundle, 1)[0]
    steps = rec.recommend_steps(RecRequest(user_id=u, k=20, explain=True))
    points = []
    try:
        while True:
            points.append(next(steps))
    except StopIteration as stop:
        res = stop.value
    assert points.count("explain") == -(-20 // EXPLAIN_CHUNK) and all(i.contributions for i in res.items)
    req = RecRequest(user_id=u, k=20, explain=True, deadline=float("inf"))
    steps = rec.recommend_steps(req)
    while next(steps) != "explain":
        pass
    req.deadline = 0.0                                     # the deadline passes during the explanations
    with pytest.raises(DeadlineExceeded, match="explain"):
        while True:
            next(steps)


def _one_greedy(rel, e, creators, k, lam, cap):
    """MMR by a scan per pick, the cap lifted for the rest once it leaves no candidate, and not the last
    pick's creator while another's item is left (among the candidates the cap allows)."""
    picked, count, capped = [], {}, True
    while len(picked) < k:
        left = [i for i in range(len(rel)) if i not in picked]
        ok = [i for i in left if count.get(creators[i], 0) < cap] if capped else left
        if not ok:
            capped = False
            continue
        other = [i for i in ok if not picked or creators[i] != creators[picked[-1]]]
        sim = (e[other or ok] @ e[picked].T).max(axis=1) if picked else np.zeros(len(other or ok))
        obj = lam * rel[other or ok] - (1 - lam) * sim
        best = (other or ok)[int(np.argmax(obj))]           # the first of equals
        picked.append(best)
        count[creators[best]] = count.get(creators[best], 0) + 1
    return picked


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 40), st.integers(1, 4), st.integers(1, 2), st.sampled_from([0.0, 0.3, 0.8, 1.0]),
       st.integers(0, 10_000))
def test_the_fill_continues_the_capped_greedy(n, n_creators, cap, lam, seed):
    """When the creator cap runs out, the fill goes on with the same greedy: each pick scored against every
    item above it, the capped ones included (before: a new greedy, blind to them, so at lambda 0 its first
    pick was simply its first candidate). Where that greedy puts no creator back to back, the answer is
    exactly its picks; elsewhere the creator rule moves items, as the other tests here check."""
    from recserve._core.rerank import diversify

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    creators = rng.integers(0, n_creators, n)
    rel = (rng.permutation(n) / n).astype(np.float32)        # no ties
    k = int(rng.integers(1, n + 1))
    e = emb.astype(np.float64) / np.linalg.norm(emb, axis=1, keepdims=True)
    want = _one_greedy(rel, e, creators, k, lam, cap)
    c = creators[want]
    assume(not any(c[j] == c[j - 1] for j in range(1, k)))
    pos, _ = diversify(rel, emb, np.arange(n, dtype=np.int32), k, lam, creators, cap)
    assert pos.tolist() == want
