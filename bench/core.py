"""Core kernels vs their numpy references at serving sizes, interleaved in one run.

    python bench/core.py [--repeats 2000] [--quick]

Prints, per kernel, median and p99 microseconds per call of the Cython kernel and of its numpy
reference, and the ratio of medians; then the whole per-request core (embedding + merge + crossing +
MMR + gathers) with the Cython kernels.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lmdb
import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer.argtypes import number, positive_int  # noqa: E402
from _timing import interleaved, machine, summary  # noqa: E402

from recserve._core.cross import Crosser, FeatureSchema, cross_reference  # noqa: E402
from recserve._core.embed import (UserVectorParams, user_vector, user_vector_reference, user_vectors,  # noqa: E402
                                  user_vectors_reference)
from recserve._core.gather import gather, gather_reference  # noqa: E402
from recserve._core.history import (drop_seen, drop_seen_reference, history_seeds,  # noqa: E402
                                    history_seeds_reference)
from recserve._core.merge import exclusion_bitset, merge_candidates, merge_reference  # noqa: E402
from recserve._core.mmr import mmr, mmr_reference  # noqa: E402
from recserve._core.neighbours import neighbour_sum, neighbour_sum_reference  # noqa: E402
from recserve._core.tables import TableReader, TableWriter  # noqa: E402


def clustered_embeddings(rng, n, d, n_clusters=200):
    centers = rng.normal(size=(n_clusters, d))
    emb = centers[rng.integers(0, n_clusters, n)] + 0.5 * rng.normal(size=(n, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32)


def _differs(a, b, path: str = "answer") -> str:
    """Where two answers differ ('' when they agree): arrays exactly when integer, else to float32
    precision against the float64 reference; tuples, lists and dataclass-like results field by field."""
    if hasattr(a, "__dict__") and not isinstance(a, np.ndarray):
        a, b = vars(a), vars(b)
    if isinstance(a, dict):
        for k in a:
            why = _differs(a[k], b[k], f"{path}.{k}")
            if why:
                return why
        return ""
    if isinstance(a, (tuple, list)) and not isinstance(a, np.ndarray):
        if len(a) != len(b):
            return f"{path}: {len(a)} parts against {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            why = _differs(x, y, f"{path}[{i}]")
            if why:
                return why
        return ""
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return f"{path}: shape {x.shape} against {y.shape}"
    if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
        return "" if np.array_equal(x, y) else f"{path}: values differ"
    return "" if np.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True) else f"{path}: values differ"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=positive_int, default=2000)
    ap.add_argument("--items", type=number(int, 1000), default=100_000)
    ap.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.items = 30, 5_000
    rng = np.random.default_rng(0)
    n_items, d = args.items, 64
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "tables.lmdb"
    item_cols = ["price", "category", "created_days", "popularity"] + [f"f{i}" for i in range(10)]
    user_cols = ["age_days", "avg_spend"] + [f"cat_share_{i}" for i in range(16)]
    ctx_cols = ["hour", "weekday", "device"]
    sources = ["ann", "i2i", "session", "popular"]
    schema = FeatureSchema(user_cols, item_cols, ctx_cols, sources, price_column="price",
                           spend_column="avg_spend", category_column="category",
                           category_share_prefix="cat_share_", n_categories=16, created_column="created_days")
    items = rng.random((n_items, len(item_cols))).astype(np.float32)
    items[:, 1] = rng.integers(0, 16, n_items)
    emb = clustered_embeddings(rng, n_items, d)
    with TableWriter(path) as w:
        w.write_array("item_emb", emb)
        w.write_array("item_feats", items, columns=item_cols)
        w.write_array("item_feats_40", rng.random((n_items, 40)).astype(np.float32))
    reader = TableReader(path)
    E = reader.array("item_emb")
    T = reader.array("item_feats")
    T40 = reader.array("item_feats_40")
    print(f"machine: {machine()}")
    print(f"catalogue: {n_items} items, d={d}; {args.repeats} interleaved calls per kernel\n")

    # 1. user embedding, L = 50
    hist = rng.integers(0, n_items, 50).astype(np.int32)
    ev_w = rng.choice([1.0, 2.0, 4.0, 8.0], 50).astype(np.float32)
    p = UserVectorParams()
    # 1b. the trainer's batch form: 200 users of 30 events each (CSR; its own generator, so the data of
    #     the other kernels stay those of earlier runs)
    b_indptr = np.arange(0, 201 * 30, 30, dtype=np.int64)
    b_rows = np.random.default_rng(7).integers(0, n_items, 200 * 30).astype(np.int32)
    # 2. merging: 4 lists totalling 1,000 candidates
    lists = [(rng.integers(0, n_items, n).astype(np.int32), np.sort(rng.random(n).astype(np.float32))[::-1].copy())
             for n in (400, 300, 100, 200)]
    quotas = [400, 300, 100, 200]
    excl = exclusion_bitset(n_items, rng.integers(0, n_items, 200))
    # 3. crossing: 500 candidates x ~40 features
    cand = rng.choice(n_items, 500, replace=False).astype(np.int32)
    rank = rng.integers(-1, 400, (500, 4)).astype(np.int32)
    score = rng.random((500, 4)).astype(np.float32)
    user = rng.random(len(user_cols)).astype(np.float32)
    uvec = emb[0]
    ctx = np.array([13, 2, 1], np.float32)
    crosser = Crosser(schema, T, E)
    # 4. MMR 500 -> 20
    rel = rng.random(500).astype(np.float32)
    creators = rng.integers(0, 100, 500)
    # 5. gathers: 500 random rows of 40 float32 from LMDB
    gat_rows = rng.integers(0, n_items, 500).astype(np.int32)
    # 6. item-to-item: 20 seeds x 50 neighbours (the catalogue's i2i table), best 240
    i2i_rows = rng.integers(0, n_items, (n_items, 50)).astype(np.int32)
    i2i_scores = np.sort(rng.random((n_items, 50)).astype(np.float32), axis=1)[:, ::-1].copy()
    seeds = rng.integers(0, n_items, 20)
    seed_w = np.exp(-0.1 * np.arange(20)).astype(np.float32)

    # 7. a history of 200 events over 150 items (repeats): seen set, 100 recent seeds, 10 session seeds;
    #    then 300 ANN rows without the seen ones
    h_rows = rng.integers(0, 150, 200).astype(np.int32)
    h_ts = np.sort(rng.random(200) * 86400.0 * 3)
    h_seen = np.unique(h_rows)
    ann_r = rng.integers(0, n_items, 300).astype(np.int32)
    ann_r[:100] = rng.integers(0, 150, 100)
    ann_s = np.sort(rng.random(300).astype(np.float32))[::-1].copy()

    cases = {
        "user embedding (L=50, d=64)": (
            lambda: user_vector(E, hist, p, ev_w), lambda: user_vector_reference(E, hist, p, ev_w)),
        "user embeddings, batch (200 users x 30 events)": (
            lambda: user_vectors(E, b_indptr, b_rows, p), lambda: user_vectors_reference(E, b_indptr, b_rows, p)),
        "merge (4 lists, 1,000 candidates)": (
            lambda: merge_candidates(lists, quotas, 1000, n_items, excl),
            lambda: merge_reference(lists, quotas, 1000, n_items, excl)),
        f"crossing (500 x {schema.n_features} features)": (
            lambda: crosser.cross(user, uvec, cand, ctx, rank, score, 20000.0),
            lambda: cross_reference(schema, T, E, user, uvec, cand, ctx, rank, score, 20000.0)),
        "MMR (500 -> 20, d=64)": (
            lambda: mmr(rel, E, cand, 20, 0.7), lambda: mmr_reference(rel, E, cand, 20, 0.7)),
        "MMR + creator rules (500 -> 20)": (
            lambda: mmr(rel, E, cand, 20, 0.7, creators, 2, True),
            lambda: mmr_reference(rel, E, cand, 20, 0.7, creators, 2, True)),
        "i2i neighbour sum (20 seeds x 50 -> 240)": (
            lambda: neighbour_sum(seeds, seed_w, i2i_rows, i2i_scores, 240),
            lambda: neighbour_sum_reference(seeds, seed_w, i2i_rows, i2i_scores, 240)),
        "history seeds (200 events -> 100 + 10)": (
            lambda: history_seeds(h_rows, h_ts, 100, 10, 1800.0),
            lambda: history_seeds_reference(h_rows, h_ts, 100, 10, 1800.0)),
        f"drop seen (300 rows, {len(h_seen)} seen)": (
            lambda: drop_seen(ann_r, ann_s, h_seen), lambda: drop_seen_reference(ann_r, ann_s, h_seen)),
        "gather (500 rows x 40, LMDB map)": (
            lambda: gather(T40, gat_rows), lambda: gather_reference(T40, gat_rows)),
    }
    for name, (fast, ref) in cases.items():     # nothing is timed unless each kernel gives its reference's answer
        why = _differs(fast(), ref())
        if why:
            print(f"{name}: the kernel's answer differs from the numpy reference ({why}); nothing timed",
                  file=sys.stderr)
            return 1
    print(f"{'kernel':40s} {'cython med':>10s} {'p99':>8s} {'numpy med':>10s} {'p99':>8s} {'speed-up':>9s}")
    for name, (fast, ref) in cases.items():
        t = interleaved({"fast": fast, "ref": ref}, args.repeats)
        fm, fp = summary(t["fast"])
        rm, rp = summary(t["ref"])
        print(f"{name:40s} {fm:9.1f}µ {fp:7.1f}µ {rm:9.1f}µ {rp:7.1f}µ {rm / fm:8.1f}×")

    # per-row LMDB reads, the layout the zero-copy table replaces, for scale
    env = lmdb.open(str(Path(tmp.name) / "rows.lmdb"), subdir=False, map_size=1 << 32, lock=False)
    with env.begin(write=True) as txn:
        for r in np.unique(gat_rows):
            txn.put(int(r).to_bytes(4, "big"), T40[r].tobytes())
    keys = [int(r).to_bytes(4, "big") for r in gat_rows]

    def per_row_get():
        with env.begin() as txn:
            return np.vstack([np.frombuffer(txn.get(k), np.float32) for k in keys])

    if _differs(gather(T40, gat_rows), per_row_get()):
        print("gather: differs from the per-row LMDB reads; nothing timed", file=sys.stderr)
        return 1
    gat_calls = max(args.repeats // 4, 10)     # the per-row reads are slow: a quarter of the calls
    t = interleaved({"fast": lambda: gather(T40, gat_rows), "rows": per_row_get}, gat_calls)
    fm, fp = summary(t["fast"])
    rm, rp = summary(t["rows"])
    print(f"\n{gat_calls} interleaved calls each:")
    print(f"{'':40s} {'gather med':>10s} {'p99':>8s} {'txn.get med':>11s} {'p99':>7s} {'speed-up':>9s}")
    print(f"{'gather vs per-row txn.get (500 rows)':40s} {fm:9.1f}µ {fp:7.1f}µ {rm:9.1f}µ {rp:7.1f}µ "
          f"{rm / fm:8.1f}×")

    def whole_request():
        v = user_vector(E, hist, p, ev_w)
        m = merge_candidates(lists, quotas, 500, n_items, excl)
        g = gather(T40, m.rows)
        X = crosser.cross(user, v, m.rows, ctx, m.rank, m.score, 20000.0)
        mmr(X[:, -4], E, m.rows, 20, 0.7, creators[: len(m.rows)], 2, True)
        return g

    t = interleaved({"core": whole_request}, args.repeats)
    cm, cp = summary(t["core"])
    print(f"\nwhole per-request core (embed + merge + gather + cross + MMR, 500 candidates): "
          f"median {cm:.1f} µs, p99 {cp:.1f} µs")
    reader.close()
    env.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    with threadpool_limits(1):   # as in a server worker: one BLAS thread
        raise SystemExit(main())
