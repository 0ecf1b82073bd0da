"""Offline evaluation on held-out newest interactions, through the served retrieval and ranking.

Methods: ``popularity`` (trending), ``i2i``, ``ann`` (user vector -> HNSW), ``ann+ranker`` (ANN candidates
ordered by the ranker), ``merged+ranker`` (all sources merged, ranked), ``full+mmr`` (that, re-ranked by
the server's own re-rank code: MMR, the creator cap with its uncapped fill, no creator back to back).
Candidates are merged as the server merges them for k = 50 (at least four times 50 candidates, the popular
source making up the rest). Stock is not applied: every method may recommend an item the items file says
is out of stock, which the server's default request would not. The stage rows (``i2i``, ``ann``,
``ann+ranker``) hold what their source supplies, which may be fewer than 50 items (``mean_len`` in the
table): their recall@50 is at that length. For each user with a training history and new items in the
held-out window:
truth = the distinct held-out items she had not consumed before the cut (however long ago: the server
excludes every consumed item, not only those of the bounded history the sources read) and in the bundle's
catalogue at its ``now`` (the cut): an item created after the cut is in no method's
candidates, as the server leaves out items created after a request's time, so it is left out of the truth
too (``truth_not_released`` counts those held-out (user, item) pairs; a user left with no truth item is not
evaluated).
Recall is reported at every cut-off in ``KS`` (the report plots it as a curve), and the popularity profile
of each method's top 10 against the catalogue's (:func:`popularity_deciles`).
"""
from __future__ import annotations

import math

import numpy as np

from recserve._core.candidates import context_vector
from recserve._core import rerank as RR
from trainer.retrieval import candidates_for

KS = (1, 5, 10, 20, 50)
EVAL_K = KS[-1]                   # every method keeps its top 50 (the stage rows: at most 50)
DECILES = 10
FEW_USERS = 200        # below this many evaluated users, the table says its figures are noisy
METHODS = ["popularity", "i2i", "ann", "ann+ranker", "merged+ranker", "full+mmr"]


def item_stats(art) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`_metrics` needs of the catalogue, from an artifact set: the item embeddings (diversity),
    each item's share of the interactions (novelty) and which items had none (cold share)."""
    pop = np.expm1(art.pop_scores[np.argsort(art.pop_rows)].astype(np.float64)) + 1.0
    return art.item_emb, pop / pop.sum(), ~art.seen_items


def _metrics(rec: list[np.ndarray], truths: list[set], item_emb, pop_share, cold_items) -> dict:
    out = {}
    for k in KS:
        out[f"recall@{k}"] = float(np.mean([len(set(r[:k].tolist()) & t) / len(t) for r, t in zip(rec, truths)]))
    nd, rr = [], []
    for r, t in zip(rec, truths):
        g = [1.0 if int(x) in t else 0.0 for x in r[:10]]
        dcg = sum(v / math.log2(p + 2) for p, v in enumerate(g))
        idcg = sum(1.0 / math.log2(p + 2) for p in range(min(len(t), 10)))
        nd.append(dcg / idcg)
        hit = next((p for p, x in enumerate(r[:50]) if int(x) in t), None)
        rr.append(0.0 if hit is None else 1.0 / (hit + 1))
    out["ndcg@10"] = float(np.mean(nd))
    out["mrr@50"] = float(np.mean(rr))
    top = [r[:10] for r in rec if len(r)]
    allrec = np.concatenate(top) if top else np.zeros(0, np.int64)
    out["coverage@10"] = float(len(np.unique(allrec)) / len(item_emb))
    ild = []
    for r in top:
        if len(r) > 1:
            e = item_emb[r]
            s = e @ e.T
            n = len(r)
            ild.append(float((n * n - s.sum()) / (n * (n - 1))))   # mean pairwise (1 - cos)
    out["ild@10"] = float(np.mean(ild)) if ild else 0.0
    out["novelty@10"] = float(np.mean(-np.log2(pop_share[allrec]))) if len(allrec) else 0.0
    out["cold_share@10"] = float(np.mean(cold_items[allrec])) if len(allrec) else 0.0
    out["mean_len"] = float(np.mean([len(r) for r in rec])) if rec else 0.0
    return out


