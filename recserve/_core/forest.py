"""Fast LightGBM inference: raw scores identical to ``Booster.predict(X, raw_score=True)``.

``Forest`` reads LightGBM's *text* model format (``Booster.model_to_string()``) with its own parser
(nothing in the text is ever executed; malformed text raises ``ValueError``), flattens the trees into
the arrays of the Cython kernel ``recserve._core._forest`` and scores float32 rows without the GIL.

Semantics follow LightGBM 4.x exactly, for single-output models (regression, binary, lambdarank...):

* a row is read as LightGBM reads a float32 matrix: each value is widened to double, and values with
  ``|x| <= kZeroThreshold`` (the float ``1e-35``) become 0;
* numerical split: left iff ``x <= threshold`` (double). ``decision_type`` bit 1 is "default left",
  bits 2-3 the missing type: None (NaN is read as 0), Zero (0 and NaN take the default side) or NaN
  (NaN takes the default side);
* categorical split (bit 0): NaN and negative values go right, others are truncated to int and go
  left iff their bit is set in the node's ``cat_threshold`` bitset;
* a tree's output is its leaf value (shrinkage is already applied in the text); the score is the sum
  over trees in model order, from 0.0, in double. For ``average_output`` models (random forest) this
  sum is still what ``raw_score=True`` returns: LightGBM averages only in the transformed output.

Linear trees and multi-output models (``num_tree_per_iteration > 1``) are rejected.

The kernel compares float32 inputs against the largest float32 not above each double threshold, which
is exactly equivalent to LightGBM's double comparison for every float32 input.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from recserve._core._forest import ForestKernel

__all__ = ["Forest", "forest_reference", "parsed_trees"]

_F_NAN_LEFT, _F_ZERO_FLIP, _F_CAT = 1, 2, 4  # must match _forest.pxd
_T_PLAIN, _T_ZERO, _T_CAT = 0, 1, 2
_INT32_MAX = 2**31 - 1
_TREE_KEYS_INTERNAL = ("split_feature", "threshold", "decision_type", "left_child", "right_child")


def _ints(text: str, n: int, name: str, lo: int = -(2**31), hi: int = _INT32_MAX) -> list[int]:
    toks = text.split()
    if len(toks) != n:
        raise ValueError(f"{name}: expected {n} values, found {len(toks)}")
    try:
        vals = [int(t) for t in toks]
    except ValueError:
        raise ValueError(f"{name}: not a list of integers") from None
    for v in vals:
        if v < lo or v > hi:
            raise ValueError(f"{name}: value {v} outside [{lo}, {hi}]")
    return vals


def _floats(text: str, n: int, name: str) -> NDArray[np.float64]:
    toks = text.split()
    if len(toks) != n:
        raise ValueError(f"{name}: expected {n} values, found {len(toks)}")
    try:
        return np.array([float(t) for t in toks], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{name}: not a list of numbers") from None


def _key_values(lines: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        key = key.strip()
        if not key:
            raise ValueError(f"{where}: malformed line {line[:60]!r}")
        if key in out:
            raise ValueError(f"{where}: duplicate key {key!r}")
        out[key] = value.strip() if sep else ""
    return out


class _Tree:
    """One parsed and structurally checked tree (children already validated as a proper binary tree)."""

    __slots__ = ("num_leaves", "feature", "threshold", "dtype", "left", "right", "leaf_value",
                 "cat_boundaries", "cat_threshold", "depth", "min_depth", "leaf_depth",
                 "leaf_count")

    def __init__(self, kv: dict[str, str], index: int, max_feature_idx: int) -> None:
        where = f"Tree={index}"
        try:
            self.num_leaves = int(kv["num_leaves"])
            num_cat = int(kv.get("num_cat", "0"))
        except (KeyError, ValueError):
            raise ValueError(f"{where}: missing or invalid num_leaves / num_cat") from None
        if kv.get("is_linear", "0").strip() not in ("0", ""):
            raise ValueError(f"{where}: linear trees (is_linear=1) are not supported")
        L = self.num_leaves
        if L < 1 or L > 2**24 or num_cat < 0 or num_cat > L:
            raise ValueError(f"{where}: invalid num_leaves={L} / num_cat={num_cat}")
        if "leaf_value" not in kv:
            raise ValueError(f"{where}: missing leaf_value")
        self.leaf_value = _floats(kv["leaf_value"], L, f"{where} leaf_value")
        # training rows per leaf: only a speed hint for the kernel (optional in the format)
        self.leaf_count = (np.asarray(_ints(kv["leaf_count"], L, f"{where} leaf_count", 0),
                                      np.float64) if "leaf_count" in kv else np.ones(L))
        self.leaf_depth = np.zeros(L, np.int64)
        n = L - 1
        self.cat_boundaries: list[int] = []
        self.cat_threshold: list[int] = []
        self.depth = self.min_depth = 0
        if n == 0:
            self.feature = self.dtype = self.left = self.right = []
            self.threshold = np.zeros(0, dtype=np.float64)
            return
        for key in _TREE_KEYS_INTERNAL:
            if key not in kv:
                raise ValueError(f"{where}: missing {key}")
        self.feature = _ints(kv["split_feature"], n, f"{where} split_feature", 0, max_feature_idx)
        self.threshold = _floats(kv["threshold"], n, f"{where} threshold")
        self.dtype = _ints(kv["decision_type"], n, f"{where} decision_type", 0, 15)
        self.left = _ints(kv["left_child"], n, f"{where} left_child", -L, n - 1)
        self.right = _ints(kv["right_child"], n, f"{where} right_child", -L, n - 1)
        if any((d >> 2) & 3 == 3 for d in self.dtype):
            raise ValueError(f"{where}: unknown missing type in decision_type")
        n_cat_nodes = sum(d & 1 for d in self.dtype)
        if n_cat_nodes:
            if num_cat < 1 or "cat_boundaries" not in kv or "cat_threshold" not in kv:
                raise ValueError(f"{where}: categorical splits without cat_boundaries/cat_threshold")
            cb = _ints(kv["cat_boundaries"], num_cat + 1, f"{where} cat_boundaries", 0)
            if cb[0] != 0 or any(b < a for a, b in zip(cb, cb[1:])):
                raise ValueError(f"{where}: cat_boundaries must start at 0 and not decrease")
            self.cat_boundaries = cb
            self.cat_threshold = _ints(kv["cat_threshold"], cb[-1], f"{where} cat_threshold", 0,
                                       2**32 - 1)
            for i, d in enumerate(self.dtype):
                if d & 1:
                    t = self.threshold[i]
                    if not (0 <= t < num_cat) or t != int(t):
                        raise ValueError(f"{where}: categorical node {i} has bitset index {t}")
        self._check_structure(where)

    def _check_structure(self, where: str) -> None:
        """Every node reached from the root exactly once (a tree: no cycle, no sharing, no orphan)."""
        n = self.num_leaves - 1
        seen_node = [False] * n
        seen_leaf = [False] * self.num_leaves
        seen_node[0] = True
        self.min_depth = self.num_leaves
        stack = [(0, 0)]
        while stack:
            node, depth = stack.pop()
            for child in (self.left[node], self.right[node]):
                if child >= 0:
                    if seen_node[child]:
                        raise ValueError(f"{where}: node {child} is reached twice (not a tree)")
                    seen_node[child] = True
                    stack.append((child, depth + 1))
                else:
                    if seen_leaf[~child]:
                        raise ValueError(f"{where}: leaf {~child} is reached twice (not a tree)")
                    seen_leaf[~child] = True
                    self.leaf_depth[~child] = depth + 1
                    self.depth = max(self.depth, depth + 1)
                    self.min_depth = min(self.min_depth, depth + 1)
        if not (all(seen_node) and all(seen_leaf)):
            raise ValueError(f"{where}: some nodes or leaves are not reachable from the root")


def _parse(text: str) -> tuple[dict[str, str], list[_Tree]]:
    if not isinstance(text, str):
        raise ValueError(f"model must be a str, got {type(text).__name__}")
    lines = [ln.strip() for ln in text.replace("\r", "").split("\n")]
    pos = 0
    while pos < len(lines) and not lines[pos]:
        pos += 1
    if pos >= len(lines) or lines[pos] != "tree":
        raise ValueError("not a LightGBM text model (first line must be 'tree')")
    start = pos + 1
    while pos < len(lines) and not lines[pos].startswith("Tree=") and lines[pos] != "end of trees":
        pos += 1
    header = _key_values([ln for ln in lines[start:pos] if ln], "header")
    try:
        num_class = int(header.get("num_class", "1"))
        per_iter = int(header.get("num_tree_per_iteration", "1"))
        max_feature_idx = int(header["max_feature_idx"])
    except (KeyError, ValueError):
        raise ValueError("header: missing or invalid num_class / num_tree_per_iteration / "
                         "max_feature_idx") from None
    if num_class != 1 or per_iter != 1:
        raise ValueError(f"multi-output models are not supported (num_class={num_class}, "
                         f"num_tree_per_iteration={per_iter})")
    if not 0 <= max_feature_idx < _INT32_MAX:
        raise ValueError(f"header: invalid max_feature_idx={max_feature_idx}")
    trees: list[_Tree] = []
    while True:
        if pos >= len(lines):
            raise ValueError("truncated model: no 'end of trees' line")
        if lines[pos] == "end of trees":
            break
        if not lines[pos].startswith("Tree="):
            raise ValueError(f"expected 'Tree=' or 'end of trees', found {lines[pos][:60]!r}")
        if lines[pos] != f"Tree={len(trees)}":
            raise ValueError(f"trees out of order: {lines[pos][:60]!r}, expected Tree={len(trees)}")
        end = pos + 1
        while end < len(lines) and lines[end] and not lines[end].startswith("Tree=") \
                and lines[end] != "end of trees":
            end += 1
        kv = _key_values(lines[pos + 1:end], lines[pos])
        trees.append(_Tree(kv, len(trees), max_feature_idx))
        pos = end
        while pos < len(lines) and not lines[pos]:
            pos += 1
    return header, trees


def _floor_to_float32(thr: NDArray[np.float64]) -> NDArray[np.float32]:
    """Largest float32 <= thr (so that float32 x <= result  <=>  double(x) <= thr); NaN stays NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        f = thr.astype(np.float32)
        above = f.astype(np.float64) > thr
    f[above] = np.nextafter(f[above], np.float32(-np.inf))
    return f


