"""Synthetic data properties, features, splits and the evaluation metrics on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

from trainer import evaluate as ev, features, split
from trainer.synth import synth


@pytest.fixture(scope="module")
def data():
    return synth(400, 300, seed=7)


def test_synth_is_deterministic_and_structured(data):
    ds, truth = data
    ds2, _ = synth(400, 300, seed=7)
    np.testing.assert_array_equal(ds.item, ds2.item)
    np.testing.assert_array_equal(ds.ts, ds2.ts)
    assert not np.array_equal(synth(400, 300, seed=8)[0].item[:500], ds.item[:500])
    counts = np.bincount(ds.event, minlength=5)
    assert counts[0] > counts[1] > counts[2] > counts[3] > counts[4] > 0      # the funnel
    pop = np.bincount(ds.item, minlength=ds.n_items)
    assert (pop == 0).sum() >= 5                                              # cold-start items
    top = np.sort(pop)[::-1]
    assert top[: ds.n_items // 10].sum() > 0.4 * pop.sum()                    # heavy head
    # items of one category are closer in the latent space than random pairs
    v = truth.item_vec
    cats = ds.item_category
    same = [float(v[i] @ v[j]) for i in range(60) for j in range(i + 1, 60) if cats[i] == cats[j]]
    diff = [float(v[i] @ v[j]) for i in range(60) for j in range(i + 1, 60) if cats[i] != cats[j]]
    assert np.mean(same) > np.mean(diff) + 0.3
    # nobody interacts with an item before it exists, and purchases carry the price
    assert (ds.ts >= np.floor(ds.item_created[ds.item]) - 1).all()
    buy = ds.event == 3
    np.testing.assert_allclose(ds.value[buy], ds.item_price[ds.item[buy]], rtol=1e-5)


def test_users_prefer_their_taste(data):
    ds, truth = data
    aff = np.einsum("nd,nd->n", truth.user_vec[ds.user], truth.item_vec[ds.item])
    rnd = np.einsum("nd,nd->n", truth.user_vec[ds.user], truth.item_vec[np.random.default_rng(0).permutation(ds.item)])
    assert aff.mean() > rnd.mean() + 0.1


def test_time_split_holds_out_the_newest(data):
    ds, _ = data
    train, test, cut = split.split_masks(ds.ts, 0.1)
    assert ds.ts[train].max() < cut <= ds.ts[test].min()
    assert 0.08 < test.mean() < 0.12
    with pytest.raises(ValueError):
        split.split_masks(np.ones(10), 0.1)


def test_histories_keep_the_newest_oldest_first():
    user = np.array([0, 0, 0, 1, 0])
    item = np.array([1, 2, 3, 4, 5])
    ts = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    ev_ = np.zeros(5, np.int8)
    indptr, items, t, e = features.histories(user, item, ts, ev_, 3, history_len=3)
    assert indptr.tolist() == [0, 3, 4, 4]
    assert items.tolist() == [3, 5, 1, 4]
    assert t.tolist() == [3.0, 4.0, 5.0, 2.0]


def test_metrics_by_hand():
    emb = np.eye(4, dtype=np.float32)
    rec = [np.array([0, 1, 2]), np.array([3, 2])]
    truths = [{1}, {0, 3}]
    pop_share = np.array([0.5, 0.25, 0.125, 0.125])
    cold = np.array([False, False, False, True])
    m = ev._metrics(rec, truths, emb, pop_share, cold)
    assert m["recall@10"] == pytest.approx((1 + 0.5) / 2)
    idcg2 = 1 + 1 / np.log2(3)
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1 / idcg2) / 2)
    assert m["mrr@50"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["coverage@10"] == pytest.approx(1.0)
    assert m["ild@10"] == pytest.approx(1.0)                # orthogonal items
    assert m["cold_share@10"] == pytest.approx(1 / 5)
    assert m["novelty@10"] == pytest.approx(np.mean(-np.log2(pop_share[[0, 1, 2, 3, 2]])))


def test_cold_items_sit_at_the_typical_distance_from_their_group():
    from trainer.embeddings import _normalise, fill_cold

    rng = np.random.default_rng(0)
    centre = _normalise(rng.normal(size=(2, 8)))
    cat = np.array([0] * 30 + [1] * 30 + [0, 1, 1, 0])
    creator = np.array([-1] * 60 + [-1, 5, -1, 5])
    emb = _normalise(centre[cat] + 0.6 * rng.normal(size=(64, 8)))
    seen = np.ones(64, bool)
    seen[60:] = False
    creator[5] = 5                  # item 5 is the only seen item of (category 0, creator 5)
    out = fill_cold(emb.astype(np.float32), seen, cat, creator, seed=1)
    np.testing.assert_array_equal(out[:60], emb[:60].astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(out[60:], axis=1), 1, atol=1e-5)
    for r, c in ((60, 0), (62, 1)):
        members = np.flatnonzero(seen & (cat == c) & (creator < 0))
        m = emb[np.flatnonzero(seen & (cat == c))].sum(0)
        m /= np.linalg.norm(m)
        typical = float(np.mean(emb[np.flatnonzero(seen & (cat == c))] @ m))
        assert float(out[r] @ m) == pytest.approx(typical, abs=1e-4)
        # not a hub: no closer to the group direction than a typical member
        assert float(out[r] @ m) < float(np.max(emb[members] @ m))
    # item 61 is (category 1, creator 5): that group has no seen member -> category 1 level
    m1 = emb[np.flatnonzero(seen & (cat == 1))].sum(0)
    m1 /= np.linalg.norm(m1)
    assert float(out[61] @ m1) == pytest.approx(float(np.mean(emb[np.flatnonzero(seen & (cat == 1))] @ m1)), abs=1e-4)
    # deterministic per seed
    np.testing.assert_array_equal(out, fill_cold(emb.astype(np.float32), seen, cat, creator, seed=1))
    # item 63 is (category 0, creator 5): one seen member, cosine 1 -> exactly that member
    np.testing.assert_allclose(out[63], emb[5], atol=1e-3)   # sqrt(1 - c^2) amplifies float32 rounding


def test_the_table_says_when_few_users_were_evaluated():
    from trainer.evaluate import FEW_USERS, format_table

    row = {c: 0.1 for c in ("recall@10", "recall@20", "recall@50", "ndcg@10", "mrr@50", "coverage@10", "ild@10",
                            "novelty@10", "cold_share@10")}
    few = format_table({"users": 22, "methods": {"full+mmr": row}}).splitlines()[0]
    many = format_table({"users": FEW_USERS, "methods": {"full+mmr": row}}).splitlines()[0]
    assert few.startswith("evaluated users: 22 (fewer than") and many == f"evaluated users: {FEW_USERS}"
