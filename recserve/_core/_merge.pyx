# cython: language_level=3
"""Candidate merging: several ranked source lists -> one de-duplicated, filtered, capped list."""
from libc.math cimport isfinite
from libc.stdlib cimport malloc, free
from libc.stdint cimport uint8_t, uint32_t
import numpy as np

from recserve._core._typedefs cimport float32_t, row_t, index_t


cdef inline bint is_excluded(const uint8_t[::1] bits, bint has_bits, row_t r) noexcept nogil:
    if not has_bits:
        return False
    return (bits[r >> 3] >> (r & 7)) & 1


cdef inline Py_ssize_t slot_of(row_t* keys, Py_ssize_t mask, row_t r) noexcept nogil:
    """Open addressing: the slot holding r, or the empty slot where it goes."""
    cdef Py_ssize_t h = (<uint32_t>r * 2654435761u) & mask
    while keys[h] != -1 and keys[h] != r:
        h = (h + 1) & mask
    return h


cdef Py_ssize_t merge_lists(const row_t[::1] rows, const float32_t[::1] scores, const index_t[::1] offsets,
                            const index_t[::1] quotas, Py_ssize_t cap, const uint8_t[::1] bits, bint has_bits,
                            row_t* keys, row_t* vals, Py_ssize_t mask, Py_ssize_t* taken, Py_ssize_t* pos,
                            row_t[::1] out_rows, uint32_t[::1] out_src, row_t[:, ::1] out_rank,
                            float32_t[:, ::1] out_score) noexcept nogil:
    """Round-robin over sources by rank; each source yields at most quota[s] non-excluded distinct items."""
    cdef Py_ssize_t S = offsets.shape[0] - 1, s, i, h, m = 0, idx
    cdef row_t r
    cdef bint progress = True
    for s in range(S):
        taken[s] = 0
        pos[s] = offsets[s]
    while progress:
        progress = False
        for s in range(S):
            # advance source s to its next usable entry
            while pos[s] < offsets[s + 1] and taken[s] < quotas[s]:
                i = pos[s]
                pos[s] += 1
                r = rows[i]
                if is_excluded(bits, has_bits, r):
                    continue
                h = slot_of(keys, mask, r)
                if keys[h] == r:
                    idx = vals[h]
                    if out_rank[idx, s] >= 0:
                        continue            # duplicate within the same source list
                    out_src[idx] |= (1u << s)
                    out_rank[idx, s] = <row_t>(i - offsets[s])
                    out_score[idx, s] = scores[i]
                    taken[s] += 1
                    progress = True
                    break
                if m >= cap:
                    continue                # the cap is full: only known items can still gain features
                keys[h] = r
                vals[h] = <row_t>m
                out_rows[m] = r
                out_src[m] = (1u << s)
                out_rank[m, s] = <row_t>(i - offsets[s])
                out_score[m, s] = scores[i]
                m += 1
                taken[s] += 1
                progress = True
                break
    return m


def merge(const row_t[::1] rows, const float32_t[::1] scores, const index_t[::1] offsets,
          const index_t[::1] quotas, Py_ssize_t cap, Py_ssize_t n_items, excluded):
    """Concatenated lists (source s = rows[offsets[s]:offsets[s+1]], best first) -> merged candidates.

    Returns (rows int32[m], sources uint32[m] bitmask, rank int32[m, S] (-1 absent), score float32[m, S]).
    """
    cdef Py_ssize_t S = offsets.shape[0] - 1, n = rows.shape[0], i, size, m
    if S < 1 or S > 32:
        raise ValueError(f"between 1 and 32 sources are supported, got {S}")
    if quotas.shape[0] != S:
        raise ValueError(f"{S} sources but {quotas.shape[0]} quotas")
    if scores.shape[0] != n:
        raise ValueError("scores and rows differ in length")
    if offsets[0] != 0 or offsets[S] != n:
        raise ValueError("offsets must start at 0 and end at len(rows)")
    for i in range(S):
        if offsets[i + 1] < offsets[i]:
            raise ValueError(f"offsets decrease at source {i}")
        if quotas[i] < 0:
            raise ValueError(f"quota of source {i} is negative")
    if cap < 0:
        raise ValueError("cap must be >= 0")
    for i in range(n):
        if rows[i] < 0 or rows[i] >= n_items:
            raise ValueError(f"candidate row {rows[i]} is out of range [0, {n_items})")
        if not isfinite(scores[i]):
            raise ValueError(f"candidate score at position {i} is not finite")
    cdef bint has_bits = excluded is not None
    cdef const uint8_t[::1] bits = excluded if has_bits else np.zeros(1, np.uint8)
    if has_bits and bits.shape[0] * 8 < n_items:
        raise ValueError(f"exclusion bitset has {bits.shape[0]} bytes, needs {(n_items + 7) // 8}")
    m = min(cap, n)
    out_rows = np.empty(m, np.int32)
    out_src = np.zeros(m, np.uint32)
    out_rank = np.full((m, S), -1, np.int32)
    out_score = np.zeros((m, S), np.float32)
    cdef row_t[::1] o_rows = out_rows
    cdef uint32_t[::1] o_src = out_src
    cdef row_t[:, ::1] o_rank = out_rank
    cdef float32_t[:, ::1] o_score = out_score
    size = 16
    while size < 2 * n:
        size *= 2
    cdef row_t* keys = <row_t*>malloc(size * sizeof(row_t))
    cdef row_t* vals = <row_t*>malloc(size * sizeof(row_t))
    cdef Py_ssize_t* taken = <Py_ssize_t*>malloc(S * sizeof(Py_ssize_t))
    cdef Py_ssize_t* pos = <Py_ssize_t*>malloc(S * sizeof(Py_ssize_t))
    if keys == NULL or vals == NULL or taken == NULL or pos == NULL:
        free(keys); free(vals); free(taken); free(pos)
        raise MemoryError()
    try:
        with nogil:
            for i in range(size):
                keys[i] = -1
            m = merge_lists(rows, scores, offsets, quotas, cap, bits, has_bits, keys, vals, size - 1,
                            taken, pos, o_rows, o_src, o_rank, o_score)
    finally:
        free(keys); free(vals); free(taken); free(pos)
    return out_rows[:m], out_src[:m], out_rank[:m], out_score[:m]
