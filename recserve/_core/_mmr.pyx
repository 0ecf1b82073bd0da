# cython: language_level=3
"""MMR re-ranking with creator rules: lazy greedy over a heap of objective bounds (see ``mmr_select``)."""
from libc.math cimport sqrt, isfinite, INFINITY
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t, uint8_t, uint64_t
import numpy as np

from recserve._core._heap cimport Scored, sift_down, sift_up
from recserve._core._linalg cimport dot, sdot
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


cdef inline bint capped(Py_ssize_t i, const row_t* creators, bint has_creators, Py_ssize_t max_per_creator,
                        const row_t* creator_count) noexcept nogil:
    return has_creators and creators[i] >= 0 and max_per_creator > 0 \
        and creator_count[creators[i]] >= max_per_creator


cdef Py_ssize_t scan_pick(Py_ssize_t t, const float32_t[::1] rel, double lam, const row_t* creators,
                          bint has_creators, Py_ssize_t max_per_creator, bint no_adjacent, row_t last_creator,
                          const double* max_sim, const uint8_t* used, const row_t* creator_count) noexcept nogil:
    """The pick of step ``t`` by scanning every candidate (-1 when none is left): the best objective, the
    first of equals; not by ``last_creator`` unless only its items remain."""
    cdef Py_ssize_t n = rel.shape[0], i, best = -1, best_any = -1
    cdef double obj, best_obj = -INFINITY, best_any_obj = -INFINITY
    for i in range(n):
        if used[i] or capped(i, creators, has_creators, max_per_creator, creator_count):
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
    return best if best >= 0 else best_any


