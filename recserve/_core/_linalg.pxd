# Small inline vector helpers shared by the kernels.
from recserve._core._typedefs cimport float32_t


cdef inline double dot(const float32_t* a, const float32_t* b, Py_ssize_t n) noexcept nogil:
    """Dot product accumulated in double over 4 independent partial sums (no serial add chain)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef Py_ssize_t j = 0
    while j + 4 <= n:
        s0 += <double>a[j] * b[j]
        s1 += <double>a[j + 1] * b[j + 1]
        s2 += <double>a[j + 2] * b[j + 2]
        s3 += <double>a[j + 3] * b[j + 3]
        j += 4
    while j < n:
        s0 += <double>a[j] * b[j]
        j += 1
    return (s0 + s1) + (s2 + s3)
