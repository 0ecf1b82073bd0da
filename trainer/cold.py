"""The users who arrive after a bundle's cut: what the server answers them, measured.

The trainer's evaluation of ranked answers needs a training history; a *new user* (no interaction before the
cut) gets the server's cold-start answer instead: trending candidates of her country or of everyone, in
trending order (or the ranker's, per the bundle's ``cold_order``), re-ranked by MMR and the creator rules.
:func:`evaluate_cold` asks the server's own ``Recommender`` (in process, no event store) for each new user's
answer at the time and on the device of her first held-out interaction, under her id (so a user the bundle
knows from ``users.csv`` brings her features and her country; one it does not know, from newer logs, asks
with her country from those logs' users file as ``context.country``), and compares it with the global
trending list's head. Truth: the distinct items of her held-out interactions that the bundle holds and had
released by her first one (the server recommends no item before its release).
"""
from __future__ import annotations

import numpy as np

COLD_METHODS = ("cold: served", "cold: trending list")


def new_users(ds, cut: float, item_row, has_history=None,
              created=None) -> dict[str, tuple[tuple[float, int], set[int]]]:
    """user id -> ((time, device) of her first interaction at or after ``cut``, the bundle rows of her
    items), for every user of ``ds`` with no interaction before ``cut`` and at least one item the bundle
    holds (``item_row(item id)``: its row, or None). ``has_history(user id)``: whether the bundle holds a
    history of her, which makes her no new user whatever ``ds`` holds (newer logs start at the cut);
    ``created``: the bundle rows' creation times (unix s), when known: an item created after her first
    interaction is left out of her items (the server recommends no item before its release)."""
    warm = np.zeros(ds.n_users, bool)
    warm[ds.user[ds.ts < cut]] = True
    if has_history is not None:
        warm |= np.array([has_history(str(u)) for u in ds.user_ids], bool)
    out: dict[str, tuple[tuple[float, int], set[int]]] = {}
    late = np.flatnonzero((ds.ts >= cut) & ~warm[ds.user])
    for u, i, t, d in zip(ds.user[late].tolist(), ds.item[late].tolist(), ds.ts[late].tolist(),
                          ds.device[late].tolist()):
        uid = str(ds.user_ids[u])
        first, items = out.get(uid, ((t, d), set()))
        row = item_row(str(ds.item_ids[i]))
        if row is not None:
            items.add(int(row))
        out[uid] = (min(first, (t, d)), items)
    if created is not None:
        out = {u: (f, {r for r in items if not created[r] > f[0]}) for u, (f, items) in out.items()}
    return {u: v for u, v in out.items() if v[1]}


def evaluate_cold(bundle, ds, art, k: int = 50, max_users: int = 2000, seed: int = 0) -> dict | None:
    """Metrics of the served cold-start answers of ``ds``'s new users (None: there is none), next to the
    global trending list's first ``k`` items. ``bundle``: an open :class:`recserve.bundle.Bundle`; ``art``:
    its artifacts (``trainer.build.artifacts_from_bundle``) for the metrics' item statistics."""
    from recserve.pipeline.messages import Filters, RecRequest
    from recserve.pipeline.recommender import Recommender
    from trainer import evaluate as ev

    rec = Recommender(bundle, None)
    cut = float(bundle.manifest["training"]["cut"])
    users = new_users(ds, cut, lambda i: rec.tables.row_of("item", i), rec.has_history, rec.created)
    if not users:
        return None
    ids = sorted(users)
    if len(ids) > max_users:
        ids = sorted(np.random.default_rng(seed).choice(ids, size=max_users, replace=False).tolist())
    given = dict(zip(map(str, ds.user_ids), map(str, ds.user_country)))
    served, cold_answers, with_list = [], 0, 0
    for uid in ids:
        first, device = users[uid][0]
        # a user the bundle does not know brings her country from the logs' users file, as a backend would
        country = given[uid] if rec.tables.row_of("user", uid) is None else ""
        r = rec.recommend(RecRequest(user_id=uid, k=k, timestamp=first, device=device, country=country,
                                     filters=Filters(in_stock_only=False)))
        cold_answers += bool(r.cold_start)
        with_list += r.cold_list == "country"
        served.append(np.array([rec.tables.row_of("item", it.item_id) for it in r.items], np.int64))
    trend = np.asarray(rec.trend_rows[:k], np.int64)
    truths = [users[u][1] for u in ids]
    stats = ev.item_stats(art)
    return {"new_users": len(users), "users": len(ids), "cold_start_answers": cold_answers,
            "users_with_country_list": int(with_list), "k": k,
            "cold_order": str(rec.cparams["cold_order"]), "cold_trending": str(rec.cparams["cold_trending"]),
            "methods": {COLD_METHODS[0]: ev._metrics(served, truths, *stats),
                        COLD_METHODS[1]: ev._metrics([trend] * len(ids), truths, *stats)}}
