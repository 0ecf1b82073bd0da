"""``recserve-train build``: data -> served bundle (embeddings, index, i2i, popularity, features, ranker).

Time layout (never random): ``[ fit | label ) [ test ]``. The newest ``holdout`` share is held out for
evaluation; the ranker learns from candidates that the bundle fitted on ``fit`` would serve, labelled by
what users did in ``label``; the served bundle is then refitted on ``fit + label`` (everything before the
test cut). Serving-time parameters (decay/alpha of the user vector) are tuned on ``label``.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from recserve._core import candidates as C
from trainer import artifacts, cold, countries, neighbours, progress, ranker as rk, retrieval, split, writer
from trainer.ef import tune_ef
from trainer.io import Dataset, DataError
from trainer.similar import rows_breadth, similar_lists
from trainer.timing import Timer

log = logging.getLogger(__name__)

DEFAULT_CFG = {
    "factors": 64, "seed": 0, "embed": "als", "threads": 2, "als_iterations": 15, "als_reg": 20.0, "als_alpha": 20.0,
    "hnsw_M": 16, "hnsw_ef_construction": 200, "index_serial_max_items": 50000, "i2i_M": 50, "holdout": 0.1,
    "label_frac": 0.15, "ranker_users": 3000,
    "tune_users": 1000, "ranker_rounds": 300, "tune": True,
    # the serving ef: the smallest whose ANN recall against brute force at the served k reaches this
    "ef_recall": 0.95,
    # store each item's SimilarItems neighbours (trainer/similar.py): n_items x 85 int32 (34 MB per 100k)
    "similar_lists": True,
    # LightGBM's OpenMP threads spin; on a shared 2-core box 2 threads were 3x slower than 1
    "ranker_threads": 1, "label_windows": 2, "label_split": "time",
    # the evaluation's users: at most this many, drawn with the seed (recserve-train evaluate's defaults too)
    "eval_users": 2000,
    # item-item model: "auto" = EASE up to ease_max_items items (lambda and recency tuned on the label
    # window against co-occurrence cosine), cosine above; "ease" / "cosine" force one
    "i2i_model": "auto", "ease_max_items": 10000, "ease_lambda": 500.0, "ease_dropout": 0.0, "ease_M": 400,
    # the M kept EASE weights re-solved with the others fixed at zero (a few CG steps, each about one dense
    # n x n product), for catalogues up to ease_refit_max_items items
    "ease_refit_iters": 3, "ease_refit_max_items": 2000,
    # users' bounded histories (what the user vector and the i2i source read; every item of a user counts as
    # consumed, however old): "auto" = the longest training history, between 200 and history_max events
    "history_len": "auto", "history_max": 1000,
    # a user feature per category (her share of events in it) for at most this many categories, the ones
    # with the most items: every one is a column of the user table and of every ranker row
    "share_categories": 32,
    # trending per users' country for cold requests and warm ones' popular source (trainer/countries.py): a
    # list for every country with at least this many users who interacted (0: none), shrunk toward the global
    # list by a prior of this many decayed events; tuned on the label window's new users
    # (countries.tune_prior) unless too few or no tuning
    "country_min_users": 20, "country_prior": 100.0,
    # the popular source of users with a history: their country's list where the bundle has one ("country")
    # or the global list ("global")
    "warm_trending": "country",
    "grid": {"decay_short": [0.0, 0.2, 0.5, 1.0], "alpha": [0.2, 0.5, 0.8],
             "ease_lambda": [100.0, 250.0, 500.0, 1000.0], "ease_dropout": [0.25, 0.5, 1.0],
             "i2i_recent": [20, 50, "all"], "i2i_decay": [0.0, 0.03, 0.1],
             "quotas": [{"ann": 100, "i2i": 80, "session": 40, "popular": 40},
                        {"ann": 60, "i2i": 140, "session": 20, "popular": 20},
                        {"ann": 100, "i2i": 200, "session": 20, "popular": 20},
                        {"ann": 200, "i2i": 100, "session": 20, "popular": 20},
                        {"ann": 40, "i2i": 200, "session": 10, "popular": 10}]},
}


def _window(ds: Dataset, mask):
    """The window's interactions, and each user's first one's (time, device): the context of her rows."""
    u, i, t, e, v = ds.user[mask], ds.item[mask], ds.ts[mask], ds.event[mask], ds.value[mask]
    first: dict[int, tuple[float, int]] = {}
    for uu, tt, dd in zip(u.tolist(), t.tolist(), ds.device[mask].tolist()):
        if uu not in first:
            first[uu] = (tt, dd)      # interactions are sorted by (user, ts)
    return u, i, t, e, v, first


