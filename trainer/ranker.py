"""The LightGBM lambdarank ranker: training rows from the served retrieval and crossing, then training.

Rows: for each user active in the label window, the merged candidates of the bundle as it was at the label
cut (``recserve._core.candidates`` + ``merge_candidates``), crossed by ``Crosser`` (the serving code) with
the context (time, device) of the user's first label-window event; label = graded relevance of what the user did next
(0 none, 1 view, 2 click / low rating, 3 cart / good rating, 4 purchase). Groups are users; users with no
positive candidate are dropped (they carry no lambdarank gradient).
"""
from __future__ import annotations

import re

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


def training_rows(art, users, labels: dict, first: dict, params: dict, threads=2, progress=None):
    """(X float32, y int32, group sizes, user of each group, candidate recall) over ``users``; ``first``:
    user -> (time, device code) of her first label event, the context of her rows."""
    crosser = art.crosser()
    now_days = art.now / 86400.0
    xs, ys, groups, gusers = [], [], [], []
    found = total = 0
    hidden = set(art.unreleased.tolist())       # created after art.now: no candidate, no reachable label
    it = candidates_for(art, users, params, threads)
    for u, vec, _lists, merged in (progress(it, total=len(users)) if progress else it):
        lab = labels.get(u, {})
        y = np.array([lab.get(int(r), 0) for r in merged.rows], np.int32)
        consumed = set(art.consumed(u).tolist())
        new = [i for i in lab if i not in consumed and i not in hidden]
        total += len(new)
        found += int((y > 0).sum())
        if len(merged) == 0 or not (y > 0).any() or (y > 0).all():
            continue
        ctx = context_vector(*first[u])
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
# the first tree: the best source's rank alone, reproduced by one deep single-feature regression tree
BASE_PARAMS = {"objective": "regression", "num_leaves": 255, "min_data_in_leaf": 5, "learning_rate": 1.0,
               "deterministic": True, "force_row_wise": True, "verbose": -1}
CV_FOLDS = 3           # user folds that choose the number of correction trees
CV_PATIENCE = 20       # rounds without a better mean over the folds before the search stops
CV_MAX_USERS = 2000    # above: one held-out share of the users instead of the folds
VALID_SHARE = 0.2      # that share
VALID_PATIENCE = 50    # rounds without a better held-out NDCG before that search stops


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


def rank_target(rrank: np.ndarray) -> np.ndarray:
    """The base tree's target from a source's ``1 / (1 + rank)`` column: ``-log2(1 + rank)``, so that every
    step down the list costs about as much at rank 20 as at rank 2 relative to the corrections; rows absent
    from the list (0) one unit below the lowest listed row. In units of its spread over the listed rows."""
    r = np.asarray(rrank, np.float64)
    listed = r > 0
    t = np.zeros(len(r))
    if not listed.any():
        return t
    t[listed] = np.log2(r[listed])
    t[~listed] = float(t[listed].min()) - 1.0
    return t / (float(np.std(t[listed])) or 1.0)


