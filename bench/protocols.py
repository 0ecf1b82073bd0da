"""Two offline protocols side by side: baselines and recserve's stages on the same users, truths and metrics.

    python bench/protocols.py --data ../shared/datasets/ml-100k --seeds 0,1,2
    python bench/protocols.py --data-dir TRAINER_FORMAT_DIR --seeds 0 --quick     # smoke run

Protocols (every interaction of the data is a positive, binary; a user's test items are disjoint from
her training items; all users with a test item and a training item are evaluated):

  (a) ``random``: per user, a seeded random 20 % of her interactions held out (at least one);
  (b) ``newest``: per user, her newest 20 % (by timestamp) held out -- the split is the same for every
      seed, the seed only changes model randomness.

Methods: popularity, item-kNN (cosine; the neighbours kept, 20 / 100 / all, tuned on a validation split of
the training part), EASE (lam tuned on that split, grid 100/250/500/1000), implicit's ALS ``recommend``
(``bench/quality.implicit_als``, the trainer's factors; regularisation and alpha tuned on that split,
``bench/quality.ALS_REG`` x ``ALS_ALPHA``), and recserve: a bundle built by ``recserve-train build
--holdout 0`` on the training part (written to a temp dir in the trainer's input format), scored by
``trainer.evaluate.evaluate`` with MMR off (``mmr_lambda`` = 1): ``ann`` (as served: the ANN quota),
``ann-all`` (the same user vector against every item, exact cosine, so every unseen item is ranked),
``ann+ranker``, ``merged+ranker`` and ``full(l=1)`` (merged + ranker + MMR with lambda 1, creator cap as
served). Baselines and ``ann-all`` rank all unseen items; the ranker stages rank the served candidates.
Metrics come from ``trainer.evaluate._metrics``: Recall@K = hits in the top K / the user's test items,
NDCG@10 with the ideal DCG over min(test items, 10). Tables: mean (min..max) over the seeds.
"""
from __future__ import annotations

import argparse
import copy
import subprocess
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
from _cli import Parser, check_dir, check_movielens, movielens_files  # noqa: E402
from trainer.argtypes import number_list, positive_int  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "ml-100k"

SHOW = ["recall@10", "recall@20", "ndcg@10"]
METHODS = ["popularity", "item-knn", "ease", "implicit-als", "recserve ann", "recserve ann-all",
           "recserve ann+ranker", "recserve merged+ranker", "recserve full(l=1)"]


def split_random(ds, seed: int, share: float = 0.2) -> np.ndarray:
    """Test mask: per user a seeded random ``share`` of her interactions (>= 1 when she has >= 2)."""
    from trainer.split import per_user_label_mask

    return per_user_label_mask(ds.user, ds.ts, np.ones(len(ds), bool), ds.n_users, share, seed, random=True)


def split_newest(ds, share: float = 0.2) -> np.ndarray:
    """Test mask: per user her newest ``share`` (ties broken by input order, newest last)."""
    from trainer.split import per_user_label_mask

    return per_user_label_mask(ds.user, ds.ts, np.ones(len(ds), bool), ds.n_users, share)


# the ranker's labels that match each protocol's held-out set: random per user for (a), newest per user for (b)
AUTO_LABEL_SPLIT = {"a": "user-random", "b": "user"}


def rank_all(art, vecs: np.ndarray, users: np.ndarray, n: int) -> list[np.ndarray]:
    """Per user, the top ``n`` of every released item she has not consumed, by the cosine of its embedding
    with her vector: the exact ranking the index approximates (an HNSW graph cannot be asked for every
    item: some are unreachable from a query, and hnswlib then refuses the whole batch). Ties go to the lower
    row; a user with a zero vector gets an empty list."""
    emb = np.asarray(art.item_emb, np.float32)
    norms = np.linalg.norm(emb, axis=1)
    unit = emb / np.where(norms > 0, norms, 1.0)[:, None]
    out = []
    for u, v in zip(np.asarray(users).tolist(), np.asarray(vecs, np.float32)):
        nv = float(np.linalg.norm(v))
        if nv == 0.0:
            out.append(np.zeros(0, np.int64))
            continue
        s = unit @ (v / nv)
        s[np.asarray(art.unreleased, np.int64)] = -np.inf
        s[np.asarray(art.consumed(int(u)), np.int64)] = -np.inf
        keep = np.flatnonzero(np.isfinite(s))
        order = keep[np.lexsort((keep, -s[keep]))][:n]
        out.append(order.astype(np.int64))
    return out