MIN_TRAINING_INTERACTIONS = 100     # below it the tuning windows hold next to nothing to learn from


def _active_with_history(art, users, rng, n):
    users = np.array(sorted(u for u in set(users.tolist()) if art.hist_indptr[u + 1] > art.hist_indptr[u]),
                     np.int64)
    if len(users) > n:
        users = np.sort(rng.choice(users, size=n, replace=False))
    return users


def _label_windows(ds: Dataset, train_mask, cfg: dict):
    """Yields (fit mask, label mask, label cut) of the ranker's label windows, the first one also the
    tuning window. ``time``: the newest ``label_frac`` of the training time, then earlier non-overlapping
    windows; ``user``: every user's own newest share, then her next-newest share; ``user-random``: a random
    share of every user's interactions, then other random draws (other seeds). ``user`` and ``user-random``
    fit on the other training interactions at the test cut: for a label, some of that data is later than it."""
    mode = cfg.get("label_split", "time")
    frac = cfg["label_frac"]
    if mode == "time":
        prev = None
        while True:
            before = train_mask if prev is None else ds.ts < prev
            ts = ds.ts[before]
            if not len(ts) or ts.min() == ts.max():     # one time (dates without hours): no older part to fit
                return
            label_cut = split.time_cut(ts, frac)
            label_mask = before & (ds.ts >= label_cut)
            fit_mask = ds.ts < label_cut
            if not fit_mask.any() or not label_mask.any():
                return
            yield fit_mask, label_mask, label_cut
            prev = label_cut
    taken = np.zeros(len(ds), bool)
    for w in range(int(cfg["label_windows"])):
        # every user's own newest (or random) share labels the ranker: every user can be a group
        if mode == "user-random":
            label_mask = split.per_user_label_mask(ds.user, ds.ts, train_mask, ds.n_users, frac,
                                                   cfg["seed"] + w, random=True)
            fit_mask = train_mask & ~label_mask
        else:
            label_mask = split.per_user_label_mask(ds.user, ds.ts, train_mask & ~taken, ds.n_users, frac)
            taken |= label_mask
            fit_mask = train_mask & ~taken
        if not fit_mask.any() or not label_mask.any():
            return
        yield fit_mask, label_mask, float(ds.ts[fit_mask].max()) + 1.0


def _evaluable(ds: Dataset, train_mask, test_mask, cut: float = float("inf")) -> bool:
    """Whether some held-out interaction's user has training interactions and its item is new to her (in
    none of them, however old: what the server excludes as consumed) and created by the ``cut``: what the
    evaluation scores (``trainer.evaluate.eval_users``)."""
    n = np.int64(ds.n_items)
    kept = np.unique(ds.user[train_mask].astype(np.int64) * n + ds.item[train_mask])
    tu, ti = ds.user[test_mask].astype(np.int64), ds.item[test_mask].astype(np.int64)
    known = np.bincount(ds.user[train_mask], minlength=ds.n_users)[tu] > 0
    if np.isfinite(cut):                # an item created after the cut is not in the evaluated catalogue
        known &= ~(ds.item_created[ti] > cut)
    return bool(np.any(known & ~np.isin(tu * n + ti, kept)))


def tune_vector_params(art, labels: dict, users: np.ndarray, params: dict, grid: dict, threads: int):
    """ANN-only recall@50 of new label-window items for each (decay_short, alpha) in ``grid``."""
    results = []
    points = list(itertools.product(grid["decay_short"], grid["alpha"]))
    for ds_, al in progress.bar(points, "tune vector (grid)", total=len(points)):
        p = dict(params, decay_short=ds_, alpha=al)
        vecs = retrieval.user_vecs(art, users, p)
        anns = retrieval.ann_batch(art, vecs, users, p, threads)
        rec = []
        hidden = set(art.unreleased.tolist())      # not in the catalogue at art.now: in no list
        for k, u in enumerate(users):
            consumed = set(art.consumed(u).tolist())
            new = set(labels[int(u)]) - consumed - hidden
            if not new:
                continue
            got = [r for r in anns[k][0].tolist() if r not in consumed][:50]
            rec.append(len(new & set(got)) / len(new))
        results.append({"decay_short": ds_, "alpha": al, "ann_recall@50": round(float(np.mean(rec)), 5)
                        if rec else 0.0})
    best = max(results, key=lambda r: r["ann_recall@50"])
    return best, results