# A row that is not on a leaf after the first stage costs about this many steps to gather and
# restart, and two stages are used only where they save this share of the steps (bench/ranker.py).
_STAGE_RESTART_STEPS = 3.0
_STAGE_MIN_SAVING = 0.2


def _first_stage(t: _Tree) -> int:
    """Steps of the keyed walk's first stage for tree t: the k minimising the expected steps per row
    ``k + P(leaf depth > k) * (depth - k + restart)``, the leaves weighted by their training rows;
    the tree's depth (one stage) unless that saves at least _STAGE_MIN_SAVING."""
    D = t.depth
    if D < 2 or t.leaf_count.sum() <= 0:
        return D
    w = np.bincount(t.leaf_depth, weights=t.leaf_count, minlength=D + 1)
    beyond = 1.0 - np.cumsum(w) / w.sum()                   # P(leaf depth > k), k = 0..D
    k = np.arange(D + 1)
    cost = k + beyond * (D - k + _STAGE_RESTART_STEPS)
    best = int(np.argmin(cost))
    return best if cost[best] <= (1.0 - _STAGE_MIN_SAVING) * D else D


def _flatten(header: dict[str, str], trees: list[_Tree]) -> ForestKernel:
    n_features = int(header["max_feature_idx"]) + 1
    used = sorted({f for t in trees for f in t.feature})
    slot_of = {f: i for i, f in enumerate(used)}
    total = sum(2 * t.num_leaves - 1 for t in trees)
    if total > _INT32_MAX:
        raise ValueError("model too large")
    thr = np.zeros(total, np.float64)
    slot = np.zeros(total, np.int32)
    left = np.zeros(total, np.int32)
    right = np.zeros(total, np.int32)
    flags = np.zeros(total, np.uint8)
    value = np.zeros(total, np.float64)
    cat_off = np.zeros(total, np.int32)
    cat_len = np.zeros(total, np.int32)
    cat_bits: list[int] = []
    T = len(trees)
    tree = np.zeros((T, 5), np.int32)  # root, min_depth, depth, first_leaf, kind
    base = 0
    for k, t in enumerate(trees):
        n, L = t.num_leaves - 1, t.num_leaves
        tree[k, :4] = base, t.min_depth, t.depth, base + n
        leaves = np.arange(base + n, base + n + L, dtype=np.int32)
        left[base + n:base + n + L] = leaves     # a leaf is its own child
        right[base + n:base + n + L] = leaves
        value[base + n:base + n + L] = t.leaf_value
        if n:
            sl = slice(base, base + n)
            lc, rc = np.asarray(t.left, np.int64), np.asarray(t.right, np.int64)
            left[sl] = np.where(lc >= 0, base + lc, base + n + ~lc)
            right[sl] = np.where(rc >= 0, base + rc, base + n + ~rc)
            slot[sl] = [slot_of[f] for f in t.feature]
            thr[sl] = t.threshold
            dt = np.asarray(t.dtype, np.int64)
            is_cat = (dt & 1) == 1
            default_left = ((dt >> 1) & 1) == 1
            missing = (dt >> 2) & 3
            zero_goes_left = t.threshold >= 0.0          # what the plain compare does with 0
            nan_left = np.where((missing == 1) | (missing == 2), default_left, zero_goes_left)
            zero_left = np.where(missing == 1, default_left, zero_goes_left)
            fl = (np.where(nan_left, _F_NAN_LEFT, 0) | np.where(zero_left != zero_goes_left,
                                                                _F_ZERO_FLIP, 0))
            fl = np.where(is_cat, _F_CAT, fl)
            flags[sl] = fl
            if is_cat.any():
                cb = t.cat_boundaries
                for i in np.flatnonzero(is_cat):
                    c = int(t.threshold[i])
                    cat_off[base + i] = len(cat_bits) + cb[c]
                    cat_len[base + i] = cb[c + 1] - cb[c]
                cat_bits.extend(t.cat_threshold)
                tree[k, 4] = _T_CAT
            elif (fl & _F_ZERO_FLIP).any():
                tree[k, 4] = _T_ZERO
        base += 2 * t.num_leaves - 1
    if len(cat_bits) > _INT32_MAX:
        raise ValueError("model too large")
    stage = np.array([_first_stage(t) for t in trees], dtype=np.int32)
    return ForestKernel(_floor_to_float32(thr), slot, left, right, flags, value, cat_off, cat_len,
                        np.asarray(cat_bits, dtype=np.uint32), tree,
                        np.asarray(used, dtype=np.int32), n_features, stage)


