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


def train(X, y, groups, names, seed=0, threads=2, rounds=300, valid_frac=0.2):
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    n_g = len(groups)
    is_valid = np.zeros(n_g, bool)
    if n_g >= 5:
        is_valid[rng.choice(n_g, size=max(1, int(valid_frac * n_g)), replace=False)] = True
    row_valid = np.repeat(is_valid, groups)
    params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate": 0.08,
              "num_leaves": 31, "min_data_in_leaf": 20, "feature_fraction": 0.9, "bagging_fraction": 0.9,
              "bagging_freq": 1, "lambdarank_truncation_level": 30, "num_threads": threads, "seed": seed,
              "deterministic": True, "force_row_wise": True, "verbose": -1}
    dtrain = lgb.Dataset(X[~row_valid], y[~row_valid], group=groups[~is_valid], feature_name=list(_safe(names)),
                         free_raw_data=False)
    sets, callbacks = [dtrain], []
    if is_valid.any():
        dvalid = lgb.Dataset(X[row_valid], y[row_valid], group=groups[is_valid], reference=dtrain)
        sets = [dvalid]
        callbacks = [lgb.early_stopping(30, verbose=False)]
    booster = lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=sets, callbacks=callbacks)
    best = booster.best_iteration or booster.current_iteration()
    info = {"rows": int(len(y)), "groups": int(n_g), "valid_groups": int(is_valid.sum()),
            "best_iteration": int(best), "positives": int((y > 0).sum())}
    if booster.best_score:
        info["valid_ndcg@10"] = round(float(list(booster.best_score.values())[0]["ndcg@10"]), 4)
    return booster.model_to_string(num_iteration=best), info


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