def _new_label_items(art, labels: dict, users) -> list[set]:
    """Per user, her label items that she had not consumed by ``art.now`` and not created after it."""
    out = []
    hidden = set(art.unreleased.tolist())
    for u in users:
        out.append(set(labels.get(int(u), {})) - set(art.consumed(u).tolist()) - hidden)
    return out


def _rank_quality(rec: list, truths: list[set]) -> dict:
    nd, r50 = [], []
    disc = 1.0 / np.log2(np.arange(2, 12))
    for r, t in zip(rec, truths):
        if not t:
            continue
        g = np.array([1.0 if x in t else 0.0 for x in r[:10]])
        nd.append(float((g * disc[:len(g)]).sum() / disc[:min(len(t), 10)].sum()))
        r50.append(len(t & set(r[:50])) / len(t))
    return {"ndcg@10": round(float(np.mean(nd)), 5) if nd else 0.0,
            "recall@50": round(float(np.mean(r50)), 5) if r50 else 0.0}


def i2i_quality(art, truths: list[set], users, params: dict, i2i_rows, i2i_scores) -> dict:
    """NDCG@10 and recall@50 of the served i2i source alone (seeded by the history, consumed items
    excluded) on new label items."""
    rec = []
    n, decay = C.i2i_seed_count(params), float(params["i2i_decay"])
    hidden = set(art.unreleased.tolist())
    for u in users:
        h_items, _, _ = art.history(int(u))
        recent = C.recent_distinct(h_items, n)        # the i2i list of C.source_lists
        rows, _ = C.neighbour_sum(recent, np.exp(-decay * np.arange(len(recent))), i2i_rows, i2i_scores,
                                  50 + len(recent))
        consumed = set(art.consumed(int(u)).tolist())
        rec.append([r for r in rows.tolist() if r not in consumed and r not in hidden][:50])
    return _rank_quality(rec, truths)


