from recserve._core._typedefs cimport float32_t, float64_t, row_t, index_t

cdef int weighted_average(const float32_t[:, ::1] emb, const row_t[::1] rows,
                          const float32_t[::1] ev_w, const float32_t[::1] ages,
                          bint has_w, bint has_ages, double decay, double half_life,
                          double* out) noexcept nogil
