"""The catalogue at a fit's ``now`` holds only the items created at or before it: an item created later is
no ranker candidate at the label cut (it would be one with a negative age, and often a positive, which the
server never sees) and no candidate or truth item of the evaluation at the test cut."""
from __future__ import annotations

import numpy as np
import pytest

from recserve._core.candidates import DEFAULT_PARAMS
from recserve.bundle import Bundle
from trainer import artifacts, build as B, evaluate as ev, ranker as rk
from trainer.retrieval import candidates_for
from trainer.synth import synth


@pytest.fixture(scope="module")
def label_cut_fit():
    """The first label window of a build, fitted as ``build`` fits it: (dataset, artifacts, labels, first
    label-event times, label cut)."""
    ds, _ = synth(400, 300, seed=1)
    cfg = {**B.DEFAULT_CFG, "factors": 16, "seed": 0}
    params = dict(DEFAULT_PARAMS)
    train_mask, _test, _cut = B.split.split_masks(ds.ts, cfg["holdout"])
    fit_mask, label_mask, label_cut = next(B._label_windows(ds, train_mask, cfg))
    art = artifacts.fit(ds, fit_mask, label_cut, artifacts.catalogue(ds, 32), params, cfg)
    lu, li, _lt, le, lv, lfirst = B._window(ds, label_mask)
    labels = rk.label_map(lu, li, rk.relevance(le, lv))
    return ds, art, params, labels, lfirst, label_cut


def test_items_created_after_the_label_cut_are_no_ranker_candidates(label_cut_fit):
    ds, art, params, labels, lfirst, label_cut = label_cut_fit
    later = np.flatnonzero(ds.item_created > label_cut)
    assert len(later) >= 5
    users = B._active_with_history(art, np.array(sorted(labels)), np.random.default_rng(0), 400)
    seen = 0
    for _u, _vec, lists, merged in candidates_for(art, users, params):
        for rows, _scores in lists:
            assert not np.isin(rows, later).any()
        assert not np.isin(merged.rows, later).any()
        seen += len(merged)
    assert seen > 0
    np.testing.assert_array_equal(art.unreleased, later)
    X, y, _g, _gu, _r = rk.training_rows(art, users, labels, lfirst, params)
    names = art.schema.names
    assert X[:, names.index("x.item_age_days")].min() >= 0.0
    assert "item.created_days" not in names             # the absolute creation day is no feature
    assert len(y) == len(X) > 0


def test_the_built_ranker_reads_the_age_not_the_creation_day(demo_bundle):
    with Bundle.open(demo_bundle) as b:
        assert "created_days" in b.schema.item_columns        # the table keeps it: the age is crossed from it
        assert "item.created_days" not in b.schema.names and "x.item_age_days" in b.schema.names
        assert b.manifest["feature_schema"]["unranked_item_columns"] == ["created_days"]
        days = np.asarray(b.item_feats)[:, b.schema.item_columns.index("created_days")]
        np.testing.assert_allclose(b.item_created() / 86400.0, days, rtol=0, atol=0.01)    # float32 days


def test_the_evaluation_leaves_items_created_after_the_cut_out(demo_bundle, monkeypatch):
    with Bundle.open(demo_bundle) as b:
        art = B.artifacts_from_bundle(b)
        later = np.flatnonzero(b.item_created() > art.now)
        assert len(later) > 0
        np.testing.assert_array_equal(art.unreleased, later)
        users = np.array([u for u in range(0, b.n_users, 5) if art.hist_indptr[u + 1] > art.hist_indptr[u]])
        # every user's held-out items: one created after the cut, and one released item new to her
        fresh = [next(i for i in range(b.n_items) if i not in set(art.history(int(u))[0].tolist())
                      and i not in set(later.tolist())) for u in users]
        tu = np.repeat(users, 2)
        ti = np.ravel(np.column_stack([later[np.arange(len(users)) % len(later)], fresh]))
        creators = b.item_feats[:, b.schema.item_columns.index("creator")].astype(np.int64)
        lists = []
        real = ev._metrics
        monkeypatch.setattr(ev, "_metrics",
                            lambda rec, truths, *a: lists.append((rec, truths)) or real(rec, truths, *a))
        res = ev.evaluate(art, rk.Scorer(b.ranker_text), tu, ti, np.full(len(tu), art.now), b.params, creators)
        assert res["truth_not_released"] == len(users)
        assert res["users"] == len(users)
        for recs, truths in lists:
            assert all(not (t & set(later.tolist())) for t in truths)
            assert all(not np.isin(r, later).any() for r in recs)
        assert "left out of the truth: " + str(len(users)) in ev.format_table(res)