def tune_i2i(art, ds: Dataset, fit_mask, labels: dict, users, params: dict, cfg: dict, grid: dict):
    """Chooses the item-item model (cosine, or EASE and its lambda when the catalogue is small enough) and
    the i2i source's recency (``i2i_recent``, ``i2i_decay``) by the i2i source's NDCG@10 on the label
    window. Sets ``art``'s i2i lists to the chosen ones; returns (cfg updates, params updates, report)."""
    from trainer import artifacts as A

    truths = _new_label_items(art, labels, users)
    wide = dict(params, i2i_recent=int(params["history_len"]), i2i_decay=0.0)
    choice = cfg.get("i2i_model", "auto")
    ease = [{"i2i_model": "ease", "ease_lambda": float(l)} for l in grid["ease_lambda"]]
    if choice == "auto":
        models = [{"i2i_model": "cosine"}] + (ease if A.i2i_model(cfg, ds.n_items) == "ease" else [])
    else:
        models = ease if A.i2i_model(cfg, ds.n_items) == "ease" else [{"i2i_model": "cosine"}]
    u, i, t = ds.user[fit_mask], ds.item[fit_mask], ds.ts[fit_mask]
    refit = A.ease_refit_iters(cfg, ds.n_items)
    gram = None
    lists, results = {}, []
    for m in progress.bar(models, "tune i2i (models)", total=len(models)):
        key = (m["i2i_model"], m.get("ease_lambda"), 0.0)
        if m["i2i_model"] == "ease":
            if gram is None:
                gram = neighbours.ease_gram(u, i, ds.n_users, ds.n_items)
            rows, scores = neighbours.ease_from_gram(gram, m["ease_lambda"], M=int(cfg["ease_M"]),
                                                     threads=int(cfg["threads"]), refit_iters=refit)
        else:
            rows, scores = neighbours.cooccurrence_neighbours(u, i, t, ds.n_users, ds.n_items, M=cfg["i2i_M"])
        lists[key] = (rows, scores)
        results.append({**m, **i2i_quality(art, truths, users, wide, rows, scores)})
    best = max(results, key=lambda r: (r["ndcg@10"], r["recall@50"]))
    if best["i2i_model"] == "ease":       # then the popularity-scaled regulariser at the chosen lambda
        dropouts = list(grid.get("ease_dropout", []))
        for q in progress.bar(dropouts, "tune i2i (EASE dropout)", total=len(dropouts)):
            m = {"i2i_model": "ease", "ease_lambda": best["ease_lambda"], "ease_dropout": float(q)}
            key = ("ease", m["ease_lambda"], m["ease_dropout"])
            lists[key] = neighbours.ease_from_gram(gram, m["ease_lambda"], M=int(cfg["ease_M"]),
                                                   threads=int(cfg["threads"]), dropout=m["ease_dropout"],
                                                   refit_iters=refit)
            results.append({**m, **i2i_quality(art, truths, users, wide, *lists[key])})
        best = max(results, key=lambda r: (r["ndcg@10"], r["recall@50"]))
    del gram
    key = (best["i2i_model"], best.get("ease_lambda"), best.get("ease_dropout", 0.0))
    art.i2i_rows, art.i2i_scores = lists[key]
    del lists
    recency = []
    points = list(itertools.product(grid["i2i_recent"], grid["i2i_decay"]))
    for n, d in progress.bar(points, "tune i2i (recency)", total=len(points)):
        n = int(params["history_len"]) if n == "all" else int(n)
        p = dict(params, i2i_recent=n, i2i_decay=float(d))
        recency.append({"i2i_recent": n, "i2i_decay": float(d),
                        **i2i_quality(art, truths, users, p, art.i2i_rows, art.i2i_scores)})
    rbest = max(recency, key=lambda r: (r["ndcg@10"], r["recall@50"], -r["i2i_recent"]))
    cfg_up = {"i2i_model": best["i2i_model"]}
    if best["i2i_model"] == "ease":
        cfg_up["ease_lambda"] = best["ease_lambda"]
        cfg_up["ease_dropout"] = best.get("ease_dropout", 0.0)
    report = {"metric": "i2i source ndcg@10 on new label items", "users": int(len(users)), "models": results,
              "recency": recency, "chosen": {**cfg_up, "i2i_recent": rbest["i2i_recent"],
                                             "i2i_decay": rbest["i2i_decay"]}}
    return cfg_up, {"i2i_recent": rbest["i2i_recent"], "i2i_decay": rbest["i2i_decay"]}, report


def _warm_trending(cfg: dict, art) -> str:
    """Warm users' popular source: their country's list where ``art`` has lists (and the build was not told
    otherwise). Set before the quotas are tuned and the ranker rows drawn: the ranker is trained on what it
    will serve."""
    return "country" if cfg["warm_trending"] == "country" and art.countries.n_lists else "global"


def tune_quotas(art, labels: dict, users, params: dict, grid: list, threads: int):
    """Share of the new label items among the merged candidates (the ranker's reach) per quota set."""
    truths = _new_label_items(art, labels, users)
    results = []
    for q in progress.bar(grid, "tune quotas (grid)", total=len(grid)):
        p = dict(params, quotas=dict(q))
        found = total = 0
        for (u, _v, _l, merged), t in zip(retrieval.candidates_for(art, users, p, threads), truths):
            total += len(t)
            found += len(t & set(merged.rows.tolist()))
        results.append({"quotas": dict(q), "candidate_recall": round(found / max(total, 1), 5)})
    best = max(results, key=lambda r: r["candidate_recall"])
    return best, results


