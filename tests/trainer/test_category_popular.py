"""The popular source under a category filter walks each category's items by trending, the order and the
score of the unfiltered popular source (the one the ranker was trained on), not by all-time popularity."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recserve.bundle import Bundle
from recserve.pipeline import candidates as PC
from recserve.pipeline.recommender import Recommender


def test_each_categorys_list_is_ordered_by_trending(demo_bundle):
    with Bundle.open(demo_bundle) as b:
        t = b.tables
        indptr, rows = np.asarray(t.array("pop_cat_indptr")), np.asarray(t.array("pop_cat_rows"))
        trend_rows = np.asarray(t.array("trend_rows"))
        cat = np.asarray(b.item_feats)[:, b.schema.item_columns.index("category")].astype(np.int64)
        checked = 0
        for c in range(t.n_ids("category")):
            want = trend_rows[cat[trend_rows] == c]          # the trending list, this category's items
            np.testing.assert_array_equal(rows[indptr[c]:indptr[c + 1]], want)
            checked += len(want) > 1
        assert checked >= 3


def test_the_served_category_list_is_scored_in_its_order(demo_bundle):
    with Bundle.open(demo_bundle) as b:
        rec = Recommender(b, None)
        cat = rec.feats[:, rec.c_cat].astype(np.int64)
        for c in range(b.tables.n_ids("category")):
            rows, scores = PC.popular_in_categories(rec.cat_indptr, rec.cat_rows, rec.trend_of_row,
                                                    np.array([c]), None, 30)
            assert np.all(np.diff(scores) <= 0), (c, scores.tolist())
            want = [int(r) for r in rec.trend_rows if cat[r] == c][:30]
            assert rows.tolist() == want


def _interleave_reference(lists, limit):
    out, i = [], 0
    while len(out) < limit and any(i < len(l) for l in lists):
        out.extend(int(l[i]) for l in lists if i < len(l))
        i += 1
    return out[:limit]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 10_000), max_size=40), max_size=6), st.integers(0, 120))
def test_interleave_takes_each_lists_next_in_turn(lists, limit):
    got = PC.interleave([np.array(l, np.int32) for l in lists], limit)
    assert got.dtype == np.int32 and got.tolist() == _interleave_reference(lists, limit)