def user_folds(group_users: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number of each group: users shuffled with ``seed`` and dealt round-robin into ``k`` folds, all of
    one user's groups (several label windows) in her fold."""
    uniq = np.unique(group_users)
    perm = np.random.default_rng(seed).permutation(uniq)
    fold_of = dict(zip(perm.tolist(), (np.arange(len(perm)) % k).tolist()))
    return np.array([fold_of[u] for u in np.asarray(group_users).tolist()], np.int64)


def train(X, y, groups, names, seed=0, threads=2, rounds=300, group_users=None,
          fixed_trees: int | None = None, folds: int = CV_FOLDS, patience: int = CV_PATIENCE,
          cv_max_users: int = CV_MAX_USERS):
    """The ranker: a base tree, then the number of lambdarank correction trees that cross-validation over
    user folds finds best (possibly none).

    The base is the rank in one source's list (``src.<s>.rrank``; the source whose order is the best on the
    training groups), reproduced by a single deep tree on that feature alone, so the boosting starts from
    the strongest retrieval order. It reads the rank, not the score: the ranker is trained on candidates of
    a bundle fitted on less data than the served one, whose scores are larger (longer histories, more
    co-occurrence), and a tree cannot extrapolate: scores above the training range would all fall into its
    last leaf and tie, while ranks keep their distribution.

    The correction trees (lambdarank on binary labels: any interaction is a positive) are chosen by
    ``folds``-fold cross-validation over users (all of a user's groups in one fold): the mean NDCG@10 over
    the held-out folds, for every number of trees up to ``rounds`` (stopped after ``patience`` rounds without
    a better mean), against the base alone; the final model is trained on every group with the best
    number. Fewer than ``2 * folds`` users: no cross-validation, ``rounds`` trees. More than
    ``cv_max_users`` users (where the folds would cost most and one held-out share is already quiet): the
    trees are early-stopped on a held-out ``VALID_SHARE`` of the users and that model is kept (or the base
    alone, if it orders the held-out users better).

    ``fixed_trees``: exactly that many trees (the base included), no cross-validation and no "base only"
    choice: a ranker of a known size, for capacity planning and load tests."""
    import lightgbm as lgb

    n_g = len(groups)
    safe = list(_safe(names))
    gu = np.arange(n_g) if group_users is None else np.asarray(group_users)
    yy = (y > 0).astype(np.int32)
    n_users = len(np.unique(gu))
    booster = None

    # the base: the source rank that best orders the training groups on its own
    rank_cols = [j for j, n in enumerate(names) if n.startswith("src.") and n.endswith(".rrank")]
    base_col, base_fit = None, -1.0
    for j in rank_cols:
        q = group_ndcg(X[:, j], y, groups)
        if q > base_fit:
            base_col, base_fit = j, q
    base = None
    if base_col is not None:
        base = lgb.train({**BASE_PARAMS, "num_threads": threads, "seed": seed,
                          "interaction_constraints": [[base_col]]},
                         lgb.Dataset(X, rank_target(X[:, base_col]), feature_name=safe, free_raw_data=False),
                         num_boost_round=1)
    params = {**LGB_PARAMS, "num_threads": threads, "seed": seed}
    info = {"rows": int(len(y)), "groups": int(n_g), "valid_groups": 0, "positives": int((y > 0).sum()),
            "base": names[base_col] if base_col is not None else None, "labels": "binary"}
    if fixed_trees is not None:
        if fixed_trees < 1:
            raise ValueError(f"fixed_trees must be >= 1, got {fixed_trees}")
        corrections = fixed_trees - (1 if base is not None else 0)
    elif base is None or n_users < 2 * folds:
        corrections = rounds
    elif n_users > cv_max_users:
        # many users: one held-out share of them is a quiet enough judge, and K folds would cost K times
        is_valid = user_folds(gu, int(round(1.0 / VALID_SHARE)), seed) == 0
        row_valid = np.repeat(is_valid, groups)
        base_valid = group_ndcg(base.predict(X[row_valid], raw_score=True), y[row_valid], groups[is_valid])
        dtrain = lgb.Dataset(X[~row_valid], yy[~row_valid], group=groups[~is_valid], feature_name=safe,
                             free_raw_data=False)
        dvalid = lgb.Dataset(X[row_valid], yy[row_valid], group=groups[is_valid], reference=dtrain,
                             free_raw_data=False)
        split_booster = lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=[dvalid], init_model=base,
                                  callbacks=[lgb.early_stopping(VALID_PATIENCE, verbose=False)])
        best = int(split_booster.best_iteration or split_booster.current_iteration())   # the base included
        pred = split_booster.predict(X[row_valid], num_iteration=best, raw_score=True)
        best_valid = group_ndcg(pred, y[row_valid], groups[is_valid])
        corrections = best - 1 if best_valid > base_valid else 0
        info["valid_groups"] = int(is_valid.sum())
        info["validation"] = {"users": int(len(np.unique(gu[is_valid]))), "base_ndcg@10": round(base_valid, 5),
                              "best_ndcg@10": round(best_valid, 5), "corrections": corrections}
        info["valid_ndcg@10"] = round(max(base_valid, best_valid), 4)
        if corrections > 0:
            booster = split_booster
    else:
        fold = user_folds(gu, folds, seed)
        row_fold = np.repeat(fold, groups)
        splits = [(np.flatnonzero(row_fold != f), np.flatnonzero(row_fold == f)) for f in range(folds)]
        base_pred = base.predict(X, raw_score=True)
        base_cv = float(np.mean([group_ndcg(base_pred[row_fold == f], y[row_fold == f], groups[fold == f])
                                 for f in range(folds)]))
        full = lgb.Dataset(X, yy, group=groups, feature_name=safe, free_raw_data=False)
        res = lgb.cv(params, full, num_boost_round=rounds, folds=splits, init_model=base,
                     callbacks=[lgb.early_stopping(patience, verbose=False)])
        del full
        curve = np.asarray(res["valid ndcg@10-mean"])
        best = int(np.argmax(curve))
        corrections = best + 1 if curve[best] > base_cv else 0
        info["cv"] = {"folds": folds, "base_ndcg@10": round(base_cv, 5),
                      "best_ndcg@10": round(float(curve[best]), 5), "corrections": corrections,
                      "curve_ndcg@10": [round(float(v), 5) for v in curve]}
        info["valid_ndcg@10"] = round(max(base_cv, float(curve[best])), 4)
    if booster is None:
        if corrections > 0:
            booster = lgb.train(params, lgb.Dataset(X, yy, group=groups, feature_name=safe, free_raw_data=False),
                                num_boost_round=int(corrections), init_model=base)
        else:
            booster = base
    # trees kept, the base included (the held-out path's booster holds the rounds after its best too)
    info["best_iteration"] = int(corrections) + (1 if base is not None else 0)
    if corrections == 0 and base is not None:
        info["labels"] = "base only"
    return booster.model_to_string(num_iteration=info["best_iteration"]), info


def _safe(names):
    """Feature names LightGBM accepts: letters, digits and ``_`` only (it refuses JSON's special characters,
    and an extra column may be called ``size[cm]``), each unique (``a.b`` and ``a__b`` would meet); the
    text model keeps positions anyway, the names are for people reading it."""
    out, seen = [], set()
    for j, n in enumerate(names):
        base = s = re.sub(r"[^0-9A-Za-z_]", "_", n.replace(".", "__"))
        while s in seen:
            s = f"{base}_{j}"
            j += len(names)             # another suffix, never one of the positions still to come
        seen.add(s)
        out.append(s)
    return out


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