def _check_created(ds: Dataset, train_mask: np.ndarray) -> None:
    """Refuses items whose ``created_at`` is after every training interaction with them (an export that
    stamps its own time, say): the catalogue would hold no item at any interaction's time, and the build
    failed later with reasons that pointed elsewhere (nothing to evaluate, no ranker training group)."""
    ts, created = ds.ts[train_mask], ds.item_created[ds.item[train_mask]]
    early = int(np.count_nonzero(created > ts))         # an unknown creation time (NaN) is never after
    if len(ts) and early == len(ts):
        raise DataError(f"items: created_at is after every training interaction with the item ({early} of "
                        f"{len(ts)}; the earliest such created_at {_iso(float(created.min()))}, the newest "
                        f"training interaction {_iso(float(ts.max()))}): no item was in the catalogue when "
                        "it was used")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def build(ds: Dataset, out: str | Path, cfg: dict | None = None, params: dict | None = None,
          timer: Timer | None = None, before_publish=None, evaluated: bool = False) -> Path:
    """Train on ``ds`` and write a bundle version under ``out``; ``before_publish(dir)`` runs on the
    complete version before it is renamed into place and CURRENT names it (the evaluation). ``evaluated``:
    the held-out data must hold something to evaluate, checked before any training."""
    cfg = {**DEFAULT_CFG, **(cfg or {})}
    params = copy.deepcopy(params or C.DEFAULT_PARAMS)
    timer = timer or Timer()
    short = artifacts.ease_memory_shortfall(ds.n_items, int(cfg["ease_M"])) \
        if artifacts.i2i_model(cfg, ds.n_items) == "ease" else None
    if short and cfg["i2i_model"] == "ease":    # refused before any training, not killed half-way through
        raise DataError(f"{short}: build with --i2i-model cosine")
    if short:                                   # auto: the other model, said on stderr and in the manifest
        cfg["i2i_model"] = "cosine"
        print(f"note: {short}: the item-to-item model is co-occurrence cosine", file=sys.stderr)
    rng = np.random.default_rng(cfg["seed"])
    cat = artifacts.catalogue(ds, int(cfg["share_categories"]))
    if cfg["holdout"] == 0:      # production: serve everything, nothing held out (no evaluation possible)
        cut = float(ds.ts.max()) + 1.0
        train_mask, test_mask = np.ones(len(ds), bool), np.zeros(len(ds), bool)
    else:
        train_mask, test_mask, cut = split.split_masks(ds.ts, cfg["holdout"])
    n_train = int(train_mask.sum())
    if n_train < MIN_TRAINING_INTERACTIONS:
        raise DataError(f"too little training data: {n_train} interaction(s) before the held-out "
                        f"{cfg['holdout']:g} (at least {MIN_TRAINING_INTERACTIONS}; lower --holdout or add data)")
    _check_created(ds, train_mask)
    if cfg.get("history_len", "auto") == "auto":
        longest = int(np.bincount(ds.user[train_mask], minlength=ds.n_users).max()) if train_mask.any() else 0
        params["history_len"] = int(min(int(cfg["history_max"]), max(200, longest)))
    elif cfg.get("history_len") is not None:
        params["history_len"] = int(cfg["history_len"])
    if evaluated and not _evaluable(ds, train_mask, test_mask, cut):
        raise DataError(f"nothing to evaluate: no user of the held-out {cfg['holdout']:g} has training "
                        "interactions and an item new to her (raise --holdout, or build with --no-evaluate)")
    label_windows = _label_windows(ds, train_mask, cfg)
    first = next(label_windows, None)
    if first is None:       # nothing is both older than a label and a label: no ranker can be fitted
        raise DataError(f"no label window for the ranker (--label-split {cfg.get('label_split', 'time')}): "
                        "it leaves nothing to fit on or nothing to label (a user needs two training "
                        "interactions or more; a time window needs training interactions at two times "
                        "or more: try --label-split user)")
    fit_mask, label_mask, label_cut = first

    lu, li, lt, le, lv, lfirst = _window(ds, label_mask)
    labels = rk.label_map(lu, li, rk.relevance(le, lv))
    tuning = {"i2i_note": short} if short else {}
    factor_grid = [int(f) for f in (cfg["factors"] if isinstance(cfg["factors"], (list, tuple))
                                    else [cfg["factors"]])]
    best_f = None
    for f in factor_grid:
        with timer(f"fit@label_cut[f={f}]"), timer.prefix(f"fit@label_cut[f={f}]"):
            # tune_i2i sets the item-to-item lists it chooses: none fitted here to be thrown away
            cand = artifacts.fit(ds, fit_mask, label_cut, cat, params, {**cfg, "factors": f}, timer,
                                 i2i=not cfg["tune"])
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
        users = _active_with_history(art_fit, lu, rng, cfg["tune_users"])
        with timer("tune_vector"):
            best, grid = tune_vector_params(art_fit, labels, users, params, cfg["grid"], cfg["threads"])
            params["decay_short"], params["alpha"] = best["decay_short"], best["alpha"]
            tuning.update({"metric": "ann_recall@50 on the label window", "users": int(len(users)),
                           "grid": grid, "chosen": best})
        with timer("tune_i2i"):
            cfg_up, p_up, tuning["i2i"] = tune_i2i(art_fit, ds, fit_mask, labels, users, params, cfg, cfg["grid"])
            cfg = {**cfg, **cfg_up}
            params.update(p_up)
        with timer("tune_country"):
            prior, tuning["country_prior"] = countries.tune_prior(
                ds, fit_mask, label_mask, label_cut, ds.n_items, params["event_weights"], params["half_life_days"],
                int(cfg["country_min_users"]), cfg["country_prior"], seed=cfg["seed"])
            cfg = {**cfg, "country_prior": prior}
            # the lists of the chosen prior, which the quotas, the ranker rows and the evaluation read
            art_fit.countries = artifacts.countries_of(ds, fit_mask, label_cut, params, cfg)
            params["warm_trending"] = _warm_trending(cfg, art_fit)
        with timer("tune_quotas"):
            qbest, qgrid = tune_quotas(art_fit, labels, users, params, cfg["grid"]["quotas"], cfg["threads"])
            params["quotas"] = dict(qbest["quotas"])
            tuning["quotas"] = {"metric": "share of new label items among the merged candidates",
                                "cap": int(params["cap"]), "grid": qgrid, "chosen": qbest}
        with timer("tune_ef"):
            vecs = retrieval.user_vecs(art_fit, users, params)
            n_hist = np.diff(art_fit.hist_indptr)[users]
            ks = np.array([C.ann_first_k(params, int(n), len(art_fit.item_emb)) for n in n_hist])
            ebest, egrid = tune_ef(art_fit.index, art_fit.item_emb, vecs, ks, float(cfg["ef_recall"]),
                                   threads=cfg["threads"])
            params["ef"] = int(ebest["ef"])
            tuning["ef"] = {"metric": "ANN recall against brute force at the k the server asks",
                            "target": float(cfg["ef_recall"]), "grid": egrid, "chosen": ebest}
            # SimilarItems asks with an item's own vector, for similar_k neighbours: an easier query
            n_items = len(art_fit.item_emb)
            items = np.random.default_rng(cfg["seed"] + 1).choice(n_items, min(cfg["tune_users"], n_items),
                                                                  replace=False)
            iks = np.full(len(items), C.similar_k(C.SIMILAR_K, 1.0, n_items))
            sbest, sgrid = tune_ef(art_fit.index, art_fit.item_emb, art_fit.item_emb[items], iks,
                                   float(cfg["ef_recall"]), threads=cfg["threads"], truth_k=C.SIMILAR_K)
            params["similar_ef"] = int(sbest["ef"])
            tuning["similar_ef"] = {"metric": "share of an item's exact nearest SIMILAR_K found among the k "
                                              "neighbours SimilarItems asks for", "k": int(iks[0]),
                                    "truth_k": C.SIMILAR_K,
                                    "target": float(cfg["ef_recall"]), "grid": sgrid, "chosen": sbest}
            art_fit.index.set_ef(params["ef"])
    else:
        cfg = {**cfg, "i2i_model": artifacts.i2i_model(cfg, ds.n_items)}
    params["warm_trending"] = _warm_trending(cfg, art_fit)
    with timer("ranker_rows"):
        users = _active_with_history(art_fit, lu, rng, cfg["ranker_users"])
        X, y, groups, gusers, cand_recall = rk.training_rows(art_fit, users, labels, lfirst, params,
                                                              cfg["threads"], progress.labelled("ranker rows"))
    feature_names = list(art_fit.schema.names)
    del art_fit
    # further label windows add training groups (small data sets have few users per window): earlier,
    # non-overlapping time windows, each user's next-newest share, or another random draw per user
    windows = [{"from": label_cut, "to": cut, "groups": int(len(groups))}]
    for w in range(1, int(cfg["label_windows"])):
        try:
            w_fit, w_mask, w_cut = next(label_windows)
        except (StopIteration, ValueError):
            break
        with timer(f"window{w}"), timer.prefix(f"window{w}"):
            art_w = artifacts.fit(ds, w_fit, w_cut, cat, params, cfg, timer)
            wu, wi, _wt, we, wv, wfirst = _window(ds, w_mask)
            wl = rk.label_map(wu, wi, rk.relevance(we, wv))
            try:
                Xw, yw, gw, guw, _r = rk.training_rows(art_w, _active_with_history(art_w, wu, rng, cfg["ranker_users"]),
                                                       wl, wfirst, params, cfg["threads"],
                                                       progress.labelled(f"ranker rows (window {w})"))
            except ValueError:
                break
            del art_w
        X, y, groups = np.vstack([X, Xw]), np.concatenate([y, yw]), np.concatenate([groups, gw])
        gusers = np.concatenate([gusers, guw])
        windows.append({"from": w_cut if cfg["label_split"] == "time" else None,
                        "to": windows[-1]["from"] if cfg["label_split"] == "time" else None,
                        "groups": int(len(gw))})
    with timer("ranker_train"):
        ranker_text, rinfo = rk.train(X, y, groups, feature_names, seed=cfg["seed"],
                                      threads=cfg["ranker_threads"], rounds=cfg["ranker_rounds"],
                                      fixed_trees=cfg.get("ranker_trees"),
                                      group_users=gusers)
        rinfo["candidate_recall"] = round(cand_recall, 4)
        rinfo["label_windows"] = windows
    del X, y
    with timer("fit@test_cut"), timer.prefix("fit@test_cut"):
        art = artifacts.fit(ds, train_mask, cut, cat, params, cfg, timer)
    if cfg["similar_lists"]:
        with timer("similar_lists"):
            sim_ef = int(params.get("similar_ef") or params.get("ef") or art.index.ef)
            art.sim_rows = similar_lists(art.index, art.item_emb, sim_ef, cfg["threads"])
            art.index_info["similar_rows_ef"] = rows_breadth(sim_ef, len(art.item_emb))
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
                     "label_frac": cfg["label_frac"], "label_split": cfg["label_split"], "embedding": art.embed_method,
                     "factors": cfg["factors"],
                     "seed": cfg["seed"], "ranker": rinfo, "tuning": tuning, "data_report": ds.report,
                     "config": {k: v for k, v in cfg.items() if k != "grid"}},
        "evaluation": {},
    }
    manifest["training"]["timings"] = timer.as_dict()
    with timer("write"):
        path = writer.write_bundle(out, ds, cat, art, ranker_text, manifest, before_publish=before_publish)
    return path


