# cython: language_level=3
"""Forest kernel: raw scores of a flattened LightGBM model (numerical + categorical splits).

The Python layer (``recserve._core.forest``) parses and validates the model text and hands this
module a flat struct-of-arrays description. ``ForestKernel`` re-checks every index it will follow
(so a bug upstream cannot make the native loop read out of bounds), packs the nodes into C structs
and scores rows block by block:

* a block of up to ``BLOCK`` rows is gathered once into a compact, transposed float32 buffer that
  holds only the features the model uses, with LightGBM's input rule applied
  (|x| <= kZeroThreshold -> 0). "Clean" rows go first, then the rows with a NaN (or with a zero,
  if some tree has zero-as-missing splits);
* for each tree, in model order, the clean rows are walked ``LANES`` at a time on the keyed pair
  layout (``rs_walk_keys`` in ``_forest_walk.h``): nodes as struct-of-arrays whose two children are
  adjacent, thresholds and the block's values mapped to integer keys whose unsigned order reverses
  the float order, so a step is ``child + (key(x) < key(thr))`` -- an integer compare and an
  add-with-carry. The lanes take exactly ``depth(tree)`` steps with no branch at all (a leaf points
  to itself and no key goes right of it): checking for early leaves costs as much as the steps it
  saves. The leaf value is added to the row's sum straight from the pair-layout leaf. A tree whose
  deep leaves hold few rows (``stage[t]`` < its depth) is walked in two stages: ``stage[t]`` steps
  for every row, then only the rows not yet on a leaf, gathered, for the remaining steps;
* the other rows (with a NaN, or a zero under zero-as-missing) take the same keyed walk on key
  blocks of their own, one per *missing variant*: where a node sends NaN (left or right) and, under
  zero-as-missing, where it sends 0. In the block of a variant a NaN or a 0 has the key that makes
  the compare go that way (0xFFFFFFFF never goes right, 0 always does), every other value its own
  key; each node reads its feature from its variant's block (``pair_meta_m``). A model has at most
  6 variants, most 1 or 2;
* trees with a categorical split take a branch-free step on 32-byte nodes that carry the flags and
  the categorical bitset position (one cache line per visit), ``LANES`` rows at a time, stopping
  when all lanes sit on leaves;
* a last group of one or two rows is walked row by row, stopping at the leaf (cheaper than 8 lanes).

Scores are accumulated in double, tree by tree from 0.0, as LightGBM does, so the results are
bitwise equal to ``Booster.predict(raw_score=True)``.
"""
from libc.math cimport fabsf, INFINITY
from libc.stdlib cimport calloc, malloc, free
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

from recserve._core._typedefs cimport float32_t, float64_t, row_t, index_t

# LightGBM's kZeroThreshold is the float 1e-35f; |x| <= it is read as 0 when a row is loaded.
cdef float32_t KZERO = 1e-35


cdef inline int cat_right(float32_t x, const uint32_t* bits, int32_t nwords) noexcept nogil:
    """LightGBM CategoricalDecision: NaN, negative (after truncation) and unknown categories go right."""
    cdef int32_t c
    if not (x > -1.0 and x < 2147483648.0):   # NaN, <= -1 (int < 0), beyond int32: right
        return 1
    c = <int32_t>x                             # truncation toward zero, as static_cast<int>
    if (c >> 5) >= nwords:
        return 1
    return not ((bits[c >> 5] >> (c & 31)) & 1)


cdef inline int num_right(float32_t x, float32_t thr, uint8_t fl) noexcept nogil:
    """Numerical step with LightGBM's missing-value rules folded into two flag bits."""
    cdef int right = not (x <= thr)           # NaN -> right
    right ^= (x != x) & (fl & F_NAN_LEFT)
    right ^= (x == 0) & ((fl >> 1) & 1)
    return right


if RS_LANES != LANES:
    raise ImportError("_forest_walk.h and _forest.pxd disagree on the number of lanes")