def build_bundle(train_ds, tmp: Path, seed: int, args, label_split: str = "time") -> Path:
    from trainer.datawrite import write_dataset

    data = tmp / "data"
    write_dataset(train_ds, data, "csv")
    cmd = [sys.executable, "-m", "trainer.cli", "build", str(tmp / "bundle"), "--data", str(data),
           "--holdout", "0", "--seed", str(seed), "--threads", str(args.threads), "--factors", str(args.factors),
           "--ranker-users", str(args.ranker_users), "--label-split", label_split]
    if args.quick:
        cmd.append("--no-tune")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"build failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    from recserve.bundle import resolve
    return resolve(str(tmp / "bundle"))


def run_once(ds, test: np.ndarray, seed: int, args, label_split: str = "time") -> dict:
    """All methods on one split; returns {method: metrics} plus bookkeeping."""
    import quality
    from recserve.bundle import Bundle
    from trainer import baselines as bl
    from trainer import evaluate as ev
    from trainer import ranker as rk
    from trainer.build import artifacts_from_bundle
    from trainer.retrieval import user_vecs

    out = {}
    with tempfile.TemporaryDirectory(prefix="recserve-protocols-") as tmpd:
        t0 = time.perf_counter()
        path = build_bundle(ds.subset(~test), Path(tmpd), seed, args, label_split)
        build_s = time.perf_counter() - t0
        b = Bundle.open(path)
        try:
            art = artifacts_from_bundle(b)
            urow = {b.tables.id_of("user", r): r for r in range(b.n_users)}
            irow = {b.tables.id_of("item", r): r for r in range(b.n_items)}
            u_map = np.array([urow.get(str(x), -1) for x in ds.user_ids], np.int64)
            i_map = np.array([irow.get(str(x), -1) for x in ds.item_ids], np.int64)
            uu, ii = u_map[ds.user], i_map[ds.item]
            ok = (uu >= 0) & (ii >= 0)
            tr, te = ok & ~test, ok & test
            train = sp.csr_matrix((np.ones(int(tr.sum()), np.float32), (uu[tr], ii[tr])),
                                  shape=(b.n_users, b.n_items))
            train = bl.binarize(train)
            users, truths = ev.eval_users(art, uu[te], ii[te], 10 ** 9, seed)
            params = copy.deepcopy(b.params)
            params["mmr_lambda"] = 1.0
            scorer = rk.Scorer(b.ranker_text)
            creators = b.item_feats[:, b.schema.item_columns.index("creator")].astype(np.int64)
            res = ev.evaluate(art, scorer, uu[te], ii[te], ds.ts[te], params, creators, max_users=10 ** 9,
                              seed=seed, threads=args.threads, test_device=ds.device[te])
            if res["users"] != len(users):
                raise RuntimeError(f"user selection differs ({res['users']} vs {len(users)})")
            for m, name in (("ann", "recserve ann"), ("ann+ranker", "recserve ann+ranker"),
                            ("merged+ranker", "recserve merged+ranker"), ("full+mmr", "recserve full(l=1)")):
                out[name] = res["methods"][m]
            extra = ev.item_stats(art)
            recs = rank_all(art, user_vecs(art, users, b.params), users, 50)
            out["recserve ann-all"] = ev._metrics(recs, truths, *extra)
            factors = int(b.manifest["training"]["factors"])
        finally:
            b.close()
    rec = lambda a: [r[r >= 0] for r in a]
    t = time.perf_counter()
    # every baseline's settings chosen on one validation split of the training part (EASE's own)
    fit, val = bl.validation_split(train, 0.2, seed)
    vusers = np.flatnonzero(np.diff(val.indptr) > 0)
    vtruths = [set(val.indices[val.indptr[u]:val.indptr[u + 1]].tolist()) for u in vusers]

    def knn_fit(x, us, nb):
        return rec(bl.item_knn(x, us, 50, neighbours=nb or x.shape[1])), 0.0

    def als_fit(x, us, reg, alpha):
        return quality.implicit_als(x, us, factors, seed, reg, alpha, args.threads)

    out["popularity"] = ev._metrics(rec(bl.popularity(train, users, 50)), truths, *extra)
    (nb,), _ = quality.tuned(knn_fit, [(v,) for v in quality.KNN_NEIGHBOURS], fit, vusers, vtruths, extra)
    out["item-knn"] = ev._metrics(knn_fit(train, users, nb)[0], truths, *extra)
    lam, lam_scores = bl.tune_ease(train, seed=seed)
    out["ease"] = ev._metrics(rec(bl.ease(train, users, 50, lam=lam)), truths, *extra)
    grid = [(r, a) for r in quality.ALS_REG for a in quality.ALS_ALPHA]
    (reg, alpha), _ = quality.tuned(als_fit, grid, fit, vusers, vtruths, extra)
    als, _ = quality.implicit_als(train, users, factors, seed, reg, alpha, args.threads)
    out["implicit-als"] = ev._metrics(als, truths, *extra)
    base_s = time.perf_counter() - t
    return {"methods": out, "users": len(users), "lam": lam, "lam_scores": lam_scores, "als": [reg, alpha], "knn": nb,
            "build_s": build_s, "baselines_s": base_s, "train": int(train.nnz),
            "test": int(sum(len(t) for t in truths))}