def evaluate_bundle(bundle_dir: Path, ds: Dataset, max_users=None, seed=None, threads=2) -> dict:
    """Evaluate the bundle on disk on ``ds``'s interactions at/after the bundle's test cut, on at most
    ``max_users`` users drawn with ``seed`` (None: the build's, so that its own data reproduces its record)."""
    from recserve.bundle import Bundle
    from trainer import evaluate as ev

    b = Bundle.open(bundle_dir)
    try:
        training = b.manifest.get("training", {})
        if seed is None:
            seed = int(training.get("seed", DEFAULT_CFG["seed"]))
        if max_users is None:
            max_users = int(training.get("config", {}).get("eval_users", DEFAULT_CFG["eval_users"]))
        art = artifacts_from_bundle(b)
        ids = [b.tables.id_of("user", r) for r in range(b.n_users)]
        row = {u: k for k, u in enumerate(ids)}
        item_ids = [b.tables.id_of("item", r) for r in range(b.n_items)]
        irow = {u: k for k, u in enumerate(item_ids)}
        cut = float(b.manifest["training"]["cut"])
        m = ds.ts >= cut
        if not m.any():
            whole = " (built with --holdout 0, it trained on all of its data: evaluate it on newer logs)" \
                if float(training.get("holdout", 1)) == 0 else ""
            raise DataError(f"nothing to evaluate: no interaction at or after the bundle's cut "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(cut))} UTC{whole}")
        u_map = np.array([row.get(str(x), -1) for x in ds.user_ids], np.int64)
        i_map = np.array([irow.get(str(x), -1) for x in ds.item_ids], np.int64)
        tu, ti = u_map[ds.user[m]], i_map[ds.item[m]]
        ok = (tu >= 0) & (ti >= 0)
        # held-out pairs the bundle cannot score (next week's logs: items and users newer than it), counted
        # as distinct (user, item) pairs like truth_not_released; an unknown item only for a user with a history
        pair = ds.user[m].astype(np.int64) * ds.n_items + ds.item[m]
        with_history = np.zeros(len(tu), bool)
        with_history[tu >= 0] = np.diff(art.hist_indptr)[tu[tu >= 0]] > 0
        unknown_users = len(np.unique(pair[tu < 0]))
        unknown_items = len(np.unique(pair[with_history & (ti < 0)]))
        # users of no bundle history with rows before the cut in ds: neither ranked nor new after the cut
        earlier = np.zeros(ds.n_users, bool)
        earlier[ds.user[ds.ts < cut]] = True
        stranded = len(np.unique(pair[~with_history & earlier[ds.user[m]]]))
        scorer = rk.Scorer(b.ranker_text)
        creators = b.item_feats[:, b.schema.item_columns.index("creator")].astype(np.int64)
        try:
            res = ev.evaluate(art, scorer, tu[ok], ti[ok], ds.ts[m][ok], b.params, creators, max_users=max_users,
                              seed=seed, threads=threads, progress=progress.labelled("evaluate"),
                              test_device=ds.device[m][ok])
        except ev.NoUserWithHistory:        # logs of new users only: their rows below are the evaluation
            res = ev.without_users()
        res["held_out_interactions"] = int(ok.sum())
        # the users new after the cut, whom the methods above leave out: the server's cold-start answers
        res["cold_users"] = cold.evaluate_cold(b, ds, art, max_users=max_users, seed=seed)
        if res["users"] == 0 and not res["cold_users"]:
            raise DataError("nothing to evaluate: no held-out user has a training history and a new item, and "
                            "none is new after the bundle's cut")
        res["truth_unknown_items"], res["truth_unknown_users"] = unknown_items, unknown_users
        res["truth_no_history"] = stranded
        res["cut"] = cut
        res["seed"], res["eval_users"] = int(seed), int(max_users)     # the user sample: reproducible from these
        return res
    finally:
        b.close()