cdef inline int32_t step(const Model* m, const char* col, int32_t off, int mode) noexcept nogil:
    """One level for one row: ``col`` points at the row's value of feature slot 0 in the block;
    ``off`` is the byte offset of the current node; returns the byte offset of the next one."""
    cdef const NodeM* nm
    cdef float32_t x
    nm = <const NodeM*>(<const char*>m.nodes_m + off)
    x = (<const float32_t*>(col + nm.xoff))[0]
    if mode == M_GENERAL and nm.flags & F_CAT:
        return nm.child[cat_right(x, m.cat_bits + nm.cat_off, nm.cat_len)]
    return nm.child[num_right(x, nm.thr, nm.flags)]


cdef void walk_pairs(const NodeP* pn, const float64_t* pval, int32_t root, int32_t depth,
                     const float32_t* xb, Py_ssize_t nb, float64_t* acc) noexcept nogil:
    """Adds each clean block row's leaf value (tree with root ``root``) to acc[row], rows [0, nb)."""
    cdef const NodeP* cur[LANES]
    cdef const NodeP* nd
    cdef Py_ssize_t g = 0, l
    cdef int32_t d
    cdef float32_t x
    cdef const char* p
    while g < nb:       # lanes past nb walk whatever rows are there (valid floats), not added
        p = <const char*>(xb + g)
        if nb - g < TAIL:
            for l in range(nb - g):
                nd = pn + root
                for d in range(depth):
                    if nd.child == nd:
                        break
                    x = (<const float32_t*>(p + 4 * l + nd.xoff))[0]
                    nd = nd.child + (not (x <= nd.thr))
                acc[g + l] += pval[nd - pn]
            return
        for l in range(LANES):
            cur[l] = pn + root
        for d in range(depth):
            for l in range(LANES):
                x = (<const float32_t*>(p + 4 * l + cur[l].xoff))[0]
                cur[l] = cur[l].child + (not (x <= cur[l].thr))
        if nb - g >= LANES:
            for l in range(LANES):
                acc[g + l] += pval[cur[l] - pn]
        else:
            for l in range(nb - g):
                acc[g + l] += pval[cur[l] - pn]
        g += LANES


cdef inline void walk_lanes(const Model* m, int32_t root, int32_t min_depth, int32_t depth,
                            int32_t first_leaf, const float32_t* xb, Py_ssize_t nb, int32_t* idx,
                            int mode) noexcept nogil:
    """Leaf (global node index) of each of the nb block rows, LANES rows at a time."""
    cdef int32_t cur[LANES]
    cdef int sh = 5         # log2 sizeof(NodeM)
    cdef int32_t root_off = root << sh, leaf_off = first_leaf << sh
    cdef Py_ssize_t g, l
    cdef int32_t d, i
    cdef int pending
    cdef const char* p
    g = 0
    while g < nb:          # lanes past nb walk whatever rows are there (valid floats), ignored
        p = <const char*>(xb + g)
        if nb - g < TAIL:  # a row or two: walking 8 lanes would cost 8 rows
            for l in range(nb - g):
                i = root_off
                d = 0
                while i < leaf_off and d < depth:
                    i = step(m, p + 4 * l, i, mode)
                    d += 1
                idx[g + l] = i >> sh
            return
        for l in range(LANES):
            cur[l] = root_off
        for d in range(min_depth):
            for l in range(LANES):
                cur[l] = step(m, p + 4 * l, cur[l], mode)
        d = min_depth
        while d < depth:
            pending = 0
            for l in range(LANES):
                pending |= cur[l] < leaf_off
            if not pending:
                break
            for l in range(LANES):
                cur[l] = step(m, p + 4 * l, cur[l], mode)
            d += 1
        for l in range(LANES):
            idx[g + l] = cur[l] >> sh
        g += LANES


cdef void walk_lanes_missing(const Model* m, int32_t root, int32_t min_depth, int32_t depth,
                             int32_t first_leaf, const float32_t* xb, Py_ssize_t nb,
                             int32_t* idx) noexcept nogil:
    walk_lanes(m, root, min_depth, depth, first_leaf, xb, nb, idx, M_MISSING)


cdef void walk_lanes_general(const Model* m, int32_t root, int32_t min_depth, int32_t depth,
                             int32_t first_leaf, const float32_t* xb, Py_ssize_t nb,
                             int32_t* idx) noexcept nogil:
    walk_lanes(m, root, min_depth, depth, first_leaf, xb, nb, idx, M_GENERAL)


