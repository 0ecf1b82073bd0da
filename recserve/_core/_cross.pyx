# cython: language_level=3
"""Feature crossing: the ranker's float32 matrix, shared by the trainer and the server.

Row layout (F = U + I + C + 2*S + 4), named by ``recserve._core.cross.FeatureSchema``:
  user features (U) | item features (I: the table's columns in ``runs`` of consecutive columns, each
  (first, length), gathered) | context (C)
  | per source s: 1/(1+rank) (0 if absent), source score (0 if absent)
  | user.item dot | item price / user average spend (NaN when unknown) | user affinity for the item's
    category (NaN when unknown) | item age in days, at least 0 (NaN when unknown)
"""
from libc.math cimport isfinite, isinf, NAN
import numpy as np

from recserve._core._linalg cimport dot as dot_f32
from recserve._core._typedefs cimport float32_t, float64_t, row_t, index_t, RS_PREFETCH

# indices into the ``spec`` array
cdef enum:
    PRICE = 0
    SPEND = 1
    CAT = 2
    CAT_OFFSET = 3
    N_CAT = 4
    CREATED = 5
    N_SPEC = 6

SPEC_LEN = N_SPEC


cdef void cross_rows(const float32_t[::1] user, const float32_t[::1] uvec, const float32_t[:, ::1] items,
                     const float32_t[:, ::1] emb, const row_t[::1] rows, const float32_t[::1] ctx,
                     const row_t[:, ::1] rank, const float32_t[:, ::1] score, const index_t[::1] spec,
                     const index_t[:, ::1] runs, double now_days, float32_t[:, ::1] out) noexcept nogil:
    cdef Py_ssize_t n = rows.shape[0], U = user.shape[0], I = items.shape[1], C = ctx.shape[0]
    cdef Py_ssize_t R = runs.shape[0], q, length
    cdef const index_t* rp = &runs[0, 0] if R > 0 else NULL
    cdef const float32_t* src
    cdef Py_ssize_t S = rank.shape[1], d = uvec.shape[0], i, j, s, c
    cdef row_t r
    cdef double dot, v, spend
    cdef long cat
    cdef float32_t* o
    cdef const float32_t* it
    cdef const float32_t* e
    spend = user[spec[SPEND]] if spec[SPEND] >= 0 else 0.0
    # (no pointer into a table without columns: a zero-width row has no element 0)
    for i in range(min(n, 4)):
        if I > 0:
            RS_PREFETCH(&items[rows[i], 0])
        if d > 0:
            RS_PREFETCH(&emb[rows[i], 0])
    for i in range(n):
        if i + 4 < n:
            if I > 0:
                RS_PREFETCH(&items[rows[i + 4], 0])
            if d > 0:
                RS_PREFETCH(&emb[rows[i + 4], 0])
                RS_PREFETCH(&emb[rows[i + 4], 0] + 32)
        r = rows[i]
        o = &out[i, 0]
        it = &items[r, 0] if I > 0 else NULL
        for j in range(U):
            o[j] = user[j]
        c = U
        for q in range(R):             # the item columns in runs of consecutive ones: plain copies
            src, length = it + rp[2 * q], rp[2 * q + 1]
            for j in range(length):
                o[c + j] = src[j]
            c += length
        for j in range(C):
            o[c + j] = ctx[j]
        c += C
        for s in range(S):
            o[c] = 1.0 / (1.0 + rank[i, s]) if rank[i, s] >= 0 else 0.0
            o[c + 1] = score[i, s] if rank[i, s] >= 0 else 0.0
            c += 2
        dot = dot_f32(&uvec[0], &emb[r, 0], d) if d > 0 else 0.0
        o[c] = <float32_t>dot
        if spec[PRICE] >= 0 and spec[SPEND] >= 0 and spend > 0:
            o[c + 1] = <float32_t>(it[spec[PRICE]] / spend)
        else:
            o[c + 1] = NAN
        o[c + 2] = NAN
        if spec[CAT] >= 0 and spec[CAT_OFFSET] >= 0:
            v = it[spec[CAT]]
            if v >= 0 and v < spec[N_CAT]:
                cat = <long>v
                o[c + 2] = user[spec[CAT_OFFSET] + cat]
        if spec[CREATED] >= 0 and isfinite(now_days):
            v = now_days - it[spec[CREATED]]
            o[c + 3] = <float32_t>(0.0 if v < 0 else v)         # NaN (an unknown creation) stays NaN
        else:
            o[c + 3] = NAN


