# cython: language_level=3
"""User-embedding kernel: recency-weighted average of recent item embeddings."""
from libc.math cimport exp, sqrt, isfinite, pow
from libc.stdlib cimport malloc, free
import numpy as np

from recserve._core._typedefs cimport float32_t, float64_t, row_t, index_t, RS_PREFETCH


cdef int weighted_average(const float32_t[:, ::1] emb, const row_t* rows, Py_ssize_t L,
                          const float32_t* ev_w, const float32_t* ages, double decay_long,
                          double decay_short, double half_life, double* out) noexcept nogil:
    """Both averages in one pass over the history (``ev_w`` / ``ages`` may be NULL).

    out[0:d] = sum_t wl_t emb[rows[t]], out[d:2d] = sum_t ws_t emb[rows[t]], each weight vector
    normalised to sum 1. Returns 0 if both weight vectors sum to 0.
    """
    cdef Py_ssize_t d = emb.shape[1], t, j
    cdef double wl, ws, base, total_l = 0.0, total_s = 0.0
    cdef const float32_t* e
    cdef double* out_s = out + d
    for j in range(2 * d):
        out[j] = 0.0
    if d == 0:                              # no dimensions: nothing to average (and no row to point at)
        return 0
    for t in range(min(L, 4)):
        RS_PREFETCH(&emb[rows[t], 0])
    for t in range(L):
        if t + 4 < L:
            RS_PREFETCH(&emb[rows[t + 4], 0])
            RS_PREFETCH(&emb[rows[t + 4], 0] + 32)
        base = 1.0
        if ev_w != NULL:
            base *= ev_w[t]
        if ages != NULL and half_life > 0:
            base *= pow(0.5, ages[t] / half_life)
        if base <= 0:
            continue
        wl = base * exp(decay_long * <double>(t - (L - 1)))
        ws = base * exp(decay_short * <double>(t - (L - 1)))
        total_l += wl
        total_s += ws
        e = &emb[rows[t], 0]
        for j in range(d):
            out[j] += wl * e[j]
            out_s[j] += ws * e[j]
    # a weight vector summing to 0 (all event weights 0, or exp underflow) gives a zero average
    for j in range(d):
        out[j] = out[j] / total_l if total_l > 0 else 0.0
        out_s[j] = out_s[j] / total_s if total_s > 0 else 0.0
    return 1 if (total_l > 0 or total_s > 0) else 0


cdef inline void mix_normalise(const double* a_long, const double* a_short, double alpha,
                               Py_ssize_t d, float32_t* out) noexcept nogil:
    cdef Py_ssize_t j
    cdef double v, norm = 0.0
    for j in range(d):
        v = alpha * a_long[j] + (1.0 - alpha) * a_short[j]
        norm += v * v
    norm = sqrt(norm)
    for j in range(d):
        out[j] = <float32_t>((alpha * a_long[j] + (1.0 - alpha) * a_short[j]) / norm) if norm > 0 else 0.0


cdef int check_rows(const row_t[::1] rows, Py_ssize_t n) except -1:
    cdef Py_ssize_t t
    for t in range(rows.shape[0]):
        if rows[t] < 0 or rows[t] >= n:
            raise ValueError(f"history row {rows[t]} at position {t} is out of range [0, {n})")
    return 0


cdef int check_finite(const float32_t[::1] x, str name) except -1:
    cdef Py_ssize_t t
    for t in range(x.shape[0]):
        if not isfinite(x[t]):
            raise ValueError(f"{name}[{t}] is not finite")
        if x[t] < 0:
            raise ValueError(f"{name}[{t}] is negative")
    return 0


cdef int check_rows_finite(const float32_t[:, ::1] emb, const row_t[::1] rows) except -1:
    cdef Py_ssize_t t, j, d = emb.shape[1]
    cdef bint bad = False
    with nogil:
        for t in range(rows.shape[0]):
            for j in range(d):
                if not isfinite(emb[rows[t], j]):
                    bad = True
                    break
            if bad:
                break
    if bad:
        raise ValueError(f"item embedding row {rows[t]} contains NaN or inf")
    return 0


