/* The forest kernel's default walk: rows without missing values on the keyed pair layout.
 *
 * Every float32 (feature value or threshold) is mapped to an unsigned "descending key" ``dkey``
 * whose unsigned order is the reverse of the float order (see rs_dkey), so LightGBM's numerical
 * decision ``right = !(x <= thr)`` becomes the integer compare ``dkey(x) < dkey(thr)``, which sets
 * the carry flag: the next node is ``child + carry`` (one cmp + adc on x86-64). Integer loads and
 * compares have a shorter latency than float ones, and the walk is bound by that latency chain
 * (node -> feature value -> compare -> next node), so this is worth about 1.5x over the float walk.
 *
 * Nodes are struct-of-arrays, indexed by their position in the pair layout (siblings adjacent):
 *   ck[i]   dkey of the threshold; 0 on a leaf (no row goes right of it), 0xFFFFFFFF for a NaN
 *           threshold (every row goes right, as x <= NaN is false);
 *   meta[i] low 32 bits: byte offset of the feature's row in the transposed key block
 *           (0 on a leaf); high 32 bits: position of the left child (a leaf: itself).
 * Rows are walked RS_LANES at a time for exactly ``depth`` steps, with no branch per step: a lane
 * that reached its leaf stays there. Every position was range-checked when the layout was built.
 */
#ifndef RECSERVE_FOREST_WALK_H
#define RECSERVE_FOREST_WALK_H

#include <stdint.h>
#include <string.h>

#define RS_LANES 8
#define RS_TAIL 3

#if defined(__GNUC__)
/* keep a pointer opaque so the compiler addresses every lane as p + xoff + 4 * l instead of
 * hoisting eight lane pointers (which spills registers) */
#define RS_OPAQUE(p) __asm__("" : "+r"(p))
#else
#define RS_OPAQUE(p) ((void)0)
#endif

/* Descending key of a float32 that is not NaN: larger float -> smaller key; -0 and +0 must have
 * been folded to +0 by the caller. */
static inline uint32_t rs_dkey(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    if (f != f)
        return 0xFFFFFFFFu;
    return (b >> 31) ? b : (b ^ 0x7FFFFFFFu);
}

/* rs_dkey for a value known not to be NaN, without a branch (the block gather's hot loop). */
static inline uint32_t rs_dkey_num(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b ^ ((uint32_t)~((int32_t)b >> 31) & 0x7FFFFFFFu);
}

/* child + (x < ck), as cmp + adc where the compiler is known to need the hint. */
static inline uint32_t rs_next(uint32_t child, uint32_t x, uint32_t ck) {
#if defined(__GNUC__) && defined(__x86_64__)
    __asm__("cmpl %[k], %[x]\n\tadcl $0, %[c]" : [c] "+r"(child) : [x] "r"(x), [k] "rm"(ck) : "cc");
    return child;
#else
    return child + (x < ck);
#endif
}

/* RS_LANES consecutive block rows (row l at byte offset 4 * l from ``p``) walk ``steps`` steps in
 * lock-step from ``root``; their nodes end in cur[]. Inlined, so cur[] lives in registers. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void rs_lanes_from_root(const uint32_t* ck, const uint64_t* meta, uint32_t root,
                                      int32_t steps, const char* p, uint32_t* cur) {
    int l;
    int32_t d;
    for (l = 0; l < RS_LANES; l++)
        cur[l] = root;
    for (d = 0; d < steps; d++) {
        RS_OPAQUE(p);
        for (l = 0; l < RS_LANES; l++) {
            uint64_t m = meta[cur[l]];
            uint32_t x = *(const uint32_t*)(p + 4 * l + (uint32_t)m);
            cur[l] = rs_next((uint32_t)(m >> 32), x, ck[cur[l]]);
        }
    }
}

/* Adds the leaf value of the tree rooted at ``root`` to acc[r] for the block rows r in [0, nb).
 * ``xk`` is the transposed key block (row r of slot s at xk[s * stride + r]); lanes of the last
 * group may read rows up to RS_LANES - 1 past nb (the block is wide enough), never past it. */