cdef void walk_branchy(const Model* m, int32_t root, int32_t depth, int32_t first_leaf,
                       const float32_t* xb, Py_ssize_t nb, int32_t* idx) noexcept nogil:
    """Alternative: one row at a time, stopping at the leaf (what LightGBM does)."""
    cdef Py_ssize_t r
    cdef int32_t i, d, leaf_off = first_leaf << 5
    for r in range(nb):
        i = root << 5
        d = 0
        while i < leaf_off and d < depth:
            i = step(m, <const char*>(xb + r), i, M_GENERAL)
            d += 1
        idx[r] = i >> 5


cdef class ForestKernel:
    """Flattened forest; build it through ``recserve._core.forest.Forest``."""
    cdef Model m
    cdef uint32_t* pair_ck      # keyed pair layout (default walk): threshold keys by position
    cdef uint64_t* pair_meta    # and feature byte offset | left child position << 32
    cdef uint64_t* pair_meta_m  # the same, the feature in its missing variant's key block
    cdef uint32_t var_nan[6]    # per missing variant in use: the key of NaN
    cdef uint32_t var_zero[6]   # and of 0
    cdef int n_var
    cdef NodeP* pairs           # float pair layout (strategy 1)
    cdef float64_t* pair_value  # leaf value by pair-layout position (0 for internal nodes)
    cdef int32_t* pair_root     # per tree: position of its root in the pair layout
    cdef NodeM* nodes_m
    cdef float64_t* value
    cdef uint32_t* cat_bits
    cdef int32_t* tree      # per tree: root, min_depth, depth, first_leaf, kind
    cdef int32_t* used
    cdef int32_t* stage     # per tree: steps of the first stage of the keyed walk (= depth: one)
    cdef Py_ssize_t n_nodes, n_trees, n_used
    cdef bint zero_matters  # some tree has a zero-as-missing flip: rows with a 0 need the slow step
    cdef bint has_cat       # some tree has a categorical split: the float block is needed
    cdef readonly Py_ssize_t n_features

    def __cinit__(self):
        self.pair_ck = NULL
        self.pair_meta = NULL
        self.pair_meta_m = NULL
        self.pairs = NULL
        self.pair_value = NULL
        self.pair_root = NULL
        self.nodes_m = NULL
        self.value = NULL
        self.cat_bits = NULL
        self.tree = NULL
        self.used = NULL
        self.stage = NULL

    def __dealloc__(self):
        free(self.pair_ck)
        free(self.pair_meta)
        free(self.pair_meta_m)
        free(self.pairs)
        free(self.pair_value)
        free(self.pair_root)
        free(self.nodes_m)
        free(self.value)
        free(self.cat_bits)
        free(self.tree)
        free(self.used)
        free(self.stage)

    def __init__(self, const float32_t[::1] thr, const int32_t[::1] slot, const int32_t[::1] left,
                 const int32_t[::1] right, const uint8_t[::1] flags, const float64_t[::1] value,
                 const int32_t[::1] cat_off, const int32_t[::1] cat_len,
                 const uint32_t[::1] cat_bits, const int32_t[:, ::1] tree,
                 const int32_t[::1] used, Py_ssize_t n_features, const int32_t[::1] stage=None):
        """Node arrays have one entry per node (leaves included); ``tree`` is int32[T, 5] with
        columns root, min_depth (shallowest leaf), depth (deepest leaf), first_leaf, kind.
        ``stage`` (int32[T], optional) is a speed hint that never changes a score: the steps of the
        keyed walk's first stage per tree, in [0, depth]; depth (the default) walks in one stage."""
        cdef Py_ssize_t N = thr.shape[0], T = tree.shape[0], U = used.shape[0]
        cdef Py_ssize_t M = cat_bits.shape[0], i
        if self.nodes_m != NULL or self.pairs != NULL:
            raise RuntimeError("ForestKernel is already initialised")
        if (slot.shape[0] != N or left.shape[0] != N or right.shape[0] != N
                or flags.shape[0] != N or value.shape[0] != N or cat_off.shape[0] != N
                or cat_len.shape[0] != N):
            raise ValueError("node arrays must all have the same length")
        if tree.shape[1] != 5:
            raise ValueError("tree must have 5 columns")
        if N > 2**31 // sizeof(NodeM) - 1 or U > 2**31 // (6 * STRIDE * sizeof(float32_t)) - 1:
            raise ValueError("model too large")
        if n_features < 1:
            raise ValueError("n_features must be >= 1")
        if stage is not None and stage.shape[0] != T:
            raise ValueError("stage must have one entry per tree")
        for i in range(U):
            if used[i] < 0 or used[i] >= n_features:
                raise ValueError(f"used feature {used[i]} is out of range")
        for i in range(N):
            if left[i] < 0 or left[i] >= N or right[i] < 0 or right[i] >= N:
                raise ValueError(f"node {i} has a child out of range")
            if slot[i] < 0 or (slot[i] >= U and not (U == 0 and slot[i] == 0)):
                raise ValueError(f"node {i} reads a feature slot out of range")
            if flags[i] & F_CAT and (cat_off[i] < 0 or cat_len[i] < 0 or cat_off[i] > M
                                     or cat_len[i] > M - cat_off[i]):
                raise ValueError(f"node {i} has a categorical bitset out of range")
        for i in range(T):
            if (tree[i, 0] < 0 or tree[i, 0] >= N or tree[i, 1] < 0 or tree[i, 2] < tree[i, 1]
                    or tree[i, 3] < 0 or tree[i, 3] > N or tree[i, 4] < T_PLAIN or tree[i, 4] > T_CAT):
                raise ValueError(f"tree {i} is malformed")
            if tree[i, 2] > 0 and U == 0:
                raise ValueError(f"tree {i} splits but the model uses no feature")
            if stage is not None and not 0 <= stage[i] <= tree[i, 2]:
                raise ValueError(f"tree {i}: stage {stage[i]} outside [0, depth]")
        self.nodes_m = <NodeM*>malloc(max(N, 1) * sizeof(NodeM))
        self.value = <float64_t*>malloc(max(N, 1) * sizeof(float64_t))
        self.cat_bits = <uint32_t*>malloc(max(M, 1) * sizeof(uint32_t))
        self.tree = <int32_t*>malloc(max(T, 1) * 5 * sizeof(int32_t))
        self.used = <int32_t*>malloc(max(U, 1) * sizeof(int32_t))
        self.stage = <int32_t*>malloc(max(T, 1) * sizeof(int32_t))
        if (self.nodes_m == NULL or self.value == NULL
                or self.cat_bits == NULL or self.tree == NULL
                or self.used == NULL or self.stage == NULL):
            raise MemoryError()
        for i in range(N):
            self.nodes_m[i].thr = thr[i]
            self.nodes_m[i].xoff = <int32_t>(slot[i] * STRIDE * sizeof(float32_t))
            self.nodes_m[i].child[0] = <int32_t>(left[i] * sizeof(NodeM))
            self.nodes_m[i].child[1] = <int32_t>(right[i] * sizeof(NodeM))
            self.nodes_m[i].flags = flags[i]
            self.nodes_m[i].cat_off = cat_off[i]
            self.nodes_m[i].cat_len = cat_len[i]
            self.nodes_m[i].pad = 0
            self.value[i] = value[i]
        for i in range(M):
            self.cat_bits[i] = cat_bits[i]
        for i in range(T * 5):
            self.tree[i] = tree[i // 5, i % 5]
        for i in range(U):
            self.used[i] = used[i]
        for i in range(T):
            self.stage[i] = stage[i] if stage is not None else tree[i, 2]
        self.n_used = U
        self._build_pairs(thr, slot, left, right, flags, value, tree)
        self.m.nodes_m = self.nodes_m
        self.m.cat_bits = self.cat_bits
        self.n_nodes, self.n_trees, self.n_used = N, T, U
        self.zero_matters = False
        self.has_cat = False
        for i in range(T):
            self.zero_matters |= tree[i, 4] == T_ZERO
            self.has_cat |= tree[i, 4] == T_CAT
        self.n_features = n_features

    def _build_pairs(self, const float32_t[::1] thr, const int32_t[::1] slot,
                     const int32_t[::1] left, const int32_t[::1] right, const uint8_t[::1] flags,
                     const float64_t[::1] value, const int32_t[:, ::1] tree):
        """Lay every tree out breadth first with siblings adjacent: root, then the children pair of
        each internal node in visiting order. A node reached twice (or from two trees) is refused;
        unreachable nodes are dropped. Leaves are the nodes whose children are both themselves.
        Numerical nodes also get their missing variant: 3 * (NaN goes left) + (0 as compared, goes
        left, goes right under zero-as-missing)."""
        cdef Py_ssize_t N = thr.shape[0], T = tree.shape[0], t, i, a, k, nf = 0, qn
        cdef int32_t* pos = <int32_t*>malloc(max(N, 1) * sizeof(int32_t))
        cdef int32_t* queue = <int32_t*>malloc(max(N, 1) * sizeof(int32_t))
        cdef float32_t t0
        cdef int var, var_of[6]
        cdef uint32_t xoff
        self.pair_ck = <uint32_t*>malloc(max(N, 1) * sizeof(uint32_t))
        self.pair_meta = <uint64_t*>malloc(max(N, 1) * sizeof(uint64_t))
        self.pair_meta_m = <uint64_t*>malloc(max(N, 1) * sizeof(uint64_t))
        self.pairs = <NodeP*>malloc(max(N, 1) * sizeof(NodeP))
        self.pair_value = <float64_t*>malloc(max(N, 1) * sizeof(float64_t))
        self.pair_root = <int32_t*>malloc(max(T, 1) * sizeof(int32_t))
        if (pos == NULL or queue == NULL or self.pair_ck == NULL or self.pair_meta == NULL
                or self.pair_meta_m == NULL or self.pairs == NULL or self.pair_value == NULL or self.pair_root == NULL):
            free(pos)
            free(queue)
            raise MemoryError()
        try:
            self.n_var = 0
            for var in range(6):
                var_of[var] = -1
            for i in range(N):
                pos[i] = -1
            for t in range(T):
                a = tree[t, 0]
                if pos[a] >= 0:
                    raise ValueError(f"tree {t}: its root belongs to another tree")
                pos[a] = <int32_t>nf
                nf += 1
                queue[0] = <int32_t>a
                qn = 1
                k = 0
                while k < qn:
                    a = queue[k]
                    k += 1
                    if left[a] == a and right[a] == a:
                        continue
                    if pos[left[a]] >= 0 or pos[right[a]] >= 0 or left[a] == right[a]:
                        raise ValueError(f"tree {t}: node {a} has a child reached twice")
                    if nf + 2 > N or qn + 2 > N:
                        raise ValueError(f"tree {t} is malformed")
                    pos[left[a]] = <int32_t>nf
                    pos[right[a]] = <int32_t>(nf + 1)
                    nf += 2
                    queue[qn] = left[a]
                    queue[qn + 1] = right[a]
                    qn += 2
            for i in range(N):
                k = pos[i]
                if k < 0:
                    continue
                if left[i] == i and right[i] == i:
                    self.pairs[k].thr = INFINITY
                    self.pairs[k].xoff = 0
                    self.pairs[k].child = self.pairs + k
                    self.pair_ck[k] = 0                     # no key goes right: stay
                    self.pair_meta[k] = (<uint64_t>k) << 32
                    self.pair_meta_m[k] = self.pair_meta[k]
                    self.pair_value[k] = value[i]
                else:
                    self.pairs[k].thr = thr[i]
                    self.pairs[k].xoff = <int32_t>(slot[i] * STRIDE * sizeof(float32_t))
                    self.pairs[k].child = self.pairs + pos[left[i]]
                    t0 = thr[i] if thr[i] != 0 else 0       # -0 -> +0, as the block's values
                    self.pair_ck[k] = rs_dkey(t0)           # NaN threshold: every row goes right
                    self.pair_meta[k] = ((<uint64_t>pos[left[i]]) << 32) | <uint32_t>self.pairs[k].xoff
                    var = 3 * (flags[i] & F_NAN_LEFT)
                    if flags[i] & F_ZERO_FLIP:              # 0 goes opposite to 0 <= thr
                        var += 2 if thr[i] >= 0 else 1
                    if var_of[var] < 0:
                        var_of[var] = self.n_var
                        self.var_nan[self.n_var] = 0xFFFFFFFF if var >= 3 else 0
                        self.var_zero[self.n_var] = (rs_dkey(0) if var % 3 == 0 else
                                                     0xFFFFFFFF if var % 3 == 1 else 0)
                        self.n_var += 1
                    xoff = <uint32_t>((var_of[var] * self.n_used + slot[i])
                                      * STRIDE * sizeof(uint32_t))
                    self.pair_meta_m[k] = ((<uint64_t>pos[left[i]]) << 32) | xoff
                    self.pair_value[k] = 0.0
            for i in range(nf, N):      # unused tail: harmless self-loops
                self.pairs[i].thr = INFINITY
                self.pairs[i].xoff = 0
                self.pairs[i].child = self.pairs + i
                self.pair_ck[i] = 0
                self.pair_meta[i] = (<uint64_t>i) << 32
                self.pair_meta_m[i] = self.pair_meta[i]
                self.pair_value[i] = 0.0
            for t in range(T):
                self.pair_root[t] = pos[tree[t, 0]]
        finally:
            free(pos)
            free(queue)

    @property
    def num_trees(self):
        return self.n_trees

    def predict(self, const float32_t[:, ::1] X, float64_t[::1] out, int strategy=0):
        """Raw scores of the rows of X (float32[n, n_features]) into out (float64[n]).

        strategy: 0 = default: every numerical tree on the keyed pair layout (integer compares;
        rows with missing values on their variants' key blocks), in one or two stages; 1 = the
        previous default: clean rows on the float pair layout, rows with missing values on the
        32-byte-node step; 2 = one row at a time stopping at the leaf, as LightGBM walks. Trees
        with categorical splits take the 32-byte-node step under 0 and 1. All give identical results; 1 and 2 are kept for
        comparison (bench/ranker.py).
        """
        cdef Py_ssize_t n = X.shape[0]
        if X.shape[1] != self.n_features:
            raise ValueError(f"X has {X.shape[1]} features, the model expects {self.n_features}")
        if out.shape[0] != n:
            raise ValueError("out must have one entry per row of X")
        if strategy < 0 or strategy > 2:
            raise ValueError("strategy must be 0, 1 or 2")
        if n == 0:
            return
        cdef Py_ssize_t width = max(self.n_used, 1)
        cdef float32_t* xb = <float32_t*>malloc(STRIDE * width * sizeof(float32_t))
        cdef uint32_t* xk = <uint32_t*>malloc(STRIDE * width * sizeof(uint32_t))
        cdef uint32_t* xkm = <uint32_t*>calloc(STRIDE * width * max(self.n_var, 1), sizeof(uint32_t))
        cdef int32_t* idx = <int32_t*>malloc(STRIDE * sizeof(int32_t))
        cdef float64_t* acc = <float64_t*>malloc(STRIDE * sizeof(float64_t))
        cdef int32_t* perm = <int32_t*>malloc(STRIDE * sizeof(int32_t))
        cdef int32_t* rows = <int32_t*>malloc(STRIDE * sizeof(int32_t))
        cdef uint32_t* curs = <uint32_t*>malloc(STRIDE * sizeof(uint32_t))
        if (xb == NULL or xk == NULL or xkm == NULL or idx == NULL or acc == NULL or perm == NULL
                or rows == NULL or curs == NULL):
            free(xkm)
            free(rows)
            free(curs)
            free(xb)
            free(xk)
            free(idx)
            free(acc)
            free(perm)
            raise MemoryError()
        with nogil:
            self._predict(&X[0, 0], n, &out[0], xb, xk, xkm, idx, acc, perm, rows, curs, strategy)
        free(xkm)
        free(rows)
        free(curs)
        free(xb)
        free(xk)
        free(idx)
        free(acc)
        free(perm)

    cdef inline void _walk_keyed(self, Py_ssize_t t, const uint64_t* meta, const uint32_t* xk,
                                 Py_ssize_t nb, float64_t* acc, int32_t* rows,
                                 uint32_t* curs) noexcept nogil:
        """Tree t over nb block rows on the keyed pair layout, in two stages where it pays."""
        cdef int32_t depth = self.tree[5 * t + 2]
        if self.stage[t] < depth and nb >= LANES:
            rs_walk_keys_staged(self.pair_ck, meta, self.pair_value, <uint32_t>self.pair_root[t],
                                self.stage[t], depth, xk, nb, acc, rows, curs)
        else:
            rs_walk_keys(self.pair_ck, meta, self.pair_value, <uint32_t>self.pair_root[t], depth,
                         xk, nb, acc)

    cdef void _predict(self, const float32_t* X, Py_ssize_t n, float64_t* out, float32_t* xb,
                       uint32_t* xk, uint32_t* xkm, int32_t* idx, float64_t* acc,
                       int32_t* perm, int32_t* rows, uint32_t* curs, int strategy) noexcept nogil:
        """Block by block: gather the used features (clean rows first, then the rows with a NaN,
        or with a zero if some tree has zero-as-missing flips), walk every tree, sum in order."""
        cdef Py_ssize_t F = self.n_features, U = self.n_used
        cdef Py_ssize_t nb, r, j, t, pos, lo, hi, start = 0
        cdef int q
        cdef uint32_t key
        cdef float32_t v
        cdef bint dirty
        cdef const float32_t* row
        cdef const int32_t* tr
        cdef float64_t leaf
        cdef bint floats = strategy != 0 or self.has_cat   # the float block is read by the other walks
        for j in range(max(U, 1) * STRIDE):
            xb[j] = 0
            xk[j] = rs_dkey(0)
        while start < n:
            nb = min(<Py_ssize_t>BLOCK, n - start)
            lo = 0
            hi = nb
            for r in range(nb):
                row = X + (start + r) * F
                dirty = False
                for j in range(U):
                    v = row[self.used[j]]
                    if v != v or (self.zero_matters and fabsf(v) <= KZERO):
                        dirty = True
                        break
                if dirty:
                    hi -= 1
                    pos = hi
                else:
                    pos = lo
                    lo += 1
                perm[pos] = <int32_t>r
                for j in range(U):
                    v = row[self.used[j]]
                    v = 0 if fabsf(v) <= KZERO else v       # also -0 -> +0
                    key = rs_dkey_num(v)                    # a NaN's key is never read
                    if floats:
                        xb[j * STRIDE + pos] = v
                    xk[j * STRIDE + pos] = key
                    if dirty:
                        for q in range(self.n_var):
                            xkm[(q * U + j) * STRIDE + pos] = (
                                self.var_nan[q] if v != v else self.var_zero[q] if v == 0 else key)
                acc[pos] = 0.0
            for t in range(self.n_trees):
                tr = self.tree + 5 * t      # root, min_depth, depth, first_leaf, kind
                if tr[2] == 0:
                    leaf = self.value[tr[0]]
                    for r in range(nb):
                        acc[r] += leaf
                    continue
                if tr[4] == T_CAT:
                    if strategy == 2:
                        walk_branchy(&self.m, tr[0], tr[2], tr[3], xb, nb, idx)
                    else:
                        walk_lanes_general(&self.m, tr[0], tr[1], tr[2], tr[3], xb, nb, idx)
                    for r in range(nb):
                        acc[r] += self.value[idx[r]]
                    continue
                if strategy == 0:
                    if lo > 0:
                        self._walk_keyed(t, self.pair_meta, xk, lo, acc, rows, curs)
                    if lo < nb:
                        self._walk_keyed(t, self.pair_meta_m, xkm + lo, nb - lo, acc + lo, rows,
                                         curs)
                    continue
                if strategy == 1:   # missing-value rows first: their last group may write idx[nb:]
                    if lo < nb:
                        walk_lanes_missing(&self.m, tr[0], tr[1], tr[2], tr[3], xb + lo, nb - lo,
                                           idx + lo)
                        for r in range(lo, nb):
                            acc[r] += self.value[idx[r]]
                    if lo > 0:
                        walk_pairs(self.pairs, self.pair_value, self.pair_root[t], tr[2], xb, lo,
                                   acc)
                    continue
                walk_branchy(&self.m, tr[0], tr[2], tr[3], xb, nb, idx)
                for r in range(nb):
                    acc[r] += self.value[idx[r]]
            for r in range(nb):
                out[start + perm[r]] = acc[r]
            start += nb
