from recserve._core._typedefs cimport float32_t, float64_t, row_t, index_t

cdef int weighted_average(const float32_t[:, ::1] emb, const row_t* rows, Py_ssize_t L,
                          const float32_t* ev_w, const float32_t* ages, double decay_long,
                          double decay_short, double half_life, double* out) noexcept nogil
