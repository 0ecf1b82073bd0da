# cython: language_level=3
"""A user's history as the candidate sources read it, and seen items dropped from a ranked list."""
from libc.stdlib cimport malloc, free, qsort
import numpy as np

from recserve._core._typedefs cimport float32_t, float64_t, row_t


cdef struct Visit:
    row_t row
    Py_ssize_t pos


cdef int by_row_then_newest(const void* a, const void* b) noexcept nogil:
    cdef const Visit* x = <const Visit*>a
    cdef const Visit* y = <const Visit*>b
    if x.row != y.row:
        return -1 if x.row < y.row else 1
    return -1 if x.pos > y.pos else (1 if x.pos < y.pos else 0)


cdef Py_ssize_t seeds_nogil(const row_t[::1] hist, const float64_t[::1] ts, Py_ssize_t n_recent,
                            Py_ssize_t n_session, float64_t gap, Visit* visits, char* newest, row_t* seen,
                            row_t* recent, row_t* session, Py_ssize_t* counts) noexcept nogil:
    """Fills seen (sorted unique), recent (newest first, distinct, at most n_recent) and session (the same
    over the events after the last gap above ``gap``, at most n_session); counts = their lengths."""
    cdef Py_ssize_t L = hist.shape[0], i, j, n_seen = 0, n_rec = 0, n_ses = 0, start = 0
    cdef row_t r
    cdef bint dup
    for i in range(L):
        visits[i].row = hist[i]
        visits[i].pos = i
        newest[i] = 0
    qsort(visits, L, sizeof(Visit), by_row_then_newest)
    for i in range(L):
        if i == 0 or visits[i].row != visits[i - 1].row:
            seen[n_seen] = visits[i].row
            n_seen += 1
            newest[visits[i].pos] = 1          # the newest visit of this row
    i = L - 1
    while i >= 0 and n_rec < n_recent:
        if newest[i]:
            recent[n_rec] = hist[i]
            n_rec += 1
        i -= 1
    for i in range(L - 1, 0, -1):
        if ts[i] - ts[i - 1] > gap:
            start = i
            break
    i = L - 1
    while i >= start and n_ses < n_session:
        r = hist[i]
        dup = False
        for j in range(n_ses):
            if session[j] == r:
                dup = True
                break
        if not dup:
            session[n_ses] = r
            n_ses += 1
        i -= 1
    counts[0] = n_seen
    counts[1] = n_rec
    counts[2] = n_ses
    return 0


def history_seeds(const row_t[::1] hist, const float64_t[::1] ts, Py_ssize_t n_recent, Py_ssize_t n_session,
                  float64_t gap):
    """(seen sorted unique, recent seeds, session seeds) as int32 arrays; the wrapper checks the inputs."""
    cdef Py_ssize_t L = hist.shape[0]
    seen = np.empty(L, np.int32)
    recent = np.empty(min(L, max(n_recent, 0)), np.int32)
    session = np.empty(min(L, max(n_session, 0)), np.int32)
    cdef row_t[::1] s = seen
    cdef row_t[::1] rc = recent
    cdef row_t[::1] ss = session
    cdef Py_ssize_t counts[3]
    cdef Visit* visits = <Visit*>malloc(max(L, 1) * sizeof(Visit))
    cdef char* newest = <char*>malloc(max(L, 1))
    if visits == NULL or newest == NULL:
        free(visits)
        free(newest)
        raise MemoryError()
    counts[0] = counts[1] = counts[2] = 0
    try:
        if L:
            with nogil:
                seeds_nogil(hist, ts, rc.shape[0], ss.shape[0], gap, visits, newest, &s[0],
                            &rc[0] if rc.shape[0] else NULL, &ss[0] if ss.shape[0] else NULL, counts)
    finally:
        free(visits)
        free(newest)
    return seen[:counts[0]], recent[:counts[1]], session[:counts[2]]


def drop_seen(const row_t[::1] rows, const float32_t[::1] scores, const row_t[::1] seen):
    """(rows, scores) without negative rows and rows in ``seen`` (sorted, unique), order kept."""
    cdef Py_ssize_t n = rows.shape[0], m = seen.shape[0], i, lo, hi, mid, k = 0
    out_r = np.empty(n, np.int32)
    out_s = np.empty(n, np.float32)
    cdef row_t[::1] orr = out_r
    cdef float32_t[::1] oss = out_s
    cdef row_t r
    with nogil:
        for i in range(n):
            r = rows[i]
            if r < 0:
                continue
            lo = 0
            hi = m
            while lo < hi:
                mid = (lo + hi) >> 1
                if seen[mid] < r:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < m and seen[lo] == r:
                continue
            orr[k] = r
            oss[k] = scores[i]
            k += 1
    return out_r[:k], out_s[:k]
