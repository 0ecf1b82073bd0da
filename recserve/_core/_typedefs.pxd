# Shared C-level types of the core kernels.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t

ctypedef float float32_t
ctypedef double float64_t
ctypedef int32_t row_t       # a dense item / user row inside a bundle
ctypedef int64_t index_t

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define RS_PREFETCH(p) __builtin_prefetch((const void*)(p), 0, 1)
    #else
    #define RS_PREFETCH(p) ((void)0)
    #endif
    """
    # hint the CPU to start loading a row that a later iteration will read (random rows of big tables)
    void RS_PREFETCH(const void* p) noexcept nogil
