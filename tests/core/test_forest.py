"""Forest (Cython LightGBM inference) against Booster.predict(raw_score=True).

Models are small and trained once per module; inputs are random (hypothesis) plus adversarial rows:
NaN, +-inf, +-0, values within kZeroThreshold of 0, every model threshold and its float32 neighbours,
unseen / negative / fractional / huge categories.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

lgb = pytest.importorskip("lightgbm")

from recserve._core._forest import ForestKernel  # noqa: E402
from recserve._core.forest import Forest, forest_reference, parsed_trees  # noqa: E402

F = 8
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-36, -1e-36, 1e-35, -1e-35, 1e-45, -1e-45,
                    1e-30, -1e-30, 1.0, -1.0, 0.5, -0.5, 3.0e38, -3.0e38], dtype=np.float32)
CAT_SPECIAL = np.array([np.nan, -1, -0.5, -0.99, -2, 0, 0.99, 1.5, 2.5, 7, 31, 32, 33, 63, 64, 100,
                        1000, 2.0**31, 2.0**31 - 128, 1e10, -1e10, np.inf, -np.inf], dtype=np.float32)
CATS = (0, 3)  # categorical columns of the categorical models


def _data(n: int, seed: int, nan: float = 0.0, zeros: float = 0.0, cats: bool = False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)).astype(np.float32)
    X[:, 5] = np.round(X[:, 5] * 3) / 3                      # few distinct values
    if cats:
        X[:, 0] = rng.integers(0, 30, n)                     # many categories: bitset splits
        X[:, 3] = rng.integers(0, 3, n)                      # few categories: one-hot splits
    y = X[:, 1] + np.sin(2 * X[:, 2]) + 0.3 * X[:, 4] * X[:, 5] + 0.1 * rng.normal(size=n)
    if cats:
        y += np.where(X[:, 0] % 3 == 0, 1.5, -0.5) + (X[:, 3] == 1)
    if zeros:
        X[rng.random((n, F)) < zeros] = 0.0
    if nan:
        X[rng.random((n, F)) < nan] = np.nan
    return X, y


def _train(params: dict, n: int = 2500, rounds: int = 40, seed: int = 0, **data_kw):
    X, y = _data(n, seed, **data_kw)
    p = {"verbose": -1, "num_threads": 1, "min_data_in_leaf": 5, "seed": seed, **params}
    ds_kw = {}
    if params.get("objective") == "binary":
        y = (y > np.median(y)).astype(float)
    if params.get("objective") == "lambdarank":
        y = np.clip(np.digitize(y, np.quantile(y, [0.5, 0.75, 0.9, 0.97])), 0, 4)
        ds_kw["group"] = [50] * (n // 50)
    if data_kw.get("cats"):
        ds_kw["categorical_feature"] = list(CATS)
    return lgb.train(p, lgb.Dataset(X, y, **ds_kw), num_boost_round=rounds)


MODEL_PARAMS = {
    "regression_31": ({"objective": "regression", "num_leaves": 31}, {}),
    "regression_4_maxbin": ({"objective": "regression", "num_leaves": 4, "max_bin": 7}, {}),
    "binary_nan": ({"objective": "binary", "num_leaves": 15, "max_bin": 15}, {"nan": 0.15}),
    "zero_as_missing": ({"objective": "regression", "num_leaves": 15, "zero_as_missing": True},
                        {"zeros": 0.3, "nan": 0.05}),
    "zeros_not_missing": ({"objective": "regression", "num_leaves": 15}, {"zeros": 0.3}),
    "lambdarank_63": ({"objective": "lambdarank", "num_leaves": 63, "max_bin": 31}, {"nan": 0.02}),
    "categorical": ({"objective": "regression", "num_leaves": 31, "min_data_per_group": 5,
                     "cat_smooth": 1.0, "cat_l2": 1.0, "max_cat_threshold": 16},
                    {"cats": True, "nan": 0.05}),
    "categorical_zero_missing": ({"objective": "binary", "num_leaves": 15, "min_data_per_group": 5,
                                  "cat_smooth": 1.0, "zero_as_missing": True},
                                 {"cats": True, "zeros": 0.2, "nan": 0.05}),
    "random_forest": ({"objective": "regression", "boosting": "rf", "num_leaves": 15,
                       "bagging_fraction": 0.6, "bagging_freq": 1, "feature_fraction": 0.7}, {}),
}


@pytest.fixture(scope="module")
def models():
    return {name: _train(p, **kw) for name, (p, kw) in MODEL_PARAMS.items()}


def _thresholds(booster) -> dict[int, list[float]]:
    """Numerical thresholds per feature, from LightGBM's own JSON dump."""
    out: dict[int, list[float]] = {f: [] for f in range(F)}

    def walk(node):
        if "split_feature" not in node:
            return
        if node["decision_type"] == "<=":
            out[node["split_feature"]].append(float(node["threshold"]))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def _adversarial(booster, seed: int = 0) -> np.ndarray:
    """Rows mixing every threshold (rounded to float32 and both float32 neighbours) with specials."""
    rng = np.random.default_rng(seed)
    thr = _thresholds(booster)
    cols = []
    for f in range(F):
        vals = [SPECIAL]
        for t in thr[f]:
            with np.errstate(over="ignore"):
                v = np.float32(t)
            vals.append(np.array([v, np.nextafter(v, np.float32(np.inf)),
                                  np.nextafter(v, np.float32(-np.inf))], dtype=np.float32))
        if f in CATS:
            vals.append(CAT_SPECIAL)
            vals.append(np.arange(0, 40, dtype=np.float32))
        cols.append(np.unique(np.concatenate(vals)))   # np.unique keeps one NaN
    n = max(len(c) for c in cols) * 3
    X = np.empty((n, F), dtype=np.float32)
    for f, c in enumerate(cols):
        X[:, f] = np.concatenate([c, rng.choice(c, n - len(c))])     # each value at least once
    return X


