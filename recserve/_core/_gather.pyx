# cython: language_level=3
"""Row gathers from (memory-mapped) float32 tables."""
from libc.string cimport memcpy
import numpy as np

from recserve._core._typedefs cimport float32_t, row_t, RS_PREFETCH


cdef void gather_rows(const float32_t[:, ::1] table, const row_t[::1] rows, float32_t[:, ::1] out) noexcept nogil:
    cdef Py_ssize_t i, w = table.shape[1]
    if w == 0:
        return
    cdef Py_ssize_t n = rows.shape[0], ahead = 8
    for i in range(min(ahead, n)):
        RS_PREFETCH(&table[rows[i], 0])
    for i in range(n):
        if i + ahead < n:
            RS_PREFETCH(&table[rows[i + ahead], 0])
        memcpy(&out[i, 0], &table[rows[i], 0], w * sizeof(float32_t))


def gather(const float32_t[:, ::1] table, const row_t[::1] rows):
    """table[rows] as a new float32 [len(rows), width] array; rows are range-checked first."""
    cdef Py_ssize_t i, n = table.shape[0]
    for i in range(rows.shape[0]):
        if rows[i] < 0 or rows[i] >= n:
            raise ValueError(f"row {rows[i]} is out of range [0, {n})")
    out = np.empty((rows.shape[0], table.shape[1]), np.float32)
    cdef float32_t[:, ::1] o = out
    with nogil:
        gather_rows(table, rows, o)
    return out
