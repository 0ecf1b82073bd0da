"""The LightGBM lambdarank ranker: training rows from the served retrieval and crossing, then training.

Rows: for each user active in the label window, the merged candidates of the bundle as it was at the label
cut (``recserve._core.candidates`` + ``merge_candidates``), crossed by ``Crosser`` (the serving code) with
the context of the user's first label-window event; label = graded relevance of what the user did next
(0 none, 1 view, 2 click / low rating, 3 cart / good rating, 4 purchase). Groups are users; users with no
positive candidate are dropped (they carry no lambdarank gradient).
"""
from __future__ import annotations

import numpy as np

from recserve._core.candidates import context_vector
from trainer.retrieval import candidates_for

RELEVANCE = np.array([1, 2, 3, 4, 0], np.int32)   # view, click, cart, purchase; rating graded below


def relevance(event: np.ndarray, value: np.ndarray) -> np.ndarray:
    r = RELEVANCE[event]
    rated = event == 4
    r[rated] = np.where(np.nan_to_num(value[rated]) >= 4, 3, 2)
    return r


def label_map(user, item, rel):
    """{user: {item: max relevance}} for the label window."""
    out: dict[int, dict[int, int]] = {}
    for u, i, r in zip(user.tolist(), item.tolist(), rel.tolist()):
        d = out.setdefault(u, {})
        if r > d.get(i, 0):
            d[i] = r
    return out


def training_rows(art, users, labels: dict, first_ts: dict, params: dict, threads=2, progress=None):
    """(X float32, y int32, group sizes, user of each group, candidate recall) over ``users``."""
    crosser = art.crosser()
    now_days = art.now / 86400.0
    xs, ys, groups, gusers = [], [], [], []
    found = total = 0
    it = candidates_for(art, users, params, threads)
    for u, vec, _lists, merged in (progress(it, total=len(users)) if progress else it):
        lab = labels.get(u, {})
        y = np.array([lab.get(int(r), 0) for r in merged.rows], np.int32)
        new = [i for i in lab if i not in set(art.hist_items[art.hist_indptr[u]:art.hist_indptr[u + 1]].tolist())]
        total += len(new)
        found += int((y > 0).sum())
        if len(merged) == 0 or not (y > 0).any() or (y > 0).all():
            continue
        ctx = context_vector(first_ts[u])
        X = crosser.cross(art.user_feats[u], vec, merged.rows, ctx, merged.rank, merged.score, now_days)
        xs.append(X)
        ys.append(y)
        groups.append(len(y))
        gusers.append(u)
    if not xs:
        raise ValueError("no ranker training group has a positive candidate: too little data after the cut")
    return (np.vstack(xs), np.concatenate(ys), np.array(groups), np.array(gusers),
            found / max(total, 1))


LGB_PARAMS = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": 0.03,
              "num_leaves": 31, "min_data_in_leaf": 100, "feature_fraction": 0.7, "bagging_fraction": 0.9,
              "bagging_freq": 1, "lambdarank_truncation_level": 30, "deterministic": True,
              "force_row_wise": True, "verbose": -1}
# the first tree: the best source's score alone, reproduced by one deep single-feature regression tree
BASE_PARAMS = {"objective": "regression", "num_leaves": 255, "min_data_in_leaf": 5, "learning_rate": 1.0,
               "deterministic": True, "force_row_wise": True, "verbose": -1}
LABELS = ("binary",)