def _check(booster, forest: Forest, X: np.ndarray) -> None:
    got = forest.predict(X)
    want = booster.predict(X, raw_score=True, num_threads=1)
    assert got.dtype == np.float64 and got.shape == (X.shape[0],)
    np.testing.assert_array_equal(got, want)          # the module promises identical raw scores


@pytest.mark.parametrize("name", list(MODEL_PARAMS))
def test_matches_lightgbm(models, name):
    booster = models[name]
    forest = Forest.from_booster(booster)
    assert forest.num_features == F and forest.num_trees == booster.num_trees()
    X_rand, _ = _data(700, seed=99, nan=0.05, zeros=0.05, cats="cat" in name)
    X_adv = _adversarial(booster)
    for X in (X_rand, X_adv):
        _check(booster, forest, X)
        # the walk strategies of the kernel agree with each other bit for bit
        base = forest._predict(X, 0)
        for strategy in (1, 2):
            np.testing.assert_array_equal(forest._predict(X, strategy), base)
    # the summation order is LightGBM's, so the scores are in fact identical
    np.testing.assert_array_equal(forest.predict(X_adv), booster.predict(X_adv, raw_score=True))


def test_every_model_splits_as_intended(models):
    """Guard the fixtures: the missing-value and categorical code paths are really exercised."""
    texts = {k: b.model_to_string() for k, b in models.items()}
    dts = {k: {int(d) for line in t.splitlines() if line.startswith("decision_type=")
               for d in line.split("=")[1].split()} for k, t in texts.items()}
    assert any((d >> 2) & 3 == 2 for d in dts["binary_nan"])                  # missing NaN
    assert any((d >> 2) & 3 == 1 for d in dts["zero_as_missing"])             # missing Zero
    assert any(d & 1 for d in dts["categorical"])                             # categorical
    assert any(d & 1 for d in dts["categorical_zero_missing"])
    assert "average_output" in texts["random_forest"]
    assert any(len(set(_thresholds(models["regression_4_maxbin"])[f])) <
               len(_thresholds(models["regression_4_maxbin"])[f]) for f in range(F))  # repeats


