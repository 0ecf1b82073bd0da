"""A catalogue with many categories: user share features only for the ``share_categories`` with the most
items, so neither the user table nor every ranker row grows with the number of categories."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recserve._core.cross import Crosser
from recserve.bundle import Bundle, verify
from trainer.build import build
from trainer.synth import synth
from trainer.timing import Timer
from cliutil import run_cli


@pytest.fixture(scope="module")
def many_categories(tmp_path_factory):
    """300 users x 200 items in 40 categories of skewed sizes, built with share features for 8."""
    ds, _ = synth(300, 200, seed=4)
    rng = np.random.default_rng(1)
    sizes = rng.zipf(1.6, 40).astype(float)
    cat = rng.choice(40, size=ds.n_items, p=sizes / sizes.sum())
    ds = dataclasses.replace(ds, item_category=np.array([f"c{c:02d}" for c in cat], dtype=object))
    root = tmp_path_factory.mktemp("share")
    build(ds, root, {"seed": 0, "factors": 8, "ranker_users": 300, "ranker_rounds": 20, "holdout": 0,
                     "share_categories": 8, "tune": False}, timer=Timer(verbose=False))
    return ds, root


def test_share_columns_cover_the_categories_with_most_items(many_categories):
    ds, root = many_categories
    verify(root)
    with Bundle.open(root) as b:
        s = b.schema
        assert s.n_categories == 8
        assert [c for c in s.user_columns if c.startswith("cat_share_")] == [f"cat_share_{k}" for k in range(8)]
        names = [b.tables.id_of("category", r) for r in range(b.tables.n_ids("category"))]
        assert sorted(names) == sorted(set(ds.item_category))
        counts = {n: int((ds.item_category == n).sum()) for n in names}
        expected = sorted(names, key=lambda n: (-counts[n], n))
        assert names == expected, "categories are coded by number of items, most first, ties by name"
        # each share is the user's fraction of events in that category (holdout 0: every interaction)
        code = {n: i for i, n in enumerate(names)}
        item_code = np.array([code[c] for c in ds.item_category])
        uf = b.user_feats
        first = s.user_columns.index("cat_share_0")
        for u in (0, 7, 150):
            ev = ds.item[ds.user == u]
            want = np.array([(item_code[ev] == k).sum() for k in range(8)]) / max(len(ev), 1)
            np.testing.assert_allclose(uf[u, first:first + 8], want, rtol=1e-6)
        # the crossed affinity: the user's share for a tracked category, missing for the others
        item_feats = np.asarray(b.item_feats)
        cx = Crosser(s, item_feats, b.item_emb)
        cat_col = s.item_columns.index("category")
        tracked = int(np.flatnonzero(item_feats[:, cat_col] < 8)[0])
        untracked = int(np.flatnonzero(item_feats[:, cat_col] >= 8)[0])
        S = len(s.sources)
        X = cx.cross(uf[7], np.zeros(b.item_emb.shape[1], np.float32), np.array([tracked, untracked], np.int32),
                     np.zeros(len(s.context_columns), np.float32), np.full((2, S), -1, np.int32),
                     np.zeros((2, S), np.float32), 20_000.0)
        aff = X[:, s.names.index("x.cat_affinity")]
        assert aff[0] == uf[7, first + int(item_feats[tracked, cat_col])]
        assert np.isnan(aff[1])


def test_a_category_filter_on_an_untracked_category_still_serves(many_categories):
    from recserve.events import EventStore
    from recserve.pipeline.messages import Filters, RecRequest
    from recserve.pipeline.recommender import Recommender

    _, root = many_categories
    with Bundle.open(root) as b:
        rec = Recommender(b, EventStore(root / "events"))
        names = [b.tables.id_of("category", r) for r in range(b.tables.n_ids("category"))]
        user = b.tables.id_of("user", 3)
        for cat in (names[0], names[-1]):
            res = rec.recommend(RecRequest(user_id=user, k=5, exclude_consumed=False,
                                           filters=Filters(include_categories=[cat], in_stock_only=False)))
            assert res.items, cat
            rows = [b.tables.row_of("item", i.item_id) for i in res.items]
            assert set(np.asarray(b.item_feats)[rows, b.schema.item_columns.index("category")]) == {names.index(cat)}


def test_the_cli_bounds_share_categories(tmp_path):
    data = tmp_path / "data"
    assert run_cli("synth", "--users", "50", "--items", "30", str(data)).returncode == 0
    for bad in ("-1", "4097", "x"):
        r = run_cli("build", "--data", str(data), str(tmp_path / "b"), "--share-categories", bad)
        assert r.returncode == 2 and "--share-categories" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()
