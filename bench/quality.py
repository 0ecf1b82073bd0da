"""Offline quality: recserve's stages side by side with baselines, on the trainer's own split and metrics.

    python bench/quality.py [--synth 2000x1000,8000x4000] [--movielens ../shared/datasets/ml-100k]
                            [--eval-users 2000] [--factors 64] [--json OUT.json] [--quick]

Per dataset: ``trainer.build.build`` trains a bundle (time split: the newest 10 % is held out), then
``trainer.build.evaluate_bundle`` evaluates recserve's stages on the held-out window -- popularity
(trending, as served), i2i, ANN only, ANN + ranker, all sources merged + ranker, + MMR -- and the same
users / truths / metric code (``trainer.evaluate._metrics``) score three outside baselines fitted on exactly the
training interactions of the bundle (everything before the test cut). recserve's own popularity stage is
the row ``trending`` (its trending source as served: time-decayed, by country).

  * ``popularity``: items by distinct users in the training window, the user's own left out;
  * ``implicit-als``: implicit's AlternatingLeastSquares (the trainer's factors, 15 iterations, raw
    interaction counts as confidences) and its ``recommend(..., filter_already_liked_items)``;
  * ``item-knn``: item-kNN on co-occurrence (cosine of binary user x item columns), a user's score for an
    item = sum of its similarities to the user's training items; training items excluded.

The baselines' settings are chosen as recserve's build chooses its own, without the test window: ALS's
regularisation and alpha (a grid of 8 x 6) and item-kNN's neighbours kept (20, 100, all) by NDCG@10 on the
training window split again, its newest 10 % held out; their time column includes that search.

Columns: Recall@10/20/50, NDCG@10, coverage@10 (share of the catalogue in anyone's top 10), diversity
(ild@10, mean pairwise 1 - cosine of the bundle's item embeddings in a top 10), novelty@10 (mean
-log2 popularity share), and training time (recserve: the whole bundle build, shared by its stages).
MovieLens-100K is read from ``--movielens`` (default ``../shared/datasets/ml-100k`` relative to the repo)
and skipped with a message when that default directory holds no MovieLens data; a directory named with
``--movielens`` must hold it (``--movielens ""`` skips MovieLens; ``--quick`` skips it, saying so).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from _cli import Parser, check_movielens, movielens_files, output_file, record, sizes, write_json  # noqa: E402
from trainer.argtypes import number, positive_int  # noqa: E402
from _timing import machine  # noqa: E402

DEFAULT_ML = REPO.parent / "shared" / "datasets" / "ml-100k"

COLS = ["recall@10", "recall@20", "recall@50", "ndcg@10", "coverage@10", "ild@10", "novelty@10", "mean_len"]


def knn_similarity(train: sp.csr_matrix, neighbours: int = 0) -> sp.csr_matrix:
    """Cosine of binary item columns, zero diagonal; column j keeps its ``neighbours`` most similar items
    (0: all), so a user's score for j = x[u] @ sim[:, j] sums j's kept similarities to her items."""
    x = train.copy()
    x.data[:] = 1.0
    norms = np.sqrt(np.asarray(x.sum(0)).ravel())
    norms[norms == 0] = 1.0
    c = (x.T @ x).tocsr().astype(np.float32)
    c.setdiag(0)
    c.eliminate_zeros()
    d = sp.diags(1.0 / norms.astype(np.float32))
    sim = (d @ c @ d).tocsr()
    if neighbours:                      # symmetric: row j is column j; its top entries kept, then transposed
        for j in range(sim.shape[0]):
            a, b = sim.indptr[j], sim.indptr[j + 1]
            if b - a > neighbours:
                vals = sim.data[a:b]
                vals[np.argsort(-vals, kind="stable")[neighbours:]] = 0.0
        sim.eliminate_zeros()
        sim = sim.T.tocsr()
    return sim


def item_knn(train: sp.csr_matrix, users: np.ndarray, neighbours: int = 0, n: int = 50):
    t = time.perf_counter()
    x = train.copy()
    x.data[:] = 1.0
    sim = knn_similarity(train, neighbours)
    fit_s = time.perf_counter() - t
    s = (x[users] @ sim).toarray()
    s[x[users].toarray() > 0] = -np.inf
    top = np.argsort(-s, axis=1, kind="stable")[:, :n]
    recs = [row[np.isfinite(s[k, row]) & (s[k, row] > 0)] for k, row in enumerate(top)]
    return recs, fit_s


def implicit_als(train: sp.csr_matrix, users: np.ndarray, factors: int, seed: int, reg: float, alpha: float,
                 threads: int, n: int = 50):
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    t = time.perf_counter()
    with threadpool_limits(1, "blas"):
        m = AlternatingLeastSquares(factors=factors, regularization=reg, alpha=alpha, iterations=15,
                                    random_state=seed, num_threads=threads, calculate_training_loss=False)
        m.fit(train, show_progress=False)
        fit_s = time.perf_counter() - t
        ids, _ = m.recommend(users, train[users], N=n, filter_already_liked_items=True)
    return [np.asarray(r, np.int64) for r in ids], fit_s


ALS_REG = (1.0, 5.0, 20.0, 50.0, 200.0, 500.0, 1000.0, 2000.0)
ALS_ALPHA = (1.0, 5.0, 20.0, 40.0, 80.0, 160.0)
KNN_NEIGHBOURS = (20, 100, 0)         # 0: all items


def popularity(train: sp.csr_matrix, users: np.ndarray, n: int = 50):
    """Items by distinct users in the training window, the user's own left out: the outside baseline
    (``trainer.baselines.popularity``; its time is that of the whole call)."""
    from trainer import baselines

    t = time.perf_counter()
    top = baselines.popularity(train, users, n)
    return [r[r >= 0] for r in top], time.perf_counter() - t


def inner_split(ds, u_map: np.ndarray, i_map: np.ndarray, cut: float, shape: tuple, max_users: int, seed: int):
    """The training window split as the trainer splits the whole log: its newest 10 % (by time) held out.
    Returns (fit matrix, validation users -- at most ``max_users``, drawn with ``seed`` --, their truths); the
    baselines' settings are chosen on it, so the test window is never seen."""
    tr = ds.ts < cut
    inner = float(np.quantile(ds.ts[tr], 0.9))
    u, i, ts = u_map[ds.user[tr]], i_map[ds.item[tr]], ds.ts[tr]
    ok = (u >= 0) & (i >= 0)
    u, i, ts = u[ok], i[ok], ts[ok]
    fit = ts < inner
    x = sp.csr_matrix((np.ones(int(fit.sum()), np.float32), (u[fit], i[fit])), shape=shape)
    x.sum_duplicates()
    key = u * shape[1] + i
    new = ~fit & ~np.isin(key, key[fit])           # held-out pairs the user had not met before
    truth: dict = {}
    for uu, ii in zip(u[new].tolist(), i[new].tolist()):
        truth.setdefault(uu, set()).add(ii)
    users = np.array(sorted(truth), np.int64)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return x, users, [truth[v] for v in users.tolist()]