_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_rows = hnp.arrays(np.float32, st.tuples(st.integers(1, 70), st.just(F)),
                   elements=st.one_of(_float32, st.sampled_from(SPECIAL.tolist()),
                                      st.sampled_from(CAT_SPECIAL.tolist()),
                                      st.floats(-3, 3, width=32)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=_rows, name=st.sampled_from(list(MODEL_PARAMS)))
def test_hypothesis_random_rows(models, X, name):
    booster = models[name]
    _check(booster, Forest.from_booster(booster), X)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=_rows, name=st.sampled_from(list(MODEL_PARAMS)))
def test_the_kernel_equals_its_numpy_reference(models, X, name):
    """``forest_reference`` walks the parsed trees in plain numpy: the kernel gives its scores bit for bit."""
    text = models[name].model_to_string()
    want = Forest.from_model_string(text).predict(X)
    np.testing.assert_array_equal(want, forest_reference(text, X))
    # the trees parsed once (bench/ranker.py times the walk alone, as it times the kernel without its parse)
    np.testing.assert_array_equal(want, forest_reference(parsed_trees(text), X))


@pytest.mark.parametrize("name", list(MODEL_PARAMS))
def test_the_numpy_reference_equals_lightgbm(models, name):
    booster = models[name]
    X = _adversarial(booster)
    np.testing.assert_array_equal(forest_reference(booster.model_to_string(), X),
                                  booster.predict(X, raw_score=True, num_threads=1))


def test_single_leaf_trees_and_constant_model():
    X, _ = _data(300, 1)
    booster = lgb.train({"objective": "regression", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(X, np.full(300, 2.5)), num_boost_round=3)
    forest = Forest.from_booster(booster)
    assert "num_leaves=1" in booster.model_to_string()
    _check(booster, forest, np.vstack([X[:10], _adversarial(booster)]))


def test_mixed_single_leaf_and_split_trees(models):
    """A single-leaf tree in the middle of a model (hand-made: LightGBM's own parser loads it too)."""
    text = models["regression_31"].model_to_string()
    head, rest = text.split("Tree=1\n", 1)
    body, tail = rest.split("\n\n\nTree=2\n", 1)
    single = "num_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\nthreshold=\ndecision_type=\n" \
             "left_child=\nright_child=\nleaf_value=0.125\nleaf_weight=\nleaf_count=10\n" \
             "internal_value=\ninternal_weight=\ninternal_count=\nis_linear=0\nshrinkage=1"
    text2 = head + "Tree=1\n" + single + "\n\n\nTree=2\n" + tail
    # tree_sizes would no longer match (LightGBM trusts it and aborts): drop it, LightGBM then scans
    text2 = "\n".join(ln for ln in text2.split("\n") if not ln.startswith("tree_sizes="))
    booster = lgb.Booster(model_str=text2)
    _check(booster, Forest.from_model_string(text2), _adversarial(booster))


def test_input_conversion_and_shapes(models):
    booster = models["regression_31"]
    forest = Forest.from_booster(booster)
    X, _ = _data(50, 3)
    want = forest.predict(X)
    np.testing.assert_array_equal(forest.predict(X.astype(np.float64)), want)   # float32-exact
    np.testing.assert_array_equal(forest.predict(np.asfortranarray(X)), want)
    np.testing.assert_array_equal(forest.predict(X[::-1][::-1]), want)
    np.testing.assert_array_equal(forest.predict(X.tolist()), want)
    assert forest.predict(np.empty((0, F), np.float32)).shape == (0,)
    big = np.repeat(X, 7, axis=0)                                   # several blocks, ragged tail
    np.testing.assert_array_equal(forest.predict(big), np.repeat(want, 7))
    assert "num_trees=40" in repr(forest)


@pytest.mark.parametrize("bad", [np.zeros((3, F - 1), np.float32), np.zeros((3, F + 1), np.float32),
                                 np.zeros(F, np.float32), np.zeros((2, 3, F), np.float32),
                                 np.array([["a"] * F]), np.zeros((2, F), np.complex64)])
def test_bad_input_raises(models, bad):
    forest = Forest.from_booster(models["regression_31"])
    with pytest.raises(ValueError):
        forest.predict(bad)


def test_wrong_n_features_message(models):
    forest = Forest.from_booster(models["regression_31"])
    with pytest.raises(ValueError, match=f"expects {F}"):
        forest.predict(np.zeros((4, F + 2), np.float32))


def test_linear_tree_rejected():
    X, y = _data(500, 4)
    booster = lgb.train({"objective": "regression", "linear_tree": True, "verbose": -1,
                         "num_leaves": 4, "num_threads": 1}, lgb.Dataset(X, y), num_boost_round=2)
    with pytest.raises(ValueError, match="linear"):
        Forest.from_booster(booster)


def test_multiclass_rejected():
    X, y = _data(600, 5)
    booster = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1, "num_leaves": 4,
                         "num_threads": 1}, lgb.Dataset(X, np.digitize(y, [-0.5, 0.5])),
                        num_boost_round=2)
    with pytest.raises(ValueError, match="multi"):
        Forest.from_booster(booster)