def fmt(vals):
    v = np.asarray(vals)
    return f"{v.mean():.4f} ({v.min():.4f}..{v.max():.4f})"


def table(name: str, runs: list[dict], seeds) -> str:
    lines = [f"protocol {name}  seeds {','.join(map(str, seeds))}  users per seed {[r['users'] for r in runs]}  "
             f"train / test interactions per seed {[(r['train'], r['test']) for r in runs]}  "
             f"EASE lam per seed {[r['lam'] for r in runs]}  "
             f"ALS reg, alpha per seed {[r['als'] for r in runs]}  "
             f"item-kNN neighbours per seed {[r['knn'] or 'all' for r in runs]}",
             f"{'method':<24}" + "".join(f"{c:>26}" for c in SHOW)]
    for m in METHODS:
        lines.append(f"{m:<24}" + "".join(f"{fmt([r['methods'][m][c] for r in runs]):>26}" for c in SHOW))
    for c in ("recall@10", "ndcg@10"):
        diffs = [r["methods"]["recserve full(l=1)"][c] - r["methods"]["ease"][c] for r in runs]
        lines.append(f"recserve full(l=1) - EASE, {c}, per seed: " + ", ".join(f"{d:+.4f}" for d in diffs))
    lines.append(f"(recserve build {np.mean([r['build_s'] for r in runs]):.1f} s per seed; "
                 f"the baselines with their tuning {np.mean([r['baselines_s'] for r in runs]):.1f} s)")
    return "\n".join(lines)


def protocol_list(text: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"]: (a) per-user random 80/20, (b) per-user newest 20 %."""
    out = [x.strip() for x in text.split(",") if x.strip()]
    if not out or any(x not in ("a", "b") for x in out):
        raise argparse.ArgumentTypeError(f"a, b or a,b, not {text!r}")
    return out


def main(argv=None) -> int:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help=f"a MovieLens directory (read by trainer.movielens; default {DEFAULT_DATA}, "
                    "the run skipped when that is absent)")
    ap.add_argument("--data-dir", help="a directory in the trainer's input format (instead of --data)")
    ap.add_argument("--seeds", type=number_list(int, 0), default="0,1,2")
    ap.add_argument("--protocols", type=protocol_list, default="a,b", help="a, b or a,b")
    ap.add_argument("--factors", type=positive_int, default=64)
    ap.add_argument("--ranker-users", type=positive_int, default=3000)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: builds with --no-tune")
    ap.add_argument("--label-split", default="auto", choices=["auto", "time", "user", "user-random"],
                    help="recserve's ranker labels (auto: user-random for protocol a, user for b)")
    a = ap.parse_args(argv)
    seeds = a.seeds
    if a.data_dir is not None and a.data is not None:
        ap.error("--data and --data-dir: one or the other")
    if a.data_dir is not None:
        check_dir(ap, a.data_dir, "--data-dir")
    elif a.data is not None:
        check_movielens(ap, a.data, "--data")   # named on the command line: MovieLens ratings must be there
    elif not DEFAULT_DATA.is_dir() or not movielens_files(DEFAULT_DATA):
        print(f"protocols: skipped: the default {DEFAULT_DATA} holds no MovieLens data (u.data or ratings.csv; "
              "pass --data MOVIELENS_DIR or --data-dir DIR)")
        return 0
    if a.data_dir is not None:
        from trainer.io import DataError, load_dataset

        try:
            ds = load_dataset(a.data_dir)
        except DataError as exc:
            ap.error(f"--data-dir: {exc}")
        name = Path(a.data_dir).name
    else:
        p = Path(a.data if a.data is not None else DEFAULT_DATA)
        from trainer.io import DataError
        from trainer.movielens import load_movielens

        try:
            ds = load_movielens(str(p))
        except DataError as exc:            # files that are not MovieLens': refused in one line, as --data-dir's
            ap.error(f"--data: {exc}" if a.data is not None else f"the default {p}: {exc}")
        name = p.name
    print(f"{name}: {len(ds)} interactions, {ds.n_users} users, {ds.n_items} items; seeds {seeds}", flush=True)
    for proto in a.protocols:
        runs = []
        for s in seeds:
            test = split_random(ds, s) if proto == "a" else split_newest(ds)
            split = AUTO_LABEL_SPLIT.get(proto, "time") if a.label_split == "auto" else a.label_split
            runs.append(run_once(ds, test, s, a, split))
            print(f"  protocol {proto} seed {s} done", flush=True)
        label = {"a": "(a) per-user random 80/20", "b": "(b) per-user newest 20 %"}.get(proto, proto)
        print(table(label, runs, seeds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