class Forest:
    """A LightGBM single-output model flattened for fast raw-score inference.

    Build with :meth:`from_model_string` or :meth:`from_booster`; score with :meth:`predict`.
    Instances are immutable; ``predict`` releases the GIL and is safe to call from several threads.
    """

    __slots__ = ("_kernel", "_num_trees")

    def __init__(self, kernel: ForestKernel, num_trees: int) -> None:
        self._kernel = kernel
        self._num_trees = num_trees

    @classmethod
    def from_model_string(cls, text: str) -> Forest:
        """Parse LightGBM's text model format. Raises ValueError on anything malformed or unsupported."""
        header, trees = _parse(text)
        return cls(_flatten(header, trees), len(trees))

    @classmethod
    def from_booster(cls, booster: Any) -> Forest:
        """From a ``lightgbm.Booster`` (via its text dump, the same trees ``Booster.predict`` uses)."""
        return cls.from_model_string(booster.model_to_string())

    @property
    def num_features(self) -> int:
        """Number of columns ``predict`` expects (max_feature_idx + 1)."""
        return int(self._kernel.n_features)

    @property
    def num_trees(self) -> int:
        return self._num_trees

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """Raw scores float64[n] of the rows of X (n x num_features), = Booster.predict(raw_score=True).

        X is read as float32 (converted to a C-contiguous float32 copy if it is not one already; a
        float64 input is rounded to float32 first, as the server's feature matrices are float32).
        """
        return self._predict(X, 0)

    def _predict(self, X: ArrayLike, strategy: int) -> NDArray[np.float64]:
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise ValueError(f"X must be 2-D (rows x features), got shape {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"X must be numeric, got dtype {arr.dtype}")
        if arr.shape[1] != self.num_features:
            raise ValueError(f"X has {arr.shape[1]} features, the model expects {self.num_features}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        out = np.empty(arr.shape[0], dtype=np.float64)
        self._kernel.predict(arr, out, strategy)
        return out

    def __repr__(self) -> str:
        return f"Forest(num_trees={self.num_trees}, num_features={self.num_features})"


def parsed_trees(model_text: str) -> list[_Tree]:
    """The trees of a LightGBM text model as :func:`forest_reference` walks them (parse once, walk often)."""
    return _parse(model_text)[1]


def forest_reference(model: str | list[_Tree], X: ArrayLike) -> NDArray[np.float64]:
    """The raw scores of :meth:`Forest.predict` in plain numpy, from the parsed text (not the kernel's
    flattened arrays): every row walks every tree by LightGBM's rules as the module docstring gives them,
    all rows one level at a time. ``model``: the model's text, or its :func:`parsed_trees` (a timing of the
    walk alone, as the kernel's :meth:`Forest.predict` is timed without its parse). The reference the
    kernel's tests and ``bench/ranker.py`` compare with."""
    trees = _parse(model)[1] if isinstance(model, str) else model
    x64 = np.asarray(X, np.float32).astype(np.float64)
    x64[np.abs(x64) <= float(np.float32(1e-35))] = 0.0     # kZeroThreshold, the float 1e-35; NaN kept
    n = x64.shape[0]
    total = np.zeros(n, np.float64)
    rows = np.arange(n)
    for t in trees:
        if t.num_leaves == 1:
            total += t.leaf_value[0]
            continue
        feat, thr, dt = np.asarray(t.feature), np.asarray(t.threshold), np.asarray(t.dtype)
        left, right = np.asarray(t.left), np.asarray(t.right)
        node = np.zeros(n, np.int64)
        while (active := node >= 0).any():
            r, nd = rows[active], node[active]
            v, d = x64[r, feat[nd]], dt[nd]
            nan, missing = np.isnan(v), (d >> 2) & 3
            v = np.where(nan & (missing != 2), 0.0, v)                    # NaN is 0 unless missing is NaN
            default = ((missing == 1) & (v == 0.0)) | ((missing == 2) & nan)
            go_left = np.where(default, (d & 2) != 0, v <= thr[nd])
            cat = (d & 1) != 0
            if cat.any():
                raw = x64[r[cat], feat[nd[cat]]]
                go_left[cat] = [_in_bitset(t, int(thr[c]), val) for c, val in zip(nd[cat], raw)]
            node[active] = np.where(go_left, left[nd], right[nd])
        total += t.leaf_value[~node]
    return total


def _in_bitset(t: _Tree, index: int, value: float) -> bool:
    """LightGBM's categorical decision: the value truncated toward zero (``static_cast<int>``); NaN, a
    negative int and a value beyond int32 go right; others go left iff their bit is set in the bitset."""
    if not -1.0 < value < 2147483648.0:
        return False
    iv = int(value)
    words = t.cat_threshold[t.cat_boundaries[index]:t.cat_boundaries[index + 1]]
    return iv // 32 < len(words) and bool((words[iv // 32] >> (iv % 32)) & 1)
