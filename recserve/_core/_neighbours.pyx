# cython: language_level=3
"""Item-to-item candidates: neighbours of seed items, scored by the weighted sum of their i2i scores."""
from libc.math cimport isfinite
from libc.stdlib cimport malloc, free
from libc.stdint cimport uint32_t
import numpy as np

from recserve._core._heap cimport Scored, better, sift_down
from recserve._core._typedefs cimport float32_t, float64_t, index_t, row_t


cdef Py_ssize_t accumulate(const index_t[::1] seeds, const float32_t[::1] weights, const row_t[:, ::1] nb_rows,
                           const float32_t[:, ::1] nb_scores, row_t* keys, float64_t* sums, row_t* order,
                           Py_ssize_t mask) noexcept nogil:
    """Sum ``weight * score`` per neighbour row in input order (seed by seed); returns the distinct count, or
    ``-1 - (i * M + j)`` at the first score (seed ``i``, entry ``j``) that is not finite."""
    cdef Py_ssize_t i, j, h, u = 0, M = nb_rows.shape[1]
    cdef row_t r
    cdef float32_t w, p
    for i in range(seeds.shape[0]):
        w = weights[i]
        for j in range(M):
            r = nb_rows[seeds[i], j]
            if r < 0:
                continue
            if not isfinite(nb_scores[seeds[i], j]):
                return -1 - (i * M + j)
            p = nb_scores[seeds[i], j] * w          # float32 product, as the reference computes it
            h = (<uint32_t>r * 2654435761u) & mask
            while keys[h] != -1 and keys[h] != r:
                h = (h + 1) & mask
            if keys[h] == -1:
                keys[h] = r
                sums[h] = 0.0
                order[u] = <row_t>h
                u += 1
            sums[h] += <float64_t>p
    return u


cdef Py_ssize_t top_k(row_t* keys, float64_t* sums, row_t* order, Py_ssize_t u, Py_ssize_t k,
                      Scored* heap, row_t[::1] out_rows, float32_t[::1] out_scores) noexcept nogil:
    """The best ``k`` of the ``u`` accumulated entries, best first, through a size-k heap (the worst on top)."""
    cdef Py_ssize_t i, j, n = 0
    cdef Scored e
    for i in range(u):
        e.row = keys[order[i]]
        e.score = sums[order[i]]
        if n < k:
            heap[n] = e
            n += 1
            if n == k:
                for j in range(k // 2 - 1, -1, -1):
                    sift_down(heap, k, j, False)
        elif better(e, heap[0]):
            heap[0] = e
            sift_down(heap, k, 0, False)
    if n < k:
        for j in range(n // 2 - 1, -1, -1):
            sift_down(heap, n, j, False)
    cdef Py_ssize_t m = n
    while n > 0:                        # pop the worst first, filling the output from the back
        out_rows[n - 1] = heap[0].row
        out_scores[n - 1] = <float32_t>heap[0].score
        n -= 1
        heap[0] = heap[n]
        sift_down(heap, n, 0, False)
    return m


def neighbour_sum(const index_t[::1] seeds, const float32_t[::1] weights, const row_t[:, ::1] nb_rows,
                  const float32_t[:, ::1] nb_scores, Py_ssize_t k):
    """(int32 rows, float32 scores) of the best ``k`` neighbours; inputs are checked by the caller, but for the
    scores of the seeds' lists, which are checked as they are read (ValueError if one is not finite)."""
    cdef Py_ssize_t n_in = seeds.shape[0] * nb_rows.shape[1], size = 16, u = 0, m = 0, i, M = nb_rows.shape[1]
    while size < 2 * n_in:
        size *= 2
    cdef row_t* keys = <row_t*>malloc(size * sizeof(row_t))
    cdef float64_t* sums = <float64_t*>malloc(size * sizeof(float64_t))
    cdef row_t* order = <row_t*>malloc((n_in + 1) * sizeof(row_t))
    cdef Scored* heap = <Scored*>malloc((k + 1) * sizeof(Scored))
    if keys == NULL or sums == NULL or order == NULL or heap == NULL:
        free(keys); free(sums); free(order); free(heap)
        raise MemoryError()
    rows_np = np.empty(min(k, n_in), np.int32)
    scores_np = np.empty(min(k, n_in), np.float32)
    cdef row_t[::1] out_rows = rows_np
    cdef float32_t[::1] out_scores = scores_np
    try:
        with nogil:
            for i in range(size):
                keys[i] = -1
            u = accumulate(seeds, weights, nb_rows, nb_scores, keys, sums, order, size - 1)
            if u >= 0:
                m = top_k(keys, sums, order, u, k, heap, out_rows, out_scores)
    finally:
        free(keys); free(sums); free(order); free(heap)
    if u < 0:
        i = -1 - u
        raise ValueError(f"i2i score {i % M} of row {seeds[i // M]} is not finite (NaN or inf)")
    return rows_np[:m], scores_np[:m]
