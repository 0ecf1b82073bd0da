# cython: language_level=3
"""MMR re-ranking with creator rules, O(k * n * d) by incremental max-similarity."""
from libc.math cimport sqrt, isfinite, INFINITY
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t, uint8_t, uint64_t
import numpy as np

from scipy.linalg.cython_blas cimport sgemv

from recserve._core._linalg cimport dot
from recserve._core._typedefs cimport float32_t, row_t, index_t, RS_PREFETCH


cdef void dense_codes(const int64_t[::1] raw, row_t* code, int64_t* keys, row_t* vals,
                      int log2_cap) noexcept nogil:
    """code[i] = a dense code in 0..m-1 of creator id raw[i] (first seen, first numbered), -1 for a negative
    (unknown) id: an open-addressing hash table of 2**log2_cap >= 2n slots, keys -1 when empty."""
    cdef Py_ssize_t i, h, n = raw.shape[0], mask = (<Py_ssize_t>1 << log2_cap) - 1
    cdef row_t m = 0
    for i in range(mask + 1):
        keys[i] = -1
    for i in range(n):
        if raw[i] < 0:
            code[i] = -1
            continue
        # Fibonacci hashing: the top bits of id * 2^64 / phi
        h = <Py_ssize_t>((<uint64_t>raw[i] * <uint64_t>0x9E3779B97F4A7C15) >> (64 - log2_cap))
        while keys[h] != -1 and keys[h] != raw[i]:
            h = (h + 1) & mask
        if keys[h] == -1:
            keys[h] = raw[i]
            vals[h] = m
            m += 1
        code[i] = vals[h]


cdef Py_ssize_t mmr_select(const float32_t[::1] rel, const float32_t[:, ::1] emb, const row_t[::1] rows,
                           Py_ssize_t k, double lam, const row_t* creators, bint has_creators,
                           Py_ssize_t max_per_creator, bint no_adjacent,
                           row_t[::1] out_idx, float32_t[::1] out_pen,
                           float32_t* C, float32_t* sims, double* max_sim, uint8_t* used,
                           row_t* creator_count) noexcept nogil:
    cdef Py_ssize_t n = rel.shape[0], i, j, t, best, best_any, chosen = 0
    cdef int d = <int>emb.shape[1], n_int = <int>rel.shape[0], one = 1
    cdef float32_t f_one = 1.0, f_zero = 0.0
    cdef double v, obj, best_obj, best_any_obj
    cdef row_t last_creator = -1, c
    cdef char trans = b'T'
    # gather the candidates' unit vectors into one contiguous block: C[i] = emb[rows[i]] / |emb[rows[i]]|
    for i in range(n):
        if i + 4 < n:
            RS_PREFETCH(&emb[rows[i + 4], 0])
            RS_PREFETCH(&emb[rows[i + 4], 0] + 32)
        v = dot(&emb[rows[i], 0], &emb[rows[i], 0], d) if d > 0 else 0.0
        v = 1.0 / sqrt(v) if v > 0 else 0.0
        for j in range(d):
            C[i * d + j] = <float32_t>(emb[rows[i], j] * v)
        max_sim[i] = -INFINITY
        used[i] = 0
        if has_creators:
            creator_count[i] = 0
    for t in range(k):
        best = -1
        best_any = -1
        best_obj = -INFINITY
        best_any_obj = -INFINITY
        for i in range(n):
            if used[i]:
                continue
            if has_creators and creators[i] >= 0 and max_per_creator > 0 and creator_count[creators[i]] >= max_per_creator:
                continue
            obj = lam * rel[i]
            if t > 0 and lam < 1.0:
                obj -= (1.0 - lam) * max_sim[i]
            if obj > best_any_obj:
                best_any_obj = obj
                best_any = i
            if no_adjacent and has_creators and creators[i] >= 0 and creators[i] == last_creator:
                continue
            if obj > best_obj:
                best_obj = obj
                best = i
        if best < 0:
            best = best_any          # only same-creator items remain: relax adjacency rather than stop short
        if best < 0:
            break
        used[best] = 1
        out_idx[chosen] = <row_t>best
        out_pen[chosen] = <float32_t>(max_sim[best] if t > 0 else 0.0)
        chosen += 1
        if has_creators:
            c = creators[best]
            last_creator = c
            if c >= 0:
                creator_count[c] += 1
        if lam >= 1.0 or t == k - 1 or d == 0:
            continue
        # incremental update: one matrix-vector product (BLAS sgemv) gives every similarity to the new pick
        sgemv(&trans, &d, &n_int, &f_one, C, &d, &C[best * d], &one, &f_zero, sims, &one)
        for i in range(n):
            if not used[i] and sims[i] > max_sim[i]:
                max_sim[i] = sims[i]
    return chosen


