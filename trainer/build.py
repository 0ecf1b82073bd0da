"""``recserve-train build``: data -> served bundle (embeddings, index, i2i, popularity, features, ranker).

Time layout (never random): ``[ fit | label ) [ test ]``. The newest ``holdout`` share is held out for
evaluation; the ranker learns from candidates that the bundle fitted on ``fit`` would serve, labelled by
what users did in ``label``; the served bundle is then refitted on ``fit + label`` (everything before the
test cut). Serving-time parameters (decay/alpha of the user vector) are tuned on ``label``.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recserve._core import candidates as C
from trainer import artifacts, ranker as rk, retrieval, split, writer
from trainer.io import Dataset
from trainer.timing import Timer

log = logging.getLogger(__name__)

DEFAULT_CFG = {
    "factors": 64, "seed": 0, "embed": "als", "threads": 2, "als_iterations": 15, "als_reg": 20.0, "als_alpha": 20.0, "hnsw_M": 16,
    "hnsw_ef_construction": 200, "i2i_M": 50, "holdout": 0.1, "label_frac": 0.15, "ranker_users": 3000,
    "tune_users": 1000, "ranker_rounds": 300, "tune": True,
    # LightGBM's OpenMP threads spin; on a shared 2-core box 2 threads were 3x slower than 1
    "ranker_threads": 1, "label_windows": 2, "label_split": "time",
    "grid": {"decay_short": [0.2, 0.5, 1.0], "alpha": [0.2, 0.5, 0.8]},
}


def _progress(desc):
    return lambda it, total=None: tqdm(it, total=total, desc=desc, disable=None, leave=False, mininterval=0.5)


def _window(ds: Dataset, mask):
    u, i, t, e, v = ds.user[mask], ds.item[mask], ds.ts[mask], ds.event[mask], ds.value[mask]
    first: dict[int, float] = {}
    for uu, tt in zip(u.tolist(), t.tolist()):
        if uu not in first:
            first[uu] = tt            # interactions are sorted by (user, ts)
    return u, i, t, e, v, first


def _active_with_history(art, users, rng, n):
    users = np.array(sorted(u for u in set(users.tolist()) if art.hist_indptr[u + 1] > art.hist_indptr[u]))
    if len(users) > n:
        users = np.sort(rng.choice(users, size=n, replace=False))
    return users


def tune_vector_params(art, labels: dict, users: np.ndarray, params: dict, grid: dict, threads: int):
    """ANN-only recall@50 of new label-window items for each (decay_short, alpha) in ``grid``."""
    results = []
    for ds_ in grid["decay_short"]:
        for al in grid["alpha"]:
            p = dict(params, decay_short=ds_, alpha=al)
            vecs = retrieval.user_vecs(art, users, p)
            anns = retrieval.ann_batch(art, vecs, users, p, threads)
            rec = []
            for k, u in enumerate(users):
                hist = set(art.hist_items[art.hist_indptr[u]:art.hist_indptr[u + 1]].tolist())
                new = set(labels[int(u)]) - hist
                if not new:
                    continue
                got = [r for r in anns[k][0].tolist() if r not in hist][:50]
                rec.append(len(new & set(got)) / len(new))
            results.append({"decay_short": ds_, "alpha": al, "ann_recall@50": round(float(np.mean(rec)), 5)
                            if rec else 0.0})
    best = max(results, key=lambda r: r["ann_recall@50"])
    return best, results


def build(ds: Dataset, out: str | Path, cfg: dict | None = None, params: dict | None = None,
          timer: Timer | None = None) -> Path:
    cfg = {**DEFAULT_CFG, **(cfg or {})}
    params = copy.deepcopy(params or C.DEFAULT_PARAMS)
    timer = timer or Timer()
    rng = np.random.default_rng(cfg["seed"])
    cat = artifacts.catalogue(ds)
    if cfg["holdout"] == 0:      # production: serve everything, nothing held out (no evaluation possible)
        cut = float(ds.ts.max()) + 1.0
        train_mask, test_mask = np.ones(len(ds), bool), np.zeros(len(ds), bool)
    else:
        train_mask, test_mask, cut = split.split_masks(ds.ts, cfg["holdout"])
    if cfg.get("label_split", "time") == "time":
        # the newest label_frac of the training time labels the ranker (the users active last are groups)
        label_cut = split.time_cut(ds.ts[train_mask], cfg["label_frac"])
        fit_mask = ds.ts < label_cut
        label_mask = train_mask & ~fit_mask
    else:
        # every user's own newest (or random) share labels the ranker: every user can be a group
        label_mask = split.per_user_label_mask(ds.user, ds.ts, train_mask, ds.n_users, cfg["label_frac"],
                                               cfg["seed"], random=cfg["label_split"] == "user-random")
        fit_mask = train_mask & ~label_mask
        label_cut = float(ds.ts[fit_mask].max()) + 1.0
        cfg = {**cfg, "label_windows": 1}

    lu, li, lt, le, lv, lfirst = _window(ds, label_mask)
    labels = rk.label_map(lu, li, rk.relevance(le, lv))
    tuning = {}
    factor_grid = [int(f) for f in (cfg["factors"] if isinstance(cfg["factors"], (list, tuple))
                                    else [cfg["factors"]])]
    best_f = None
    for f in factor_grid:
        with timer(f"fit@label_cut[f={f}]"), timer.prefix(f"fit@label_cut[f={f}]"):
            cand = artifacts.fit(ds, fit_mask, label_cut, cat, params, {**cfg, "factors": f}, timer)
        if len(factor_grid) > 1:
            users = _active_with_history(cand, lu, np.random.default_rng(cfg["seed"]), cfg["tune_users"])
            score, _ = tune_vector_params(cand, labels, users, params,
                                          {"decay_short": [params["decay_short"]], "alpha": [params["alpha"]]},
                                          cfg["threads"])
            tuning.setdefault("factors", []).append({"factors": f, "ann_recall@50": score["ann_recall@50"]})
            if best_f is None or score["ann_recall@50"] > best_f[1]:
                best_f, art_fit = (f, score["ann_recall@50"]), cand
        else:
            best_f, art_fit = (f, None), cand
        del cand
    cfg = {**cfg, "factors": best_f[0]}
    if cfg["tune"]:
        with timer("tune"):
            users = _active_with_history(art_fit, lu, rng, cfg["tune_users"])
            best, grid = tune_vector_params(art_fit, labels, users, params, cfg["grid"], cfg["threads"])
            params["decay_short"], params["alpha"] = best["decay_short"], best["alpha"]
            tuning.update({"metric": "ann_recall@50 on the label window", "users": int(len(users)),
                           "grid": grid, "chosen": best})
    with timer("ranker_rows"):
        users = _active_with_history(art_fit, lu, rng, cfg["ranker_users"])
        X, y, groups, _gu, cand_recall = rk.training_rows(art_fit, users, labels, lfirst, params,
                                                           cfg["threads"], _progress("ranker rows"))
    feature_names = list(art_fit.schema.names)
    del art_fit
    # earlier, non-overlapping label windows add training groups (small data sets have few users per window)
    windows = [{"from": label_cut, "to": cut, "groups": int(len(groups))}]
    prev = label_cut
    for w in range(1, int(cfg["label_windows"])):
        before = ds.ts < prev
        try:
            w_cut = split.time_cut(ds.ts[before], cfg["label_frac"])
        except ValueError:
            break
        w_mask = before & (ds.ts >= w_cut)
        if not (ds.ts < w_cut).any() or not w_mask.any():
            break
        with timer(f"window{w}"), timer.prefix(f"window{w}"):
            art_w = artifacts.fit(ds, ds.ts < w_cut, w_cut, cat, params, cfg, timer)
            wu, wi, _wt, we, wv, wfirst = _window(ds, w_mask)
            wl = rk.label_map(wu, wi, rk.relevance(we, wv))
            try:
                Xw, yw, gw, _g, _r = rk.training_rows(art_w, _active_with_history(art_w, wu, rng, cfg["ranker_users"]),
                                                      wl, wfirst, params, cfg["threads"])
            except ValueError:
                break
            del art_w
        X, y, groups = np.vstack([X, Xw]), np.concatenate([y, yw]), np.concatenate([groups, gw])
        windows.append({"from": w_cut, "to": prev, "groups": int(len(gw))})
        prev = w_cut
    with timer("ranker_train"):
        ranker_text, rinfo = rk.train(X, y, groups, feature_names, seed=cfg["seed"],
                                      threads=cfg["ranker_threads"], rounds=cfg["ranker_rounds"])
        rinfo["candidate_recall"] = round(cand_recall, 4)
        rinfo["label_windows"] = windows
    del X, y
    with timer("fit@test_cut"), timer.prefix("fit@test_cut"):
        art = artifacts.fit(ds, train_mask, cut, cat, params, cfg, timer)
    manifest = {
        "inputs": ds.files,
        "counts": {"users": int(ds.n_users), "items": int(ds.n_items), "interactions": int(train_mask.sum()),
                   "interactions_total": int(len(ds)), "held_out": int(test_mask.sum()),
                   "cold_items": int((~art.seen_items).sum()), "categories": int(len(cat.categories)),
                   "creators": int(len(cat.creators))},
        "dim": int(art.item_emb.shape[1]),
        "feature_schema": art.schema.to_dict(),
        "index": art.index_info,
        "params": params,
        "training": {"cut": cut, "label_cut": label_cut, "now": cut, "holdout": cfg["holdout"],
                     "label_frac": cfg["label_frac"], "label_split": cfg["label_split"], "embedding": art.embed_method, "factors": cfg["factors"],
                     "seed": cfg["seed"], "ranker": rinfo, "tuning": tuning, "data_report": ds.report,
                     "config": {k: v for k, v in cfg.items() if k != "grid"}},
        "evaluation": {},
    }
    manifest["training"]["timings"] = timer.as_dict()
    with timer("write"):
        path = writer.write_bundle(out, ds, cat, art, ranker_text, manifest)
    return path


def evaluate_bundle(bundle_dir: Path, ds: Dataset, max_users=2000, seed=0, threads=2) -> dict:
    """Evaluate the bundle on disk on ``ds``'s interactions at/after the bundle's test cut."""
    from recserve.bundle import Bundle
    from trainer import evaluate as ev

    b = Bundle.open(bundle_dir)
    try:
        art = artifacts_from_bundle(b)
        ids = [b.tables.id_of("user", r) for r in range(b.n_users)]
        row = {u: k for k, u in enumerate(ids)}
        item_ids = [b.tables.id_of("item", r) for r in range(b.n_items)]
        irow = {u: k for k, u in enumerate(item_ids)}
        cut = float(b.manifest["training"]["cut"])
        m = ds.ts >= cut
        u_map = np.array([row.get(str(x), -1) for x in ds.user_ids], np.int64)
        i_map = np.array([irow.get(str(x), -1) for x in ds.item_ids], np.int64)
        tu, ti = u_map[ds.user[m]], i_map[ds.item[m]]
        ok = (tu >= 0) & (ti >= 0)
        scorer = rk.Scorer(b.ranker_text)
        creators = b.item_feats[:, b.schema.item_columns.index("creator")].astype(np.int64)
        res = ev.evaluate(art, scorer, tu[ok], ti[ok], ds.ts[m][ok], b.params, creators, max_users=max_users,
                          seed=seed, threads=threads, progress=_progress("evaluate"))
        res["held_out_interactions"] = int(ok.sum())
        res["cut"] = cut
        return res
    finally:
        b.close()


def artifacts_from_bundle(b) -> artifacts.Artifacts:
    t = b.tables
    a = {n: np.array(t.array(n)) for n in ("hist_indptr", "hist_items", "hist_ts", "hist_event", "i2i_rows",
                                           "i2i_scores", "pop_rows", "pop_scores", "trend_rows", "trend_scores",
                                           "pop_cat_indptr", "pop_cat_rows", "user_emb")}
    seen = np.zeros(b.n_items, bool)
    seen[a["pop_rows"]] = a["pop_scores"] > 0
    return artifacts.Artifacts(now=float(t.meta("now")), item_emb=np.array(b.item_emb),
                               item_feats=np.array(b.item_feats), user_feats=np.array(b.user_feats),
                               schema=b.schema, seen_items=seen, index=b.index, index_info=b.manifest["index"],
                               embed_method=b.manifest["training"].get("embedding", "?"), **a)


def record_evaluation(bundle_dir: Path, result: dict) -> None:
    from trainer import report

    writer.update_manifest(bundle_dir, "evaluation", result)
    writer.write_report(bundle_dir, "report.json", json.dumps(result, indent=1))
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    writer.write_report(bundle_dir, "report.html", report.render(manifest, result))
