"""Cold users: what the server answers a user with no history, against the trending list that answer starts from.

    python bench/cold_users.py --bundle DIR --data DATA [--k 50] [--max-users 3000] [--seed 0] [--json OUT]

The bundle must hold data out (a build with the default ``--holdout``) and DATA is the data it was built
from, or newer logs. A *new user* is one whose first interaction in DATA is at or after the bundle's cut
and of whom the bundle holds no history, so the server answers her from its cold-start path: trending
candidates, ordered by their trending score (``cold_order = "trending"``, the default) or by the LightGBM
ranker for the request's context and her user features (``"ranker"``), then re-ranked by MMR and the
creator rules. In trending order the candidates and their scores are those of the request's country (its
``context.country``, else the user's country from users.csv) where the bundle holds a trending list for it
(``cold_trending = "country"``, the default), else the global trending list. The trainer's evaluation
leaves these users out (it needs a training history); this script measures them. For each new user (at most
``--max-users``, drawn with ``--seed``), in process through the server's own ``Recommender``, one Recommend
of k items at the time (on the device) of her first held-out interaction, with the in-stock filter off as in
the trainer's evaluation:

  * ``own id``: under her id, so a user the bundle knows from users.csv brings her user features and her
    country;
  * ``anonymous``: with an empty user id (no user features, no country: the global trending list);
  * ``anonymous + country`` (trending order only): an empty user id and her country from DATA's users file
    as ``context.country``, as a backend that knows a visitor's country but not her would ask;

and ``trending list``: the bundle's trending list, its first k items, as the server would answer with
neither the ranker nor the re-ranking. Truth: the distinct items of her held-out interactions that the
bundle's catalogue holds and had released by her first one (a user without one is not evaluated).
Metrics: the trainer's own (recall@10/20/50, NDCG@10, coverage@10, ild@10, novelty@10). The other serving
settings are the environment's (``RECSERVE_*``), as the server reads them.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _cli import Parser, UsageError, check_bundle, check_dir, output_file, record, write_json  # noqa: E402
from _inproc import recommender  # noqa: E402
from _timing import machine  # noqa: E402
from trainer.argtypes import positive_int, seed as seed_type  # noqa: E402
from trainer.cold import new_users  # noqa: E402

COLS = ["recall@10", "recall@20", "recall@50", "ndcg@10", "coverage@10", "ild@10", "novelty@10", "mean_len"]
ORDERS = ("trending", "ranker")
SERVED = [(f"{o} order, {w}", o, w) for o, w in (("trending", "own id"), ("trending", "anonymous"),
                                                  ("trending", "anonymous + country"), ("ranker", "own id"),
                                                  ("ranker", "anonymous"))]
METHODS = [m for m, _, _ in SERVED] + ["trending list"]


def evaluate(bundle: str, data: str, k: int, max_users: int, seed: int) -> dict:
    from recserve.bundle import Bundle, BundleError
    from recserve.pipeline.messages import Filters, RecRequest
    from trainer import evaluate as ev
    from trainer.build import artifacts_from_bundle
    from trainer.io import DataError, load_dataset

    try:
        ds = load_dataset(data)
    except DataError as exc:
        raise UsageError(f"--data: {exc}") from None
    try:
        b = Bundle.open(bundle)
    except BundleError as exc:          # hashes that do not verify: refused as the server refuses it
        raise UsageError(f"--bundle: {exc}") from None
    with b:
        art = artifacts_from_bundle(b)
        cut = float(b.manifest["training"]["cut"])
    with tempfile.TemporaryDirectory() as events, \
            recommender(bundle, f"{events}/a", {"cold_order": "trending"}) as rec, \
            recommender(bundle, f"{events}/b", {"cold_order": "ranker"}) as ranked:
        users = new_users(ds, cut, lambda i: rec.tables.row_of("item", i), rec.has_history, rec.created)
        if not users:
            raise UsageError(f"no user of {data} is new at or after the bundle's cut "
                             f"({time.strftime('%Y-%m-%d %H:%M', time.gmtime(cut))} UTC) with an item the bundle "
                             f"holds: build the bundle with held-out data (--holdout above 0)")
        ids = sorted(users)
        if len(ids) > max_users:
            ids = sorted(np.random.default_rng(seed).choice(ids, size=max_users, replace=False).tolist())
        recs: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
        cold_answers = 0
        ms = {o: 0.0 for o in ORDERS}
        country = dict(zip(map(str, ds.user_ids), map(str, ds.user_country)))
        for uid in ids:
            first, device = users[uid][0]
            for m, order, who in SERVED:
                req = RecRequest(user_id=uid if who == "own id" else "", k=k, timestamp=first, device=device,
                                 country=country[uid] if who == "anonymous + country" else "",
                                 filters=Filters(in_stock_only=False))
                t0 = time.perf_counter()
                r = (rec if order == "trending" else ranked).recommend(req)
                ms[order] += time.perf_counter() - t0
                cold_answers += bool(r.cold_start)
                recs[m].append(np.array([rec.tables.row_of("item", it.item_id) for it in r.items], np.int64))
        per_call_ms = {o: ms[o] / (sum(s[1] == o for s in SERVED) * len(ids)) * 1e3 for o in ORDERS}
        with_list = 0 if rec.countries is None else sum(rec.countries.code(country[u], None) is not None
                                                        for u in ids)
        trend = np.asarray(rec.trend_rows[:k], np.int64)
        known = sum(rec.tables.row_of("user", u) is not None for u in ids)
    recs["trending list"] = [trend] * len(ids)
    truths = [users[u][1] for u in ids]
    stats = ev.item_stats(art)
    methods = {m: within(ev._metrics(recs[m], truths, *stats), k) for m in METHODS}
    return {"new_users": len(users), "evaluated_users": len(ids), "users_with_features": int(known),
            "users_with_country_list": int(with_list),
            "cold_start_answers": cold_answers, "calls": len(SERVED) * len(ids), "ms_per_call": per_call_ms,
            "cut": cut, "k": k, "methods": methods}


def within(metrics: dict, k: int) -> dict:
    """The metrics at a cut-off of at most ``k``: the answers hold k items, so a recall@50 of answers of 20
    would be their recall@20 under another name."""
    return {name: v for name, v in metrics.items() if "@" not in name or int(name.split("@")[1]) <= k}


def table(res: dict) -> str:
    cols = [c for c in COLS if all(c in v for v in res["methods"].values())]
    lines = [f"{'method':<36}" + "".join(f"{c:>13}" for c in cols)]
    for m, v in res["methods"].items():
        lines.append(f"{m:<36}" + "".join(f"{v[c]:>13.4f}" for c in cols))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a bundle built with held-out data (root or version)")
    ap.add_argument("--data", required=True, help="the data directory it was built from, or newer logs")
    ap.add_argument("--k", type=positive_int, default=50, help="items per answer (default 50)")
    ap.add_argument("--max-users", type=positive_int, default=3000, help="new users evaluated at most")
    ap.add_argument("--seed", type=seed_type, default=0, help="draws the users when there are more")
    ap.add_argument("--json", type=output_file, help="write the record here")
    a = ap.parse_args(argv)
    check_bundle(ap, a.bundle)
    check_dir(ap, a.data, "--data")
    print(f"machine: {machine()}")
    res = evaluate(a.bundle, a.data, a.k, a.max_users, a.seed)
    print(f"new users: {res['new_users']} (first interaction at or after the cut), evaluated {res['evaluated_users']}"
          f" (seed {a.seed}), {res['users_with_features']} of them known to the bundle from users.csv, "
          f"{res['users_with_country_list']} from a country the bundle holds a trending list of; "
          f"{res['cold_start_answers']} of {res['calls']} answers on the cold-start path; ms per Recommend in "
          f"process: " + ", ".join(f"{o} order {v:.2f}" for o, v in res["ms_per_call"].items()))
    print(table(res))
    if res["evaluated_users"] < 200:
        print("fewer than 200 users: differences between the rows may be noise")
    if a.json:
        write_json(a.json, record(a, **res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