cdef int check_finite(const float32_t[::1] x, str name, bint allow_nan=False) except -1:
    """Every value finite; with ``allow_nan`` NaN passes (a missing value: the ranker sends it down its
    missing branch), infinities still do not."""
    cdef Py_ssize_t j
    for j in range(x.shape[0]):
        if not allow_nan and not isfinite(x[j]):
            raise ValueError(f"{name}[{j}] is not finite")
        if isinf(x[j]):
            raise ValueError(f"{name}[{j}] is infinite")
    return 0


def cross(const float32_t[::1] user, const float32_t[::1] uvec, const float32_t[:, ::1] items,
          const float32_t[:, ::1] emb, const row_t[::1] rows, const float32_t[::1] ctx,
          const row_t[:, ::1] rank, const float32_t[:, ::1] score, const index_t[::1] spec,
          const index_t[:, ::1] runs, double now_days):
    """Build the float32 [n, F] feature matrix for one user's candidates (see the module docstring)."""
    cdef Py_ssize_t n = rows.shape[0], i, S = rank.shape[1]
    cdef Py_ssize_t NI = 0
    if runs.shape[1] != 2:
        raise ValueError("runs must have shape (R, 2): first item column, length")
    for i in range(runs.shape[0]):
        if runs[i, 0] < 0 or runs[i, 1] < 0 or runs[i, 0] + runs[i, 1] > items.shape[1]:
            raise ValueError(f"item column run {i} ({runs[i, 0]}, {runs[i, 1]}) is outside the item table")
        NI += runs[i, 1]
    cdef Py_ssize_t F = user.shape[0] + NI + ctx.shape[0] + 2 * S + 4
    if spec.shape[0] != SPEC_LEN:
        raise ValueError(f"spec must have {SPEC_LEN} entries")
    if items.shape[0] != emb.shape[0]:
        raise ValueError(f"item table has {items.shape[0]} rows, embeddings {emb.shape[0]}")
    if uvec.shape[0] != emb.shape[1]:
        raise ValueError(f"user vector has dimension {uvec.shape[0]}, item embeddings {emb.shape[1]}")
    if rank.shape[0] != n or score.shape[0] != n or score.shape[1] != S:
        raise ValueError("merge features must have one row per candidate and the same sources")
    for i in (PRICE, CAT, CREATED):
        if spec[i] >= items.shape[1]:
            raise ValueError(f"spec[{i}] = {spec[i]} is not an item column")
    if spec[SPEND] >= user.shape[0]:
        raise ValueError(f"spend column {spec[SPEND]} is not a user column")
    if spec[CAT_OFFSET] >= 0 and (spec[N_CAT] < 0 or spec[CAT_OFFSET] + spec[N_CAT] > user.shape[0]):
        raise ValueError("category shares do not fit in the user row")
    check_finite(user, "user_features", allow_nan=True)     # an empty cell of a users-file column is NaN
    check_finite(uvec, "user_vector")
    check_finite(ctx, "context", allow_nan=True)            # a context column the request did not give
    for i in range(n):
        if rows[i] < 0 or rows[i] >= items.shape[0]:
            raise ValueError(f"candidate row {rows[i]} is out of range [0, {items.shape[0]})")
    out = np.empty((n, F), np.float32)
    cdef float32_t[:, ::1] o = out
    with nogil:
        cross_rows(user, uvec, items, emb, rows, ctx, rank, score, spec, runs, now_days, o)
    return out