def tuned(fit_fn, grid, x, users, truths, stats) -> tuple:
    """The grid point with the best validation NDCG@10 (ties: the first), and the seconds the search took."""
    from trainer import evaluate as ev

    t = time.perf_counter()
    scores = {}
    for point in grid:
        recs, _ = fit_fn(x, users, *point)
        scores[point] = ev._metrics(recs, truths, *stats)["ndcg@10"]
    best = max(grid, key=lambda p: scores[p])
    return best, time.perf_counter() - t


def run_dataset(name: str, ds, cfg: dict, max_users: int, seed: int, threads: int) -> dict:
    from recserve.bundle import Bundle
    from trainer import evaluate as ev
    from trainer.build import artifacts_from_bundle, build, evaluate_bundle
    from trainer.timing import Timer

    with tempfile.TemporaryDirectory(prefix="recserve-quality-") as tmp:
        t = time.perf_counter()
        path = build(ds, Path(tmp), cfg, timer=Timer(verbose=False))
        build_s = time.perf_counter() - t
        res = evaluate_bundle(path, ds, max_users=max_users, seed=seed, threads=threads)
        b = Bundle.open(path)
        try:
            art = artifacts_from_bundle(b)
            row = {b.tables.id_of("user", r): r for r in range(b.n_users)}
            irow = {b.tables.id_of("item", r): r for r in range(b.n_items)}
            n_users, n_items = b.n_users, b.n_items
            cut = float(b.manifest["training"]["cut"])
            u_map = np.array([row.get(str(x), -1) for x in ds.user_ids], np.int64)
            i_map = np.array([irow.get(str(x), -1) for x in ds.item_ids], np.int64)
            test = ds.ts >= cut
            tu, ti = u_map[ds.user[test]], i_map[ds.item[test]]
            ok = (tu >= 0) & (ti >= 0)
            users, truths = ev.eval_users(art, tu[ok], ti[ok], max_users, seed)
            if len(users) != res["users"]:
                raise RuntimeError(f"user selection differs from the trainer's ({len(users)} vs {res['users']})")
            tr = ~test
            uu, ii = u_map[ds.user[tr]], i_map[ds.item[tr]]
            keep = (uu >= 0) & (ii >= 0)
            train = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (uu[keep], ii[keep])),
                                  shape=(n_users, n_items))
            train.sum_duplicates()
            stats = ev.item_stats(art)
            # recserve's popularity stage is its trending source, as served (decayed, by country)
            methods = {("trending" if m == "popularity" else m): {**v, "train_s": build_s}
                       for m, v in res["methods"].items()}
            recs, fit_s = popularity(train, users)
            methods["popularity"] = {**ev._metrics(recs, truths, *stats), "train_s": fit_s}
            # the baselines' settings are chosen as recserve's are: on the training window's own newest 10 %
            vx, vusers, vtruths = inner_split(ds, u_map, i_map, cut, (n_users, n_items), max_users, seed)
            factors = int(b.manifest["training"]["factors"])
            als = lambda x, us, reg, alpha: implicit_als(x, us, factors, seed, reg, alpha, threads)  # noqa: E731
            (reg, alpha), tune_s = tuned(als, [(r, a) for r in ALS_REG for a in ALS_ALPHA], vx, vusers, vtruths,
                                          stats)
            recs, fit_s = implicit_als(train, users, factors, seed, reg, alpha, threads)
            methods["implicit-als"] = {**ev._metrics(recs, truths, *stats), "train_s": tune_s + fit_s,
                                       "settings": f"reg {reg:g}, alpha {alpha:g}"}
            knn = lambda x, us, nb: item_knn(x, us, nb)  # noqa: E731
            (nb,), tune_s = tuned(knn, [(v,) for v in KNN_NEIGHBOURS], vx, vusers, vtruths, stats)
            recs, fit_s = item_knn(train, users, nb)
            methods["item-knn"] = {**ev._metrics(recs, truths, *stats), "train_s": tune_s + fit_s,
                                   "settings": f"{nb or 'all'} neighbours"}
        finally:
            b.close()
    return {"dataset": name, "users": int(res["users"]), "n_users": int(n_users), "n_items": int(n_items),
            "interactions": int(len(ds)), "build_s": build_s, "methods": methods}