GARBAGE = ["", "tree", "hello world", "\x00\x01\x02", "tree\nversion=v4\n", "Tree=0\nnum_leaves=2",
           "tree\nmax_feature_idx=3\nTree=0\nnum_leaves=1\nleaf_value=1\n",          # no end of trees
           "tree\nmax_feature_idx=-1\nend of trees", "tree\nmax_feature_idx=x\nend of trees"]


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_text_raises(text):
    with pytest.raises(ValueError):
        Forest.from_model_string(text)


def test_non_str_raises():
    with pytest.raises(ValueError):
        Forest.from_model_string(b"tree\n")  # type: ignore[arg-type]


def _tree0_line(text: str, key: str) -> str:
    start = text.index("Tree=0\n")
    i = text.index(f"\n{key}=", start) + 1
    return text[i:text.index("\n", i)]


@pytest.mark.parametrize("key,value", [
    ("left_child", "5 -1 -2"), ("left_child", "0 -1 -2"), ("right_child", "2 -3 -9"),
    ("left_child", "1 -1"), ("left_child", "1 -1 -1"), ("split_feature", "0 99 0"),
    ("split_feature", "0 -1 0"), ("threshold", "0.5 abc 1"), ("decision_type", "2 2 12"),
    ("decision_type", "2 2 77"), ("decision_type", "1 2 2"), ("num_leaves", "-3"),
    ("num_leaves", "1000000000"), ("num_leaves", "3"), ("leaf_value", "1 2 3"),
    ("is_linear", "1"), ("num_cat", "x")])
def test_corrupted_model_raises(key, value):
    X, y = _data(400, 6)
    text = lgb.train({"objective": "regression", "num_leaves": 4, "verbose": -1, "num_threads": 1},
                     lgb.Dataset(X, y), num_boost_round=2).model_to_string()
    assert _tree0_line(text, "left_child").count(" ") == 2          # 3 internal nodes
    bad = text.replace(_tree0_line(text, key), f"{key}={value}", 1)
    with pytest.raises(ValueError):
        Forest.from_model_string(bad)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fuzzed_model_text_never_crashes(data):
    """Random cuts and token edits of a real model: ValueError or a working Forest, never a crash."""
    X, y = _data(300, 7, cats=True)
    text = _FUZZ_BASE
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["drop", "junk", "token", "cut"]))
        if op == "drop":
            del lines[i]
        elif op == "junk":
            lines[i] = data.draw(st.text(max_size=20))
        elif op == "cut":
            lines = lines[:i]
        else:
            toks = lines[i].split(" ")
            j = data.draw(st.integers(0, len(toks) - 1))
            toks[j] = data.draw(st.sampled_from(["-1", "0", "7", "99", "-99", "nan", "inf", "1e308",
                                                 "2147483648", "x", ""]))
            lines[i] = " ".join(toks)
        if not lines:
            break
    try:
        forest = Forest.from_model_string("\n".join(lines))
    except ValueError:
        return
    out = forest.predict(np.vstack([X[:20], np.full((1, F), np.nan, np.float32)]))
    assert out.shape == (21,)