def popularity_deciles(pop_rows: np.ndarray, pop_scores: np.ndarray, recs: dict[str, list[np.ndarray]],
                       k: int = 10) -> dict:
    """Items in popularity deciles (decile 1: the 10 % most popular training items; ties by row, the
    never-seen items last) and, per decile, the share of the catalogue's items, of the training
    interactions (event-weighted) and of each method's top-``k`` recommendations."""
    n = len(pop_rows)
    decile = np.empty(n, np.int64)
    decile[pop_rows] = np.arange(n) * DECILES // max(n, 1)
    weight = np.expm1(pop_scores.astype(np.float64))      # pop_scores = log1p(weighted interactions)

    def shares(counts: np.ndarray) -> list[float]:
        total = counts.sum()
        return [round(float(c / total), 5) if total else 0.0 for c in counts]

    out = {"k": k, "items": shares(np.bincount(decile, minlength=DECILES).astype(np.float64)),
           "interactions": shares(np.bincount(decile[pop_rows], weights=weight, minlength=DECILES)),
           "methods": {}}
    for m, rs in recs.items():
        top = [r[:k] for r in rs if len(r)]
        rows = np.concatenate(top).astype(np.int64) if top else np.zeros(0, np.int64)
        out["methods"][m] = shares(np.bincount(decile[rows], minlength=DECILES).astype(np.float64))
    return out


def eval_users(art, test_user, test_item, max_users: int, seed: int) -> tuple[np.ndarray, list[set]]:
    """The evaluated users (with a training history and a held-out item she had not consumed before
    ``art.now`` and created by then, sampled down to ``max_users`` with ``seed``) and each one's held-out new
    items."""
    truth: dict[int, set] = {}
    for u, i in zip(test_user.tolist(), test_item.tolist()):
        truth.setdefault(u, set()).add(i)
    hidden = set(art.unreleased.tolist())
    users = []
    for u, items in truth.items():
        a, b = art.hist_indptr[u], art.hist_indptr[u + 1]
        if b == a:
            continue
        new = items - set(art.consumed(u).tolist()) - hidden
        if new:
            truth[u] = new
            users.append(u)
    users = np.array(sorted(users), np.int64)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    return users, [truth[int(u)] for u in users]


class NoUserWithHistory(ValueError):
    """The held-out data hold no user the methods can rank for (one with a history and a new item)."""


def without_users() -> dict:
    """:func:`evaluate`'s result when it has no user to rank for: no method rows (logs of new users only)."""
    return {"users": 0, "truth_not_released": 0, "methods": {}}


def evaluate(art, scorer, test_user, test_item, test_ts, params: dict, creators: np.ndarray,
             max_users=2000, seed=0, threads=2, progress=None, test_device=None) -> dict:
    """Returns {"users": n, "methods": {method: metrics}, "truth_not_released": the held-out (user, item)
    pairs (a user with a training history, an item not in it) left out of the truth because the item was
    created after the cut, "popularity_deciles": ...}. The ranker's context is the time and device
    (``test_device``, codes; None: unspecified) of each user's first held-out interaction."""
    if test_device is None:
        test_device = np.zeros(len(test_user), np.int8)
    first: dict[int, tuple[float, int]] = {}
    for u, t, d in zip(test_user.tolist(), test_ts.tolist(), test_device.tolist()):
        if u not in first or t < first[u][0]:
            first[u] = (t, d)
    users, truths = eval_users(art, test_user, test_item, max_users, seed)
    truth = dict(zip(users.tolist(), truths))
    if len(users) == 0:
        raise NoUserWithHistory("no held-out user has a training history and a new item")
    crosser = art.crosser()
    now_days = art.now / 86400.0
    recs = {m: [] for m in METHODS}
    truths = []
    lam = float(params["mmr_lambda"])
    cap = int(params["max_per_creator"])
    it = candidates_for(art, users, params, threads, k=EVAL_K)       # as the server merges them for k
    for u, vec, lists, merged in (progress(it, total=len(users)) if progress else it):
        h = set(art.consumed(u).tolist())

        def fresh(rows):
            return np.array([r for r in rows.tolist() if r not in h][:EVAL_K], np.int64)

        recs["popularity"].append(fresh(lists[3][0]))
        recs["i2i"].append(fresh(lists[1][0]))
        recs["ann"].append(fresh(lists[0][0]))
        truths.append(truth[u])
        if len(merged) == 0:
            for m in ("ann+ranker", "merged+ranker", "full+mmr"):
                recs[m].append(np.zeros(0, np.int64))
            continue
        X = crosser.cross(art.user_feats[u], vec, merged.rows, context_vector(*first[u]), merged.rank,
                          merged.score, now_days)
        s = scorer(X)
        order = np.lexsort((np.arange(len(s)), -s))
        ann_mask = merged.rank[:, 0] >= 0
        o_ann = order[ann_mask[order]]
        recs["ann+ranker"].append(merged.rows[o_ann][:EVAL_K].astype(np.int64))
        recs["merged+ranker"].append(merged.rows[order][:EVAL_K].astype(np.int64))
        pos, _ = RR.diversify(RR.minmax(s), art.item_emb, merged.rows, EVAL_K, lam, creators[merged.rows], cap)
        recs["full+mmr"].append(merged.rows[np.asarray(pos)].astype(np.int64))
    _, pop_share, cold = item_stats(art)
    hidden = set(art.unreleased.tolist())
    not_released = {(u, i) for u, i in zip(test_user.tolist(), test_item.tolist()) if i in hidden
                    and art.hist_indptr[u + 1] > art.hist_indptr[u] and i not in set(art.consumed(u).tolist())}
    return {"users": int(len(users)),
            "truth_not_released": len(not_released),
            "methods": {m: _metrics(recs[m], truths, art.item_emb, pop_share, cold) for m in METHODS},
            "popularity_deciles": popularity_deciles(art.pop_rows, art.pop_scores, recs)}