def artifacts_from_bundle(b) -> artifacts.Artifacts:
    t = b.tables
    a = {n: np.array(t.array(n)) for n in ("hist_indptr", "hist_items", "hist_ts", "hist_event", "i2i_rows",
                                           "i2i_scores", "pop_rows", "pop_scores", "trend_rows", "trend_scores",
                                           "pop_cat_indptr", "pop_cat_rows", "user_emb")}
    if t.has_array("consumed_users"):       # a bundle without them: every user's consumed items are her history's
        a.update({n: np.array(t.array(n)) for n in ("consumed_users", "consumed_indptr", "consumed_items")})
    if t.has_array("country_indptr"):      # the per-country trending lists (trainer/countries.py)
        a["countries"] = countries.CountryLists(
            [t.id_of("country", c) for c in range(t.n_ids("country"))],
            *(np.array(t.array(n)) for n in ("user_country", "country_indptr", "country_rows", "country_scores",
                                             "country_weight")))
    seen = np.zeros(b.n_items, bool)
    seen[a["pop_rows"]] = a["pop_scores"] > 0
    now = float(t.meta("now"))
    created = b.item_created()
    unreleased = C.Releases(created).hidden(now) if created is not None else np.zeros(0, np.int64)
    return artifacts.Artifacts(now=now, item_emb=np.array(b.item_emb),
                               item_feats=np.array(b.item_feats), user_feats=np.array(b.user_feats),
                               schema=b.schema, seen_items=seen, index=b.index, index_info=b.manifest["index"],
                               embed_method=b.manifest["training"].get("embedding", "?"), unreleased=unreleased,
                               **a)


def record_evaluation(bundle_dir: Path, result: dict) -> None:
    from trainer import report

    with writer.bundle_lock(bundle_dir):      # one evaluate at a time, from the manifest read to the renames
        text = writer.sealed_manifest_text(bundle_dir, "evaluation", result)
        manifest = json.loads(text)
        unused = report.columns_not_used(manifest.get("training", {}).get("data_report", {}))
        # the record and its two reports replaced together: an interrupt leaves all three old or all new
        writer.replace_together(bundle_dir, {
            "report.json": json.dumps({**result, "columns_not_used": unused}, indent=1),
            "report.html": report.render(manifest, result),
            "manifest.json": text})