cdef Py_ssize_t mmr_select(const float32_t[::1] rel, const float32_t[:, ::1] emb, const row_t[::1] rows,
                           Py_ssize_t k, double lam, const row_t* creators, bint has_creators,
                           Py_ssize_t max_per_creator, bint no_adjacent, const float32_t* prior_sim,
                           row_t last_creator, row_t[::1] out_idx, float32_t[::1] out_pen,
                           float32_t* C, double* max_sim, uint8_t* used, row_t* creator_count,
                           Scored* heap, Scored* held, row_t* seen) noexcept nogil:
    """Greedy MMR. The first pick scans every candidate; so does every pick when no similarity enters the
    objective (``lam`` = 1, or no dimensions). Otherwise every candidate's similarity to the first pick is
    computed, and later picks are *lazy*: a candidate's max-similarity only grows as picks are added, so
    its objective only falls, and the value last computed bounds it. The candidates sit in a heap by that
    bound; the top one is brought up to date (its similarity to the picks made since) and, if it stays on
    top, it is the best: the same pick as a scan of every candidate, at a fraction of the similarities.

    ``prior_sim`` (or NULL): each candidate's max similarity to picks made before this call (which then
    continues that greedy: its first pick has a penalty too); ``last_creator``: the code of the creator of
    the pick before it (-1: none)."""
    cdef Py_ssize_t n = rel.shape[0], i, j, t, s, best, best_any, hn, n_held, chosen = 0
    cdef int d = <int>emb.shape[1]
    cdef double v
    cdef row_t c
    cdef bint prior = prior_sim != NULL
    cdef float32_t* ci
    cdef const float32_t* er
    cdef double vd
    cdef Scored top
    # gather the candidates' unit vectors into one contiguous block: C[i] = emb[rows[i]] / |emb[rows[i]]|
    # (the norm in double: a float32 sum of squares overflows above |e| ~ 1.8e19 and underflows below ~1e-23)
    for i in range(n):
        if i + 4 < n and d > 0:
            RS_PREFETCH(&emb[rows[i + 4], 0])
            RS_PREFETCH(&emb[rows[i + 4], 0] + 32)
        er = &emb[rows[i], 0] if d > 0 else NULL
        ci = &C[i * d]
        v = dot(er, er, d) if d > 0 else 0.0
        vd = 1.0 / sqrt(v) if v > 0 else 0.0
        for j in range(d):
            ci[j] = <float32_t>(er[j] * vd)
        if prior:
            max_sim[i] = prior_sim[i]
        else:                                   # no dimensions: every similarity is 0, as in the reference
            max_sim[i] = -INFINITY if d > 0 else 0.0
        used[i] = 0
        if has_creators:
            creator_count[i] = 0
    cdef bint lazy = lam < 1.0 and d > 0 and k > 1
    hn = 0
    for t in range(k):
        if t == 0 or not lazy:
            best = scan_pick(t + prior, rel, lam, creators, has_creators, max_per_creator, no_adjacent,
                             last_creator, max_sim, used, creator_count)
        else:
            best = -1
            best_any = -1
            n_held = 0
            while hn > 0:
                i = heap[0].row
                if capped(i, creators, has_creators, max_per_creator, creator_count):
                    hn -= 1                         # its creator is full for good: out of the heap
                    heap[0] = heap[hn]
                    sift_down(heap, hn, 0, True)
                    continue
                if seen[i] < t:                     # bring it up to date and put it back by its objective
                    ci = &C[i * d]
                    for s in range(seen[i], t):
                        v = sdot(ci, &C[out_idx[s] * d], d)
                        if v > max_sim[i]:
                            max_sim[i] = v
                    seen[i] = <row_t>t
                    heap[0].score = lam * rel[i] - (1.0 - lam) * max_sim[i]
                    sift_down(heap, hn, 0, True)
                    continue
                # up to date and on top: the best objective of the candidates left
                if best_any < 0:
                    best_any = i
                top = heap[0]
                hn -= 1
                heap[0] = heap[hn]
                sift_down(heap, hn, 0, True)
                if no_adjacent and has_creators and creators[i] >= 0 and creators[i] == last_creator:
                    held[n_held] = top              # set aside for this pick, back in the heap after it
                    n_held += 1
                    continue
                best = i
                break
            if best < 0:
                best = best_any                     # only the last creator's items remain
            for j in range(n_held):
                if held[j].row != best:
                    heap[hn] = held[j]
                    sift_up(heap, hn, True)
                    hn += 1
        if best < 0:
            break
        used[best] = 1
        out_idx[chosen] = <row_t>best
        # no similarity enters the objective at the first pick or with lam = 1: no penalty
        out_pen[chosen] = <float32_t>(max_sim[best] if (t > 0 or prior) and lam < 1.0 else 0.0)
        chosen += 1
        if has_creators:
            c = creators[best]
            last_creator = c
            if c >= 0:
                creator_count[c] += 1
        if prior and d == 0 and chosen == 1:
            for i in range(n):                  # no dimensions: a similarity to this call's picks is 0
                if max_sim[i] < 0.0:
                    max_sim[i] = 0.0
        if t == 0 and lazy:
            # every candidate's similarity to the first pick, then the heap of their objectives
            ci = &C[best * d]
            for i in range(n):
                if used[i]:
                    continue
                v = sdot(&C[i * d], ci, d)
                if v > max_sim[i]:
                    max_sim[i] = v
                seen[i] = 1
                heap[hn].score = lam * rel[i] - (1.0 - lam) * max_sim[i]
                heap[hn].row = <row_t>i
                hn += 1
            for j in range(hn // 2 - 1, -1, -1):
                sift_down(heap, hn, j, True)
    return chosen


def mmr(const float32_t[::1] rel, const float32_t[:, ::1] emb, const row_t[::1] rows, Py_ssize_t k,
        double lam, creators, Py_ssize_t max_per_creator, bint no_adjacent, prior_sim=None,
        int64_t after_creator=-1):
    """Select up to k candidate positions; returns (positions int32[m], max-sim penalty float32[m]: each
    pick's max similarity to the picks before it, 0 for the first and when ``lam`` = 1).

    ``creators``: int64[n] creator ids (negative = unknown) or None; re-coded densely inside the kernel.
    ``prior_sim``: float32[n], each candidate's max cosine similarity to picks made before (continue their
    greedy), or None; ``after_creator``: the creator id of the pick before (negative: none or unknown)."""
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
    cdef bint has_prior = prior_sim is not None
    cdef const float32_t[::1] ps = prior_sim if has_prior else np.zeros(1, np.float32)
    if has_prior and ps.shape[0] != n:
        raise ValueError(f"{n} candidates but {ps.shape[0]} prior similarities")
    for i in range(ps.shape[0] if has_prior else 0):
        if not isfinite(ps[i]):
            raise ValueError(f"prior_sim[{i}] is not finite")
    cdef row_t last = -1
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
    cdef Scored* heap = <Scored*>malloc((n + 1) * sizeof(Scored))
    cdef Scored* held = <Scored*>malloc((n + 1) * sizeof(Scored))
    cdef row_t* seen = <row_t*>malloc((n + 1) * sizeof(row_t))
    cdef double* max_sim = <double*>malloc((n + 1) * sizeof(double))
    cdef uint8_t* used = <uint8_t*>malloc(n + 1)
    cdef row_t* count = <row_t*>malloc((n + 1) * sizeof(row_t))
    cdef row_t* code = <row_t*>malloc((n + 1) * sizeof(row_t))
    cdef int64_t* keys = <int64_t*>malloc((cap + 1) * sizeof(int64_t))
    cdef row_t* vals = <row_t*>malloc((cap + 1) * sizeof(row_t))
    cdef Py_ssize_t m = 0
    if C == NULL or heap == NULL or held == NULL or seen == NULL or max_sim == NULL or used == NULL \
            or count == NULL or code == NULL or keys == NULL or vals == NULL:
        free(C); free(heap); free(held); free(seen); free(max_sim); free(used); free(count); free(code)
        free(keys); free(vals)
        raise MemoryError()
    try:
        with nogil:
            if has_creators:
                dense_codes(cr, code, keys, vals, log2_cap)
                if after_creator >= 0:
                    for i in range(n):
                        if cr[i] == after_creator:
                            last = code[i]
                            break
            m = mmr_select(rel, emb, rows, k, lam, code, has_creators, max_per_creator, no_adjacent,
                           &ps[0] if has_prior and n > 0 else NULL, last, oi, op, C, max_sim, used, count, heap, held,
                           seen)
    finally:
        free(C); free(heap); free(held); free(seen); free(max_sim); free(used); free(count); free(code)
        free(keys); free(vals)
    return out_idx[:m], out_pen[:m]