def format_table(result: dict) -> str:
    cols = ["recall@10", "recall@20", "recall@50", "ndcg@10", "mrr@50", "coverage@10", "ild@10",
            "novelty@10", "cold_share@10", "mean_len"]
    notes = []
    if "eval_users" in result and "seed" in result:     # the sample: --eval-users and --seed reproduce it
        notes.append(f"at most {result['eval_users']}, drawn with seed {result['seed']}")
    if result["users"] == 0:
        notes = ["no held-out user has a training history and a new item: only the new users below are "
                 "evaluated" + (f", at most {result['eval_users']} drawn with seed {result['seed']}"
                                if "eval_users" in result and "seed" in result else "")]
    elif result["users"] < FEW_USERS:
        notes.append(f"fewer than {FEW_USERS}: differences between methods may be noise; a larger --holdout "
                     "holds out more users")
    lines = [f"evaluated users: {result['users']}" + (f" ({'; '.join(notes)})" if notes else "")]
    if result.get("truth_not_released"):
        lines.append(f"held-out (user, item) pairs left out of the truth: {result['truth_not_released']} "
                     "(the item was created after the cut, so the bundle's catalogue did not hold it yet)")
    if result.get("truth_unknown_items"):
        lines.append(f"held-out (user, item) pairs left out of the truth: {result['truth_unknown_items']} "
                     "(the bundle does not know the item: newer than the bundle's data, it cannot recommend it)")
    if result.get("truth_unknown_users"):
        lines.append(f"held-out (user, item) pairs not evaluated by the methods below: {result['truth_unknown_users']} "
                     "(the bundle does not know the user: no history to rank from; the new users' rows, when "
                     "printed, answer such users cold if they are new after the cut)")
    if result.get("truth_no_history"):
        lines.append(f"held-out (user, item) pairs in no row below: {result['truth_no_history']} (the bundle holds "
                     "no history of the user, yet these logs hold her interactions before its cut: neither ranked "
                     "from a history nor new after the cut; a server reads such interactions once recorded as "
                     "events)")
    lines.append(f"{'method':<20}" + "".join(f"{c:>14}" for c in cols))
    for m, v in result["methods"].items():
        lines.append(f"{m:<20}" + "".join(f"{v.get(c, float('nan')):>14.4f}" for c in cols))
    cold = result.get("cold_users")
    if cold:        # trainer/cold.py: the users new after the cut, answered from the cold-start path
        lines.append(f"new users (no interaction before the cut): {cold['users']} evaluated of {cold['new_users']}, "
                     f"{cold['users_with_country_list']} from a country with a trending list; cold order "
                     f"{cold['cold_order']}, trending {cold['cold_trending']}")
        for m, v in cold["methods"].items():
            lines.append(f"{m:<20}" + "".join(f"{v.get(c, float('nan')):>14.4f}" for c in cols))
    return "\n".join(lines)
