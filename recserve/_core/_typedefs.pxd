# Shared C-level types of the core kernels.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t

ctypedef float float32_t
ctypedef double float64_t
ctypedef int32_t row_t       # a dense item / user row inside a bundle
ctypedef int64_t index_t