static void rs_walk_keys(const uint32_t* ck, const uint64_t* meta, const double* val,
                         uint32_t root, int32_t depth, const uint32_t* xk, Py_ssize_t nb,
                         double* acc) {
    uint32_t cur[RS_LANES];
    Py_ssize_t g = 0;
    int l;
    int32_t d;
    while (g < nb) {
        const char* p = (const char*)(xk + g);
        if (nb - g < RS_TAIL) {
            for (l = 0; l < nb - g; l++) {
                uint32_t i = root;
                for (d = 0; d < depth; d++) {
                    uint64_t m = meta[i];
                    uint32_t c = (uint32_t)(m >> 32);
                    if (c == i)
                        break;
                    i = rs_next(c, *(const uint32_t*)(p + 4 * l + (uint32_t)m), ck[i]);
                }
                acc[g + l] += val[i];
            }
            return;
        }
        rs_lanes_from_root(ck, meta, root, depth, p, cur);
        if (nb - g >= RS_LANES) {
            for (l = 0; l < RS_LANES; l++)
                acc[g + l] += val[cur[l]];
        } else {
            for (l = 0; l < nb - g; l++)
                acc[g + l] += val[cur[l]];
        }
        g += RS_LANES;
    }
}

/* The same walk in two stages, for trees whose deepest leaves hold few rows (leaf-wise trees are
 * lopsided: a 127-leaf tree may be 20 deep while most rows stop within 8). Every row walks ``k``
 * steps in lock-step from the root; a row that sits on a leaf then adds its value, the others are
 * gathered into (row, node) pairs and walk the remaining ``depth - k`` steps, RS_LANES pairs at a
 * time, each lane with its own row. ``rows`` and ``curs`` hold at least nb + RS_LANES entries.
 * Same sums as rs_walk_keys: every row adds exactly one leaf value of the tree. */
static void rs_walk_keys_staged(const uint32_t* ck, const uint64_t* meta, const double* val,
                                uint32_t root, int32_t k, int32_t depth, const uint32_t* xk,
                                Py_ssize_t nb, double* acc, int32_t* rows, uint32_t* curs) {
    uint32_t cur[RS_LANES];
    uint32_t roff[RS_LANES];
    double sink = 0.0;         /* where a row that is not done adds its (internal node) 0 */
    Py_ssize_t g, n_pend = 0;
    int l, lim;
    int32_t d;
    for (g = 0; g < nb; g += RS_LANES) {
        const char* p = (const char*)(xk + g);
        rs_lanes_from_root(ck, meta, root, k, p, cur);
        lim = nb - g < RS_LANES ? (int)(nb - g) : RS_LANES;
        for (l = 0; l < lim; l++) {          /* branch-free: done rows add, the others queue */
            uint32_t c = cur[l];
            int done = (uint32_t)(meta[c] >> 32) == c;
            *(done ? &acc[g + l] : &sink) += val[c];
            rows[n_pend] = (int32_t)(g + l);
            curs[n_pend] = c;
            n_pend += !done;
        }
    }
    for (g = 0; g < n_pend; g += RS_LANES) {
        const char* p = (const char*)xk;
        lim = n_pend - g < RS_LANES ? (int)(n_pend - g) : RS_LANES;
        for (l = 0; l < RS_LANES; l++) {     /* spare lanes walk the group's first pair again */
            roff[l] = 4u * (uint32_t)rows[g + (l < lim ? l : 0)];
            cur[l] = curs[g + (l < lim ? l : 0)];
        }
        for (d = k; d < depth; d++) {
            RS_OPAQUE(p);
            for (l = 0; l < RS_LANES; l++) {
                uint64_t m = meta[cur[l]];
                uint32_t x = *(const uint32_t*)(p + roff[l] + (uint32_t)m);
                cur[l] = rs_next((uint32_t)(m >> 32), x, ck[cur[l]]);
            }
        }
        for (l = 0; l < lim; l++)
            acc[roff[l] >> 2] += val[cur[l]];
    }
}

#endif
