"""Offline quality: recserve's stages side by side with baselines, on the trainer's own split and metrics.

    python bench/quality.py [--synth 2000x1000,8000x4000] [--movielens ../shared/datasets/ml-100k]
                            [--eval-users 2000] [--factors 64] [--json OUT.json] [--quick]

Per dataset: ``trainer.build.build`` trains a bundle (time split: the newest 10 % is held out), then
``trainer.build.evaluate_bundle`` evaluates recserve's stages on the held-out window -- popularity
(trending, as served), i2i, ANN only, ANN + ranker, all sources merged + ranker, + MMR -- and the same
users / truths / metric code (``trainer.evaluate._metrics``) score two baselines fitted on exactly the
training interactions of the bundle (everything before the test cut):

  * ``implicit-als``: implicit's AlternatingLeastSquares (same factors, regularisation and alpha as the
    trainer, raw interaction counts as confidences) and its ``recommend(..., filter_already_liked_items)``;
  * ``item-knn``: item-kNN on co-occurrence (cosine of binary user x item columns, all items), a user's
    score for an item = sum of its similarities to the user's training items; training items excluded.

Columns: Recall@10/20/50, NDCG@10, coverage@10 (share of the catalogue in anyone's top 10), diversity
(ild@10, mean pairwise 1 - cosine of the bundle's item embeddings in a top 10), novelty@10 (mean
-log2 popularity share), and training time (recserve: the whole bundle build, shared by its stages).
MovieLens-100K is read from ``--movielens`` (default ``../shared/datasets/ml-100k`` relative to the repo)
and skipped with a message when that default directory is absent; a directory named with ``--movielens``
must exist (``--movielens ""`` skips MovieLens).
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
from _cli import Parser, check_dir, output_file, record, sizes, write_json  # noqa: E402
from trainer.argtypes import number, positive_int  # noqa: E402
from _timing import machine  # noqa: E402

DEFAULT_ML = REPO.parent / "shared" / "datasets" / "ml-100k"

COLS = ["recall@10", "recall@20", "recall@50", "ndcg@10", "coverage@10", "ild@10", "novelty@10", "mean_len"]


def item_knn(train: sp.csr_matrix, users: np.ndarray, n: int = 50):
    t = time.perf_counter()
    x = train.copy()
    x.data[:] = 1.0
    norms = np.sqrt(np.asarray(x.sum(0)).ravel())
    norms[norms == 0] = 1.0
    c = (x.T @ x).tocsr().astype(np.float32)
    c.setdiag(0)
    c.eliminate_zeros()
    d = sp.diags(1.0 / norms.astype(np.float32))
    sim = (d @ c @ d).tocsr()
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
            methods = {m: {**v, "train_s": build_s} for m, v in res["methods"].items()}
            tc = b.manifest["training"]["config"]
            recs, fit_s = implicit_als(train, users, int(b.manifest["training"]["factors"]), seed,
                                       float(tc.get("als_reg", 20.0)), float(tc.get("als_alpha", 20.0)), threads)
            methods["implicit-als"] = {**ev._metrics(recs, truths, *stats), "train_s": fit_s}
            recs, fit_s = item_knn(train, users)
            methods["item-knn"] = {**ev._metrics(recs, truths, *stats), "train_s": fit_s}
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
        check_dir(ap, a.movielens, "--movielens")       # named on the command line: it must be there
    from trainer.synth import synth

    cfg = {"seed": a.seed, "factors": a.factors, "ranker_users": a.ranker_users, "threads": a.threads}
    synth_sizes = a.synth
    if a.quick:
        synth_sizes, cfg = [(300, 200)], {**cfg, "factors": 16, "ranker_users": 300, "ranker_rounds": 60}
    print(f"machine: {machine()}; date {time.strftime('%Y-%m-%d')}")
    results = []
    for nu, ni in synth_sizes:
        ds, _ = synth(nu, ni, seed=a.seed)
        print(f"synth {nu}x{ni}: {len(ds)} interactions ...", flush=True)
        results.append(run_dataset(f"synth {nu}x{ni}", ds, cfg, a.eval_users, a.seed, a.threads))
    ml = Path(a.movielens) if a.movielens else DEFAULT_ML
    if a.movielens != "" and ml.is_dir() and not a.quick:
        from trainer.movielens import load_movielens

        ds = load_movielens(str(ml))
        print(f"{ml.name}: {len(ds)} interactions ...", flush=True)
        results.append(run_dataset(ml.name, ds, cfg, a.eval_users, a.seed, a.threads))
    elif a.movielens == "":
        print("MovieLens skipped (--movielens '')")
    elif not a.quick:
        print(f"MovieLens skipped: the default {ml} is not a directory (pass --movielens PATH)")
    print(format_table(results))
    if a.json:
        write_json(a.json, record(a, trainer_config=cfg, results=results))
        print(f"JSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
