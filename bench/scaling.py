"""Recommend latency vs catalogue size and candidate count, in process (the serving pipeline, no gRPC).

    python bench/scaling.py [--sizes 10000,100000] [--with-1m] [--cands 100,500,2000] [--repeats 300]
                            [--cache DIR] [--png OUT.png] [--quick]

Per catalogue size a bundle is trained on synthetic data (``trainer.build.build``; users = max(300, items / 5), 20
interactions per user, no tuning, co-occurrence cosine as the item-item model at every size). Per candidate
count N, one ``Recommender`` over that bundle with ``cap = N`` and the source quotas scaled by N / 260 (the
default quotas sum to 260); the actual mean number of candidates merged and ranked is measured in one untimed
pass and printed next to N (short i2i / session lists can make it smaller than N; a request's budget is at
least four times k, 80, whatever N). The timed call is ``Recommender.recommend`` for a known user with a
history, k = 20, one BLAS thread as in a server worker. Every bundle is built (or found in ``--cache``) before
any timing; then all of them are open at once (about 13 MB resident for the 10k-item bundle with its three
Recommenders, so some 1.3 GB for the 1M-item one: its HNSW index in memory, its tables memory-mapped) and
every (size, N) cell is timed in one interleaved pass (``bench/_timing.interleaved``: each round calls every
cell once), so machine noise hits all of them alike. Ratios: to the first N at the same size, and to the
smallest catalogue at the same N -- both within the one pass. The trained embeddings spread over nearly every
dimension yet have close neighbours (bench/RESULTS.md, section 3, measures how structured they are). A
``--cache``d bundle built with other settings is built again; ``--quick``'s record holds the sizes and caps it
ran.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from _cli import Parser, output_file, png_file, record, write_json  # noqa: E402
from trainer.argtypes import number_list, positive_int  # noqa: E402
from _timing import interleaved, machine, summary  # noqa: E402


def bundle_for(n_items: int, cache: Path, quick: bool) -> Path:
    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    root = cache / f"items{n_items}"
    # the same item-item model at every size: EASE, the build's choice up to 10,000 items, would make the
    # smallest catalogue a different pipeline from the others
    cfg = {"seed": 0, "factors": 16 if quick else 64, "ranker_users": 300 if quick else 2000,
           "ranker_rounds": 60 if quick else 150, "tune": False, "i2i_model": "cosine"}
    if (root / "CURRENT").exists():
        from recserve.bundle import resolve

        manifest = json.loads((resolve(str(root)) / "manifest.json").read_text())
        built = manifest["training"]["config"]
        differ = {k: built.get(k) for k, v in cfg.items() if built.get(k) != v}
        if not differ:
            return root
        print(f"  {root}: built with other settings ({differ}, not {({k: cfg[k] for k in differ})}): built again",
              flush=True)
    n_users = max(300, n_items // 5)
    ds, _ = synth(n_users, n_items, seed=0)
    t = time.perf_counter()
    build(ds, root, cfg, timer=Timer(verbose=False))
    print(f"  built {n_items} items / {n_users} users / {len(ds)} interactions in {time.perf_counter() - t:.1f} s",
          flush=True)
    return root


def prepare(b, cands: list[int], seed: int = 0) -> tuple[dict, dict]:
    """Over one open bundle: per candidate count N, a warmed-up ``Recommender`` with ``cap = N`` and the call
    that times it (a known user with a history, k = 20), and the mean number of candidates actually ranked
    (one untimed pass over 50 users, by wrapping the merge the pipeline calls: its last merge of a request;
    the merge's budget is at least 4k = 80, whatever N)."""
    import recserve.pipeline.recommender as RM
    from recserve.pipeline.recommender import Recommender, RecRequest

    recs = {}
    for n in cands:
        recs[n] = Recommender(b, None, {"candidates": n})
        recs[n].warmup()
    t = b.tables
    hist = np.asarray(t.array("hist_indptr"))
    rng = np.random.default_rng(seed)
    with_hist = np.flatnonzero(np.diff(hist) > 0)
    users = [t.id_of("user", int(r)) for r in rng.choice(with_hist, size=min(200, len(with_hist)), replace=False)]
    counts = {n: [] for n in cands}
    orig, merges = RM.merge_candidates, []

    def wrapped(*a, **kw):
        merges.append(len(m := orig(*a, **kw)))
        return m

    RM.merge_candidates = wrapped
    try:
        for n in cands:
            for u in users[:50]:
                merges.clear()
                recs[n].recommend(RecRequest(user_id=u, k=20))
                # the request's last merge is the one ranked (the earlier ones, short of 4k, were topped up)
                counts[n].append(merges[-1])
    finally:
        RM.merge_candidates = orig

    def call(n):
        it = iter(range(10 ** 9))
        return lambda: recs[n].recommend(RecRequest(user_id=users[next(it) % len(users)], k=20))

    return ({n: call(n) for n in cands},
            {n: float(np.mean(counts[n])) if counts[n] else 0.0 for n in cands})


def measure(roots: dict[int, Path], cands: list[int], repeats: int) -> dict:
    """Every bundle open at once and every (size, N) cell timed in one interleaved pass (``repeats`` rounds,
    each calling every cell once, the order reversed every other round), so the ratios across sizes are as
    much within one run as those across N."""
    from threadpoolctl import threadpool_limits

    from recserve.bundle import Bundle

    opened, funcs, counts = [], {}, {}
    try:
        for size, root in roots.items():
            b = Bundle.open(root)
            opened.append(b)
            calls, counts[size] = prepare(b, cands)
            funcs.update({(size, n): f for n, f in calls.items()})
        with threadpool_limits(1):
            times = interleaved(funcs, repeats, warmup=10)
    finally:
        for b in opened:
            b.close()
    out = {}
    for (size, n), t in times.items():
        med, p99 = summary(t)
        out.setdefault(size, {})[n] = {"median_ms": med / 1e3, "p99_ms": p99 / 1e3, "candidates": counts[size][n]}
    return out


def main(argv=None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=number_list(int, 100), default="10000,100000",
                    help="catalogue sizes, comma separated")
    ap.add_argument("--with-1m", action="store_true", help="add a 1,000,000-item catalogue (slow to build)")
    ap.add_argument("--cands", type=number_list(int, 1), default="100,500,2000", help="candidate caps, comma separated")
    ap.add_argument("--repeats", type=positive_int, default=300)
    ap.add_argument("--cache", help="keep the trained bundles here (reused when present)")
    ap.add_argument("--png", type=png_file, help="plot of the medians (needs matplotlib)")
    ap.add_argument("--json", type=output_file)
    ap.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    a = ap.parse_args(argv)
    if a.cache and Path(a.cache).exists() and not Path(a.cache).is_dir():
        ap.error(f"--cache: {a.cache} is not a directory")
    sizes = a.sizes + ([1_000_000] if a.with_1m else [])
    cands = a.cands
    if a.quick:             # the settings the run uses are the ones its record holds
        sizes, cands, a.repeats = [300, 600], [50, 100], 20
        a.sizes, a.cands, a.with_1m = sizes, cands, False
    print(f"machine: {machine()}; date {time.strftime('%Y-%m-%d')}")
    tmp = None
    if a.cache:
        cache = Path(a.cache)
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            ap.error(f"--cache: cannot create {a.cache} ({exc.strerror})")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="recserve-scaling-")
        cache = Path(tmp.name)
    try:
        roots = {n: bundle_for(n, cache, a.quick) for n in sizes}     # every bundle built before any timing
        res = measure(roots, cands, a.repeats)
    finally:
        if tmp:
            tmp.cleanup()
    print(f"\nRecommend (in process, k=20), {a.repeats} calls per cell, all {len(sizes) * len(cands)} cells "
          "(every size and N) interleaved in one pass; N: the cap (the merge's budget is at least 4k = 80), "
          "cands: the candidates merged and ranked (mean)")
    print(f"{'items':>9}{'N':>7}{'cands':>8}{'median ms':>11}{'p99 ms':>9}{'x N=' + str(cands[0]):>10}"
          f"{'x ' + str(sizes[0]):>10}")
    for n in sizes:
        for c in cands:
            v = res[n][c]
            print(f"{n:>9}{c:>7}{v['candidates']:>8.0f}{v['median_ms']:>11.3f}{v['p99_ms']:>9.3f}"
                  f"{v['median_ms'] / res[n][cands[0]]['median_ms']:>10.2f}"
                  f"{v['median_ms'] / res[sizes[0]][c]['median_ms']:>10.2f}")
    if a.png:       # matplotlib is importable: --png is refused at parse otherwise (_cli.png_file)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for n in sizes:     # at the candidates merged, not the cap: short lists can leave fewer
            ax.plot([res[n][c]["candidates"] for c in cands], [res[n][c]["median_ms"] for c in cands],
                    marker="o", label=f"{n} items")
        ax.set_xlabel("candidates merged (mean; the caps are " + ", ".join(map(str, cands)) + ")")
        ax.set_ylabel("median ms")
        ax.legend()
        fig.savefig(a.png, dpi=90)
        print(f"PNG: {a.png}")
    if a.json:
        write_json(a.json, record(a, timing="every (size, N) cell interleaved in one pass",
                                  results={str(k): {str(c): v for c, v in r.items()} for k, r in res.items()}))
        print(f"JSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
