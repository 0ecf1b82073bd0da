from recserve._core._typedefs cimport float32_t, float64_t, row_t, index_t
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

# Leaves are nodes too: both children point back to the leaf itself, so a walk that takes more
# steps than the path length stays on the leaf. Node positions are byte offsets (size * global
# index) and feature positions byte offsets into the transposed row block, so a step needs no
# index arithmetic.

# The default walk of rows without missing values (strategy 0) lives in C, in _forest_walk.h: the
# pair layout as struct-of-arrays with integer keys (see there).
cdef extern from "_forest_walk.h" nogil:
    int RS_LANES
    uint32_t rs_dkey(float32_t f)
    uint32_t rs_dkey_num(float32_t f)
    void rs_walk_keys(const uint32_t* ck, const uint64_t* meta, const float64_t* val, uint32_t root,
                      int32_t depth, const uint32_t* xk, Py_ssize_t nb, float64_t* acc)
    void rs_walk_keys_staged(const uint32_t* ck, const uint64_t* meta, const float64_t* val,
                             uint32_t root, int32_t k, int32_t depth, const uint32_t* xk,
                             Py_ssize_t nb, float64_t* acc, int32_t* rows, uint32_t* curs)

# Node of the float pair layout (strategy 1, the previous default, kept for comparison): the two
# children of a node are adjacent, so the next node is ``child + (not x <= thr)``. A leaf has
# thr = +inf and child = itself, so any non-NaN row stays on it. 16 bytes on 64-bit platforms.
cdef struct NodeP:
    float32_t thr       # largest float32 <= LightGBM's double threshold (+inf on a leaf)
    int32_t xoff        # byte offset of the feature's row in the transposed block (0 on a leaf)
    const NodeP* child  # left child; the right child is child + 1; a leaf points to itself

# Node for the missing-value / categorical steps: 32 bytes, everything on one cache line.
cdef struct NodeM:
    float32_t thr
    int32_t xoff
    int32_t child[2]    # byte offsets (32 * index)
    uint32_t flags      # F_* below
    int32_t cat_off     # categorical bitset: cat_bits[cat_off : cat_off + cat_len]
    int32_t cat_len
    int32_t pad

cdef struct Model:
    const NodeM* nodes_m
    const uint32_t* cat_bits

# Per-node flags
cdef enum:
    F_NAN_LEFT = 1      # NaN goes left (a plain compare sends NaN right)
    F_ZERO_FLIP = 2     # zero-as-missing: 0 goes the other way than 0 <= thr says
    F_CAT = 4           # categorical split

# Per-tree kinds
cdef enum:
    T_PLAIN = 0         # numerical only, no zero-as-missing flip
    T_ZERO = 1          # numerical, some zero-as-missing flip
    T_CAT = 2           # some categorical split

# Walk modes
cdef enum:
    M_MISSING = 1       # NaN / zero-as-missing corrections
    M_GENERAL = 2       # plus categorical bitsets

cdef enum:
    BLOCK = 64          # rows per block
    LANES = 8           # rows walked together, held in registers
    STRIDE = 72         # BLOCK + LANES: the block is stored transposed, xb[slot * STRIDE + row];
                        # lanes of a last group may read (and walk) up to LANES - 1 rows past nb
    TAIL = 3            # a last group of fewer rows than this is walked row by row