def mmr(const float32_t[::1] rel, const float32_t[:, ::1] emb, const row_t[::1] rows, Py_ssize_t k,
        double lam, creators, Py_ssize_t max_per_creator, bint no_adjacent):
    """Select up to k candidate positions; returns (positions int32[m], max-sim penalty float32[m]).

    ``creators``: int64[n] creator ids (negative = unknown) or None; re-coded densely inside the kernel."""
    cdef Py_ssize_t n = rel.shape[0], i
    if rows.shape[0] != n:
        raise ValueError(f"{n} relevance scores but {rows.shape[0]} rows")
    if k < 0:
        raise ValueError("k must be >= 0")
    if not (0.0 <= lam <= 1.0):
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    for i in range(n):
        if not isfinite(rel[i]):
            raise ValueError(f"relevance[{i}] is not finite")
        if rows[i] < 0 or rows[i] >= emb.shape[0]:
            raise ValueError(f"candidate row {rows[i]} is out of range [0, {emb.shape[0]})")
    cdef bint has_creators = creators is not None
    cdef const int64_t[::1] cr = creators if has_creators else np.empty(0, np.int64)
    if has_creators and cr.shape[0] != n:
        raise ValueError(f"{n} candidates but {cr.shape[0]} creators")
    k = min(k, n)
    out_idx = np.empty(k, np.int32)
    out_pen = np.empty(k, np.float32)
    cdef row_t[::1] oi = out_idx
    cdef float32_t[::1] op = out_pen
    cdef Py_ssize_t d = emb.shape[1]
    cdef int log2_cap = 1
    while (<Py_ssize_t>1 << log2_cap) < 2 * n:
        log2_cap += 1
    cdef Py_ssize_t cap = (<Py_ssize_t>1 << log2_cap) if has_creators else 0
    cdef float32_t* C = <float32_t*>malloc((n * d + 1) * sizeof(float32_t))
    cdef float32_t* sims = <float32_t*>malloc((n + 1) * sizeof(float32_t))
    cdef double* max_sim = <double*>malloc((n + 1) * sizeof(double))
    cdef uint8_t* used = <uint8_t*>malloc(n + 1)
    cdef row_t* count = <row_t*>malloc((n + 1) * sizeof(row_t))
    cdef row_t* code = <row_t*>malloc((n + 1) * sizeof(row_t))
    cdef int64_t* keys = <int64_t*>malloc((cap + 1) * sizeof(int64_t))
    cdef row_t* vals = <row_t*>malloc((cap + 1) * sizeof(row_t))
    cdef Py_ssize_t m = 0
    if C == NULL or sims == NULL or max_sim == NULL or used == NULL or count == NULL or code == NULL \
            or keys == NULL or vals == NULL:
        free(C); free(sims); free(max_sim); free(used); free(count); free(code); free(keys); free(vals)
        raise MemoryError()
    try:
        with nogil:
            if has_creators:
                dense_codes(cr, code, keys, vals, log2_cap)
            m = mmr_select(rel, emb, rows, k, lam, code, has_creators, max_per_creator, no_adjacent,
                           oi, op, C, sims, max_sim, used, count)
    finally:
        free(C); free(sims); free(max_sim); free(used); free(count); free(code); free(keys); free(vals)
    return out_idx[:m], out_pen[:m]