_X, _y = _data(300, 7, cats=True)
_FUZZ_BASE = lgb.train({"objective": "regression", "num_leaves": 6, "verbose": -1, "num_threads": 1,
                        "min_data_in_leaf": 5, "min_data_per_group": 5, "cat_smooth": 1.0},
                       lgb.Dataset(_X, _y, categorical_feature=list(CATS)),
                       num_boost_round=3).model_to_string()


def test_kernel_rejects_out_of_range_arrays():
    """The kernel re-checks the indices it follows, whatever the Python layer gives it."""
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    good = dict(thr=np.zeros(3, np.float32), slot=i32(0, 0, 0), left=i32(1, 1, 2),
                right=i32(2, 1, 2), flags=np.zeros(3, np.uint8), value=np.array([0.0, 1.0, 2.0]),
                cat_off=i32(0, 0, 0), cat_len=i32(0, 0, 0), cat_bits=np.zeros(0, np.uint32),
                tree=np.array([[0, 1, 1, 1, 0]], np.int32), used=i32(0), n_features=1)
    k = ForestKernel(**good)
    out = np.empty(2)
    k.predict(np.array([[-1.0], [1.0]], np.float32), out)
    np.testing.assert_array_equal(out, [1.0, 2.0])
    for key, val in [("left", i32(3, 1, 2)), ("right", i32(-1, 1, 2)), ("slot", i32(1, 0, 0)),
                     ("used", i32(5)), ("tree", np.array([[7, 1, 1, 1, 0]], np.int32)),
                     ("flags", np.array([4, 0, 0], np.uint8)), ("value", np.zeros(2))]:
        if key == "flags":
            bad = {**good, key: val, "cat_len": i32(1, 0, 0)}   # bitset past the end of cat_bits
        else:
            bad = {**good, key: val}
        with pytest.raises(ValueError):
            ForestKernel(**bad)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 17, 63, 64, 65, 500, 2001])
@pytest.mark.parametrize("name", ["regression_31", "lambdarank_63", "zero_as_missing", "categorical",
                                  "binary_nan"])
def test_batch_sizes_around_lanes_and_blocks(models, name, n):
    """Partial lane groups, the row-by-row tail and block edges, with clean and missing-value rows
    mixed in one block (the pair-layout walk and the missing-value walk share the block)."""
    booster = models[name]
    forest = Forest.from_booster(booster)
    X, _ = _data(n, seed=1000 + n, nan=0.02, zeros=0.02, cats="cat" in name)
    want = booster.predict(X, raw_score=True, num_threads=1)
    np.testing.assert_array_equal(forest.predict(X), want)
    for strategy in (1, 2):
        np.testing.assert_array_equal(forest._predict(X, strategy), want)
    Xc, _ = _data(n, seed=2000 + n, cats="cat" in name)          # only clean rows
    np.testing.assert_array_equal(forest.predict(Xc), booster.predict(Xc, raw_score=True))


def _stump(thr: float) -> dict:
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    return dict(thr=np.array([thr, 0, 0], np.float32), slot=i32(0, 0, 0), left=i32(1, 1, 2),
                right=i32(2, 1, 2), flags=np.zeros(3, np.uint8), value=np.array([0.0, 1.0, 2.0]),
                cat_off=i32(0, 0, 0), cat_len=i32(0, 0, 0), cat_bits=np.zeros(0, np.uint32),
                tree=np.array([[0, 1, 1, 1, 0]], np.int32), used=i32(0), n_features=1)


@pytest.mark.parametrize("n", [1, 3, 8, 11])
def test_kernel_infinite_and_nan_thresholds(n):
    """x <= thr as LightGBM compares: a NaN threshold sends every row right (even -inf), +inf every
    non-NaN row left, -inf only -inf left; identical in every walk."""
    X = np.resize(np.array([-np.inf, -1.0, 0.0, 2.0, np.inf], np.float32), n)[:, None]
    for thr, want in [(np.nan, np.full(n, 2.0)), (np.inf, np.full(n, 1.0)),
                      (-np.inf, np.where(X[:, 0] == -np.inf, 1.0, 2.0))]:
        k = ForestKernel(**_stump(thr))
        for strategy in (0, 1, 2):
            out = np.empty(n)
            k.predict(X, out, strategy)
            np.testing.assert_array_equal(out, want)


