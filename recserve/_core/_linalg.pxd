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


cdef inline float32_t sdot(const float32_t* a, const float32_t* b, Py_ssize_t n) noexcept nogil:
    """float32 dot product over 8 independent partial sums, which the compiler turns into vector
    instructions without reordering any sum (no -ffast-math); for similarities between unit vectors,
    where float32 accumulation is accurate enough."""
    cdef float32_t s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0, s5 = 0.0, s6 = 0.0, s7 = 0.0
    cdef Py_ssize_t j = 0
    while j + 8 <= n:
        s0 += a[j] * b[j]
        s1 += a[j + 1] * b[j + 1]
        s2 += a[j + 2] * b[j + 2]
        s3 += a[j + 3] * b[j + 3]
        s4 += a[j + 4] * b[j + 4]
        s5 += a[j + 5] * b[j + 5]
        s6 += a[j + 6] * b[j + 6]
        s7 += a[j + 7] * b[j + 7]
        j += 8
    s0 = ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))
    while j < n:
        s0 += a[j] * b[j]
        j += 1
    return s0