def user_vector(const float32_t[:, ::1] emb, const row_t[::1] rows, ev_w, ages,
                double decay_short, double decay_long, double alpha, double half_life):
    """Single user: normalise(alpha * avg(decay_long) + (1 - alpha) * avg(decay_short)) as float32[d].

    ``ev_w`` and ``ages`` are float32[L] or None. An empty history or zero-norm result gives zeros.
    """
    cdef Py_ssize_t d = emb.shape[1], L = rows.shape[0]
    cdef const float32_t[::1] w_view = ev_w if ev_w is not None else np.empty(0, np.float32)
    cdef const float32_t[::1] a_view = ages if ages is not None else np.empty(0, np.float32)
    cdef bint has_w = ev_w is not None, has_a = ages is not None
    if has_w and w_view.shape[0] != L:
        raise ValueError(f"event weights have length {w_view.shape[0]}, history has {L}")
    if has_a and a_view.shape[0] != L:
        raise ValueError(f"event ages have length {a_view.shape[0]}, history has {L}")
    check_rows(rows, emb.shape[0])
    if has_w:
        check_finite(w_view, "event_weights")
    if has_a:
        check_finite(a_view, "event_ages")
    out = np.zeros(d, dtype=np.float32)
    cdef float32_t[::1] o = out
    cdef bint finite = True
    cdef Py_ssize_t j
    cdef const float32_t* wp
    cdef const float32_t* ap
    cdef double* buf = <double*>malloc((2 * d + 1) * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            if L > 0 and d > 0:
                wp = &w_view[0] if has_w else NULL
                ap = &a_view[0] if has_a else NULL
                weighted_average(emb, &rows[0], L, wp, ap, decay_long, decay_short, half_life, buf)
                # a NaN / inf in any used embedding row propagates into the sums: check them, not the rows
                for j in range(2 * d):
                    if not isfinite(buf[j]):
                        finite = False
                if finite:
                    mix_normalise(buf, buf + d, alpha, d, &o[0])
    finally:
        free(buf)
    if not finite:
        raise ValueError("the history's item embeddings contain NaN or inf")
    return out


def user_vectors_csr(const float32_t[:, ::1] emb, const index_t[::1] indptr, const row_t[::1] rows,
                     ev_w, ages, double decay_short, double decay_long, double alpha,
                     double half_life):
    """Batch form: user u's history is rows[indptr[u]:indptr[u+1]] (oldest first). Returns float32[U, d]."""
    cdef Py_ssize_t U = indptr.shape[0] - 1, d = emb.shape[1], u, s, e
    cdef const float32_t[::1] w_view = ev_w if ev_w is not None else np.empty(0, np.float32)
    cdef const float32_t[::1] a_view = ages if ages is not None else np.empty(0, np.float32)
    cdef bint has_w = ev_w is not None, has_a = ages is not None
    if U < 0:
        raise ValueError("indptr must have at least one entry")
    if indptr[0] != 0 or indptr[U] != rows.shape[0]:
        raise ValueError("indptr must start at 0 and end at len(rows)")
    for u in range(U):
        if indptr[u + 1] < indptr[u]:
            raise ValueError(f"indptr decreases at user {u}")
    if has_w and w_view.shape[0] != rows.shape[0]:
        raise ValueError("event weights must have the same length as rows")
    if has_a and a_view.shape[0] != rows.shape[0]:
        raise ValueError("event ages must have the same length as rows")
    check_rows(rows, emb.shape[0])
    if has_w:
        check_finite(w_view, "event_weights")
    if has_a:
        check_finite(a_view, "event_ages")
    check_rows_finite(emb, rows)
    out = np.zeros((U, d), dtype=np.float32)
    cdef float32_t[:, ::1] o = out
    cdef const float32_t* wp
    cdef const float32_t* ap
    cdef double* buf = <double*>malloc((2 * d + 1) * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            for u in range(U):
                s = indptr[u]
                e = indptr[u + 1]
                if e == s or d == 0:
                    continue
                wp = &w_view[s] if has_w else NULL
                ap = &a_view[s] if has_a else NULL
                weighted_average(emb, &rows[s], e - s, wp, ap, decay_long, decay_short, half_life, buf)
                mix_normalise(buf, buf + d, alpha, d, &o[u, 0])
    finally:
        free(buf)
    return out
