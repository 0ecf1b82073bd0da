import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from recserve._core.cross import Crosser, FeatureSchema, cross_reference


def make(seed, n_items=40, d=6, n_cat=3, unranked=()):
    rng = np.random.default_rng(seed)
    schema = FeatureSchema(
        user_columns=["age_days", "avg_spend"] + [f"cat_share_{i}" for i in range(n_cat)],
        item_columns=["price", "category", "created_days", "popularity"],
        context_columns=["hour", "weekday"],
        sources=["ann", "i2i", "popular"],
        price_column="price", spend_column="avg_spend", category_column="category",
        category_share_prefix="cat_share_", n_categories=n_cat, created_column="created_days",
        unranked_item_columns=list(unranked))
    items = np.column_stack([rng.uniform(1, 100, n_items), rng.integers(-1, n_cat + 1, n_items),
                             rng.uniform(18000, 20000, n_items), rng.random(n_items)]).astype(np.float32)
    emb = rng.normal(size=(n_items, d)).astype(np.float32)
    return rng, schema, items, emb


# per output dtype: the kernel works in double and rounds once, the reference in numpy float64
TOL = {np.float32: dict(rtol=1e-5, atol=1e-5)}
# item cells: category codes in and out of range (and between codes), prices, creation days before and
# after the ``NOW`` values, unknown (NaN)
ITEM_VALUES = [-1.0, 0.0, 1.0, 2.0, 2.5, 3.0, 40.0, 19000.0, 20500.0, float("nan")]
# user cells: a spend that gives no price ratio (NaN, 0, negative) or one that does; shares, NaN ones too
USER_VALUES = [-5.0, 0.0, 0.25, 1.0, 25.0, float("nan")]
NOW = [19500.0, 20100.25, 0.0, float("nan"), float("inf"), float("-inf")]
small = st.floats(-2, 2, width=32)


@st.composite
def schemas(draw, item_columns=True):
    """A schema in which each optional role column (price, spend, category, category shares, created) is
    present or absent, anywhere among the plain columns, and ranked or not; zero to three of the user, item,
    context and source columns besides. ``item_columns``: at least one item column, else none."""
    flag = st.booleans()
    n_shares = draw(st.integers(0, 3))
    prefix = draw(flag)
    # shares declared (the first 0..n of them), or codes without share columns: an unknown affinity
    n_categories = draw(st.integers(0, n_shares if prefix else 3))
    users = draw(st.permutations([f"u{k}" for k in range(draw(st.integers(0, 2)))] + ["spend"] * draw(flag)))
    at = draw(st.integers(0, len(users)))
    users = users[:at] + [f"share_{k}" for k in range(n_shares)] + users[at:]
    items = []
    if item_columns:
        items = [c for c in ("price", "category", "created") if draw(flag)]
        items = draw(st.permutations(items + [f"i{k}" for k in range(draw(st.integers(0 if items else 1, 2)))]))
    return FeatureSchema(
        user_columns=users, item_columns=items,
        context_columns=[f"c{k}" for k in range(draw(st.integers(0, 2)))],
        sources=[f"s{k}" for k in range(draw(st.integers(0, 3)))],
        price_column="price" if "price" in items else None,
        spend_column="spend" if "spend" in users else None,
        category_column="category" if "category" in items else None,
        category_share_prefix="share_" if prefix else None, n_categories=n_categories,
        created_column="created" if "created" in items else None,
        unranked_item_columns=[c for c in items if draw(flag)])


def check_crossing(data, schema):
    n_items, n, d = data.draw(st.integers(1, 6)), data.draw(st.integers(0, 8)), data.draw(st.integers(0, 5))
    S = len(schema.sources)
    items = data.draw(hnp.arrays(np.float32, (n_items, len(schema.item_columns)),
                                 elements=st.sampled_from(ITEM_VALUES) | st.floats(-2, 21000, width=32)))
    user = data.draw(hnp.arrays(np.float32, len(schema.user_columns), elements=st.sampled_from(USER_VALUES)))
    emb = data.draw(hnp.arrays(np.float32, (n_items, d), elements=small))
    uvec = data.draw(hnp.arrays(np.float32, d, elements=small))
    ctx = data.draw(hnp.arrays(np.float32, len(schema.context_columns),
                               elements=small | st.just(float("nan"))))        # NaN: not given
    rows = data.draw(hnp.arrays(np.int32, n, elements=st.integers(0, n_items - 1)))
    rank = data.draw(hnp.arrays(np.int32, (n, S), elements=st.integers(-1, 4)))    # -1: not in that source
    score = data.draw(hnp.arrays(np.float32, (n, S), elements=small))
    now = data.draw(st.sampled_from(NOW))
    got = Crosser(schema, items, emb).cross(user, uvec, rows, ctx, rank, score, now)
    want = cross_reference(schema, items, emb, user, uvec, rows, ctx, rank, score, now)
    assert got.shape == (n, schema.n_features) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, equal_nan=True, **TOL[np.float32])


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_matches_reference(data):
    """Any schema: a role whose column is absent gives NaN (the kernel reads no item or user cell for it),
    like an unknown value (NaN spend or share, a spend <= 0, a category code without a share, an unknown
    creation day, a non-finite ``now``); items created after ``now`` are 0 days old; missing user values
    (NaN: an empty cell of a users-file column) and missing context values (NaN: a context column the
    request did not give) cross like any other value. (A read outside the item row
    lands in the table and gives a number where the reference has NaN.)"""
    check_crossing(data, data.draw(schemas(), "schema"))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_item_table_without_columns_matches_reference(data):
    """No item column at all: the kernel has no item row to point into, so it must read none (a role
    whose column is absent read through that missing row would crash)."""
    check_crossing(data, data.draw(schemas(item_columns=False), "schema"))