def group_ndcg(scores: np.ndarray, taken: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over groups with binary gains (``taken`` > 0), ties by row order."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    out, start = [], 0
    for n in groups.tolist():
        s, t = scores[start:start + n], taken[start:start + n] > 0
        start += n
        if not t.any():
            continue
        top = np.lexsort((np.arange(n), -s))[:k]
        out.append(float((t[top] * disc[:len(top)]).sum() / disc[:min(int(t.sum()), k)].sum()))
    return float(np.mean(out)) if out else 0.0


def train(X, y, groups, names, seed=0, threads=2, rounds=300, valid_frac=0.2, group_users=None,
          labels=LABELS, fixed_trees: int | None = None):
    """The ranker: a base tree, then lambdarank trees that correct it, early-stopped on held-out users.

    The base is the one source score (``src.<s>.score``) that orders the training groups best, fitted by a
    single deep tree on that feature alone, so the boosting starts from the strongest retrieval order and
    only keeps corrections that help held-out users (all of a user's groups on one side, so several label
    windows of one user never straddle training and validation). One model per label design in ``labels``
    (``graded``: the relevance grades; ``binary``: any interaction is a positive); of those and the base
    alone, the one with the best NDCG@10 of the taken items on the held-out users is kept.

    ``fixed_trees``: exactly that many trees (the base included), no early stopping and no "base only"
    choice: a ranker of a known size, for capacity planning and load tests."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    n_g = len(groups)
    is_valid = np.zeros(n_g, bool)
    if n_g >= 5:
        gu = np.arange(n_g) if group_users is None else np.asarray(group_users)
        uniq = np.unique(gu)
        if len(uniq) >= 5:
            held = rng.choice(uniq, size=max(1, int(valid_frac * len(uniq))), replace=False)
            is_valid = np.isin(gu, held)
    row_valid = np.repeat(is_valid, groups)
    safe = list(_safe(names))
    fit_rows = ~row_valid

    # the base: the source score that best orders the training groups on its own
    score_cols = [j for j, n in enumerate(names) if n.startswith("src.") and n.endswith(".score")]
    base_col, base_fit = None, -1.0
    for j in score_cols:
        q = group_ndcg(X[fit_rows, j], y[fit_rows], groups[~is_valid])
        if q > base_fit:
            base_col, base_fit = j, q
    base = None
    if base_col is not None:
        col = X[:, base_col].astype(np.float64)
        scale = 1.0 / (float(np.std(col)) or 1.0)
        base = lgb.train({**BASE_PARAMS, "num_threads": threads, "seed": seed,
                          "interaction_constraints": [[base_col]]},
                         lgb.Dataset(X, col * scale, feature_name=safe, free_raw_data=False), num_boost_round=1)
    params = {**LGB_PARAMS, "num_threads": threads, "seed": seed}
    tried = []
    if base is not None:
        entry = {"labels": "base only", "best_iteration": 1, "booster": base}
        if is_valid.any():
            entry["valid_ndcg@10"] = round(group_ndcg(base.predict(X[row_valid]), y[row_valid],
                                                      groups[is_valid]), 4)
        if not fixed_trees:
            tried.append(entry)
    if fixed_trees:
        if fixed_trees < 1:
            raise ValueError(f"fixed_trees must be >= 1, got {fixed_trees}")
        rounds = fixed_trees - (1 if base is not None else 0)
    for design in labels:
        yy = y if design == "graded" else (y > 0).astype(np.int32)
        dtrain = lgb.Dataset(X[fit_rows], yy[fit_rows], group=groups[~is_valid], feature_name=safe,
                             free_raw_data=False)
        sets, callbacks = [dtrain], []
        if is_valid.any():
            dvalid = lgb.Dataset(X[row_valid], yy[row_valid], group=groups[is_valid], reference=dtrain,
                                 free_raw_data=False)
            sets = [dvalid]
            callbacks = [] if fixed_trees else [lgb.early_stopping(50, verbose=False)]
        booster = lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=sets, callbacks=callbacks,
                            init_model=base)
        best = (booster.current_iteration() if fixed_trees
                else booster.best_iteration or booster.current_iteration())   # counts the base tree too
        entry = {"labels": design, "best_iteration": int(best), "booster": booster}
        if is_valid.any():
            pred = booster.predict(X[row_valid], num_iteration=best, raw_score=True)
            entry["valid_ndcg@10"] = round(group_ndcg(pred, y[row_valid], groups[is_valid]), 4)
        tried.append(entry)
    chosen = max(tried, key=lambda e: e.get("valid_ndcg@10", 0.0))
    info = {"rows": int(len(y)), "groups": int(n_g), "valid_groups": int(is_valid.sum()),
            "best_iteration": chosen["best_iteration"], "positives": int((y > 0).sum()),
            "base": names[base_col] if base_col is not None else None, "labels": chosen["labels"],
            "designs": [{k: v for k, v in e.items() if k != "booster"} for e in tried]}
    if "valid_ndcg@10" in chosen:
        info["valid_ndcg@10"] = chosen["valid_ndcg@10"]
    return chosen["booster"].model_to_string(num_iteration=chosen["best_iteration"]), info


def _safe(names):
    """LightGBM forbids some characters in feature names; the text model keeps positions anyway."""
    return [n.replace(".", "__") for n in names]


class Scorer:
    """Raw ranker scores for a float32 feature matrix (the fast Forest when present, else LightGBM)."""

    def __init__(self, model_text: str):
        self.impl = None
        try:
            from recserve._core.forest import Forest  # type: ignore

            self.impl = Forest.from_model_string(model_text)
        except Exception:  # noqa: BLE001 - Forest not available yet: LightGBM
            import lightgbm as lgb

            self.booster = lgb.Booster(model_str=model_text)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if self.impl is not None:
            return np.asarray(self.impl.predict(np.ascontiguousarray(X, np.float32)), np.float64)
        return self.booster.predict(X, raw_score=True, num_threads=1)