def format_table(results: list[dict]) -> str:
    lines = [f"{'dataset':<22}{'method':<15}" + "".join(f"{c:>12}" for c in COLS) + f"{'train s':>10}"]
    for r in results:
        name = f"{r['dataset']}"
        for m, v in r["methods"].items():
            lines.append(f"{name:<22}{m:<15}" + "".join(f"{v[c]:>12.4f}" for c in COLS) + f"{v['train_s']:>10.1f}")
            name = ""
        lines.append(f"{'':<22}({r['users']} evaluated users; {r['n_users']} users x {r['n_items']} items, "
                     f"{r['interactions']} interactions; recserve rows share one {r['build_s']:.1f} s build)")
        chosen = [f"{m} {v['settings']}" for m, v in r["methods"].items() if "settings" in v]
        if chosen:
            lines.append(f"{'':<22}(chosen on the training window's newest 10 %: {'; '.join(chosen)})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth", type=sizes, default="2000x1000,8000x4000", help="USERSxITEMS sizes, comma separated")
    ap.add_argument("--movielens", help=f"a MovieLens directory (default {DEFAULT_ML}, skipped when absent; "
                    "'' skips it)")
    ap.add_argument("--eval-users", type=positive_int, default=2000)
    ap.add_argument("--factors", type=positive_int, default=64)
    ap.add_argument("--ranker-users", type=positive_int, default=3000)
    ap.add_argument("--seed", type=number(int, 0), default=0)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--json", type=output_file)
    ap.add_argument("--quick", action="store_true", help="tiny run for smoke tests (one 300x200 synth set)")
    a = ap.parse_args(argv)
    if a.movielens:
        check_movielens(ap, a.movielens, "--movielens")     # named on the command line: it must be there
    from trainer.synth import synth

    cfg = {"seed": a.seed, "factors": a.factors, "ranker_users": a.ranker_users, "threads": a.threads}
    synth_sizes = a.synth
    if a.quick:
        synth_sizes, cfg = [(300, 200)], {**cfg, "factors": 16, "ranker_users": 300, "ranker_rounds": 60}
    ml = Path(a.movielens) if a.movielens else DEFAULT_ML
    ml_ds = None
    if a.movielens != "" and movielens_files(ml) and not a.quick:      # read first: bad files fail before any run
        from trainer.io import DataError
        from trainer.movielens import load_movielens

        try:
            ml_ds = load_movielens(str(ml))
        except DataError as exc:
            ap.error(f"--movielens {ml}: {exc}")
    print(f"machine: {machine()}; date {time.strftime('%Y-%m-%d')}")
    results = []
    for nu, ni in synth_sizes:
        ds, _ = synth(nu, ni, seed=a.seed)
        print(f"synth {nu}x{ni}: {len(ds)} interactions ...", flush=True)
        results.append(run_dataset(f"synth {nu}x{ni}", ds, cfg, a.eval_users, a.seed, a.threads))
    if a.quick and a.movielens != "":
        print(f"MovieLens skipped (--quick): {ml}")
    elif ml_ds is not None:
        print(f"{ml.name}: {len(ml_ds)} interactions ...", flush=True)
        results.append(run_dataset(ml.name, ml_ds, cfg, a.eval_users, a.seed, a.threads))
    elif a.movielens == "":
        print("MovieLens skipped (--movielens '')")
    elif not a.quick:
        print(f"MovieLens skipped: the default {ml} holds no MovieLens data (u.data or ratings.csv; pass "
              "--movielens PATH)")
    print(format_table(results))
    if a.json:
        write_json(a.json, record(a, trainer_config=cfg, results=results))
        print(f"JSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