def test_schema_names_and_roundtrip():
    _, schema, _, _ = make(0)
    assert schema.names[:2] == ["user.age_days", "user.avg_spend"]
    assert schema.names[-4:] == ["x.dot", "x.price_ratio", "x.cat_affinity", "x.item_age_days"]
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    d = schema.to_dict()
    d["feature_names"] = d["feature_names"][::-1]
    with pytest.raises(ValueError, match="do not match"):
        FeatureSchema.from_dict(d)
    with pytest.raises(ValueError, match="price"):
        FeatureSchema(["a"], ["b"], [], ["ann"], price_column="nope")


def test_bad_input_rejected():
    rng, schema, items, emb = make(1)
    c = Crosser(schema, items, emb)
    user = np.ones(5, np.float32)
    uvec = np.ones(emb.shape[1], np.float32)
    rank = np.zeros((1, 3), np.int32)
    score = np.zeros((1, 3), np.float32)
    ctx = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="out of range"):
        c.cross(user, uvec, [len(items)], ctx, rank, score, 0.0)
    bad = user.copy()
    bad[0] = np.inf
    with pytest.raises(ValueError, match="user_features.0. is infinite"):
        c.cross(bad, uvec, [0], ctx, rank, score, 0.0)
    with pytest.raises(ValueError, match="dimension"):
        c.cross(user, np.ones(3, np.float32), [0], ctx, rank, score, 0.0)
    with pytest.raises(ValueError, match="context"):
        c.cross(user, uvec, [0], np.zeros(5, np.float32), rank, score, 0.0)
    with pytest.raises(ValueError, match="context.1. is infinite"):
        c.cross(user, uvec, [0], np.array([0, -np.inf], np.float32), rank, score, 0.0)
    with pytest.raises(ValueError, match="columns"):
        Crosser(schema, items[:, :2], emb)


def test_rank_and_score_must_be_candidates_by_sources():
    """Transposed (sources, candidates) arrays were reshaped into the wrong features; a rank past int32
    wrapped to 0. Both are refused."""
    _, schema, items, emb = make(2)
    c = Crosser(schema, items, emb)
    user, uvec, ctx = np.ones(5, np.float32), np.ones(emb.shape[1], np.float32), np.zeros(2, np.float32)
    rows = [0, 1]
    rank, score = np.zeros((2, 3), np.int32), np.ones((2, 3), np.float32)
    assert c.cross(user, uvec, rows, ctx, rank, score, 0.0).shape[0] == 2
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        c.cross(user, uvec, rows, ctx, rank.T, score.T, 0.0)
    with pytest.raises(ValueError, match="out of range"):
        c.cross(user, uvec, rows, ctx, np.full((2, 3), 2**32, np.int64), score, 0.0)
    with pytest.raises(ValueError, match="rank must hold integers"):
        c.cross(user, uvec, rows, ctx, np.full((2, 3), 0.5), score, 0.0)


def test_item_age_is_never_negative_and_unranked_columns_are_no_features():
    """An item created after ``now`` is 0 days old (the ranker never sees a negative age); an unranked
    item column (the creation day) still gives the age but is not a feature of its own."""
    _, plain, items, emb = make(3)
    _, schema, _, _ = make(3, unranked=("created_days",))
    assert "item.created_days" in plain.names and "item.created_days" not in schema.names
    assert schema.n_features == plain.n_features - 1
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    old = plain.to_dict()
    old.pop("unranked_item_columns")            # a manifest written before the key existed: every column
    assert FeatureSchema.from_dict(old) == plain
    with pytest.raises(ValueError, match="unranked item column 'nope'"):
        make(3, unranked=("nope",))
    created = items[:, 2].astype(np.float64)
    now = float(np.median(created))
    rows = np.arange(len(items), dtype=np.int32)
    rank, score = np.zeros((len(rows), 3), np.int32), np.ones((len(rows), 3), np.float32)
    user, uvec, ctx = np.ones(5, np.float32), np.ones(emb.shape[1], np.float32), np.zeros(2, np.float32)
    X = Crosser(schema, items, emb).cross(user, uvec, rows, ctx, rank, score, now)
    P = Crosser(plain, items, emb).cross(user, uvec, rows, ctx, rank, score, now)
    age = X[:, schema.names.index("x.item_age_days")]
    future = created > now
    assert future.any() and (~future).any()
    assert np.all(age[future] == 0.0)
    np.testing.assert_allclose(age[~future], (now - created)[~future], rtol=1e-5, atol=1e-2)
    keep = [plain.names.index(n) for n in schema.names]
    np.testing.assert_array_equal(X, P[:, keep])


def test_column_runs():
    from recserve._core.cross import column_runs

    assert column_runs([0, 1, 2, 4, 5, 7]).tolist() == [[0, 3], [4, 2], [7, 1]]
    assert column_runs([]).shape == (0, 2)
