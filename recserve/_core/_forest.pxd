from recserve._core._typedefs cimport float32_t, float64_t, row_t, index_t
from libc.stdint cimport int32_t, uint8_t, uint32_t

# One node of the flattened forest, 16 bytes (four per cache line).
# Leaves are nodes too: both children point back to the leaf itself, so a walk of fixed length
# ``depth(tree)`` ends on the leaf whatever the path length.
cdef struct Node:
    float32_t thr       # largest float32 <= LightGBM's double threshold: x <= thr  <=>  (double)x <= thr64
    int32_t slot        # column of the compacted row block (index into the used-feature list)
    int32_t child[2]    # global node index: child[0] = left, child[1] = right

# Per-node flags (separate array, read only by the slow kernels)
cdef enum:
    F_NAN_LEFT = 1      # NaN goes left (plain compare sends NaN right)
    F_ZERO_FLIP = 2     # zero-as-missing: exact 0 goes the other way than 0 <= thr says
    F_CAT = 4           # categorical split; cat_off/cat_len give its bitset

# Per-tree kinds
cdef enum:
    T_PLAIN = 0         # numerical only, no zero-as-missing flips
    T_ZERO = 1          # numerical, has zero-as-missing flips
    T_CAT = 2           # has a categorical split
