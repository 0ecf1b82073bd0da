# Binary heaps of scored rows, shared by the kernels: the best k so far (the worst on top, to be replaced)
# and the best first (to be taken). One order everywhere: the higher score, then the lower row.
from recserve._core._typedefs cimport float64_t, row_t


cdef struct Scored:
    float64_t score
    row_t row


cdef inline bint better(Scored a, Scored b) noexcept nogil:
    """The higher score first, then the lower row."""
    return a.score > b.score or (a.score == b.score and a.row < b.row)


cdef inline bint above(Scored a, Scored b, bint best_on_top) noexcept nogil:
    """Whether ``a`` sits above ``b`` in a heap with the best (or the worst) entry on top."""
    return better(a, b) if best_on_top else better(b, a)


cdef inline void sift_down(Scored* h, Py_ssize_t n, Py_ssize_t j, bint best_on_top) noexcept nogil:
    """Restore the heap of ``n`` entries below position ``j``."""
    cdef Py_ssize_t c
    cdef Scored e = h[j]
    while True:
        c = 2 * j + 1
        if c >= n:
            break
        if c + 1 < n and above(h[c + 1], h[c], best_on_top):
            c += 1
        if not above(h[c], e, best_on_top):
            break
        h[j] = h[c]
        j = c
    h[j] = e


cdef inline void sift_up(Scored* h, Py_ssize_t j, bint best_on_top) noexcept nogil:
    """Restore the heap above position ``j`` (an entry just placed there)."""
    cdef Scored e = h[j]
    while j > 0 and above(e, h[(j - 1) // 2], best_on_top):
        h[j] = h[(j - 1) // 2]
        j = (j - 1) // 2
    h[j] = e