@settings(max_examples=200, deadline=None)
@given(thr=st.floats(width=32, allow_nan=True, allow_infinity=True),
       xs=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=True), min_size=1,
                   max_size=20))
def test_kernel_integer_keys_order_like_floats(thr, xs):
    """The default walk compares integer keys of x and the threshold: every float32 pair (signed
    zeros, subnormals, the kZeroThreshold rule, infinities, a NaN threshold) decides as
    ``x <= thr`` does on floats, like the float walks."""
    X = np.array(xs + [thr, -thr, 0.0, -0.0], np.float32)
    X = X[~np.isnan(X)][:, None]
    xv = np.where(np.abs(X[:, 0]) <= np.float32(1e-35), np.float32(0), X[:, 0])
    with np.errstate(invalid="ignore"):
        want = np.where(xv <= np.float32(thr), 1.0, 2.0)
    k = ForestKernel(**_stump(thr))
    for strategy in (0, 1, 2):
        out = np.empty(len(X))
        k.predict(X, out, strategy)
        np.testing.assert_array_equal(out, want)


def test_kernel_rejects_shared_or_cyclic_nodes():
    """Nodes reached twice (a DAG, a cycle, two trees sharing nodes) cannot be laid out as trees."""
    i32 = lambda *v: np.array(v, np.int32)  # noqa: E731
    good = _stump(0.0)
    ForestKernel(**good)
    for key, val in [("left", i32(2, 1, 2)),                      # both children are node 2
                     ("left", i32(0, 1, 2)),                      # the root is its own child
                     ("tree", np.array([[0, 1, 1, 1, 0], [1, 0, 0, 1, 0]], np.int32)),
                     ("tree", np.array([[0, 1, 1, 1, 0], [0, 1, 1, 1, 0]], np.int32))]:
        with pytest.raises(ValueError):
            ForestKernel(**{**good, key: val})


@pytest.mark.parametrize("plan", ["root", "half", "random", "chosen"])
@pytest.mark.parametrize("name", ["regression_31", "lambdarank_63", "zero_as_missing"])
def test_two_stage_walk_is_only_a_speed_hint(models, name, plan, monkeypatch):
    """Whatever first-stage length a tree gets (0 = every row gathered at the root, the tree's
    depth = one stage), the scores stay LightGBM's, for batches around lanes and blocks and with
    missing-value rows in the block."""
    import recserve._core.forest as forest_mod

    rng = np.random.default_rng(7)
    chosen = forest_mod._first_stage
    pick = {"root": lambda t: 0, "half": lambda t: t.depth // 2,
            "random": lambda t: int(rng.integers(0, t.depth + 1)), "chosen": chosen}[plan]
    monkeypatch.setattr(forest_mod, "_first_stage", pick)
    booster = models[name]
    forest = Forest.from_booster(booster)
    for n in (8, 9, 63, 64, 65, 300):
        X, _ = _data(n, seed=3000 + n, nan=0.01, zeros=0.02)
        np.testing.assert_array_equal(forest.predict(X),
                                      booster.predict(X, raw_score=True, num_threads=1))


def test_first_stage_plan():
    """Lopsided trees whose deep leaves hold few rows get a short first stage; balanced ones, or
    trees whose deep leaves hold the rows, walk in one stage."""
    from recserve._core.forest import _first_stage

    class T:
        def __init__(self, depths, counts):
            self.leaf_depth = np.array(depths)
            self.leaf_count = np.array(counts, float)
            self.depth = int(max(depths))

    assert _first_stage(T([3] * 8, [10] * 8)) == 3                       # balanced
    lopsided = T([2, 2, 2] + list(range(3, 21)) + [20], [1000] * 3 + [1] * 19)
    assert 2 <= _first_stage(lopsided) < 10
    assert _first_stage(T(lopsided.leaf_depth, [1] * 3 + [1000] * 19)) == 20  # rows go deep
    with pytest.raises(ValueError):
        ForestKernel(**{**_stump(0.0), "stage": np.array([2], np.int32)})   # beyond the depth
