"""The load generator's workload: pre-built requests drawn from a bundle's ids (``bench/load.py``)."""
from __future__ import annotations

import math

import numpy as np

from _cli import UsageError

MIX_KEYS = {"recommend": "Recommend", "similar": "SimilarItems", "events": "RecordEvents"}


def read_ids(bundle: str, max_users: int = 50_000, max_items: int = 50_000) -> dict:
    """User, item and category ids of a bundle (the first ``max_*`` rows in a seeded random order)."""
    from recserve.bundle import BundleError, resolve
    from recserve._core.tables import TableReader

    try:
        t = TableReader(resolve(bundle) / "tables.lmdb")
    except (BundleError, OSError) as exc:
        raise UsageError(f"--bundle: {exc}") from None
    try:
        rng = np.random.default_rng(12345)
        out = {}
        for ns, cap in (("user", max_users), ("item", max_items), ("category", 10_000)):
            n = t.n_ids(ns)
            rows = rng.permutation(n)[:cap]
            out[ns] = [t.id_of(ns, int(r)) for r in rows]
        # the users' countries, each as often as among the users (a bundle without: none)
        out["country"] = ([t.id_of("country", int(c)) for c in t.array("user_country") if c >= 0]
                          if t.has_array("user_country") else [])
        return out
    finally:
        t.close()


def zipf_index(rng, n: int, s: float, size: int) -> np.ndarray:
    """Indices in [0, n) with P(rank r) ~ 1 / (r + 1)^s."""
    p = 1.0 / np.arange(1, n + 1) ** s
    return rng.choice(n, size=size, p=p / p.sum())


FILTERED = ("Recommend", "SimilarItems")     # the methods whose requests carry a category filter


def filtered_methods(ids: dict, cfg: dict) -> list[str]:
    """The methods of ``cfg``'s mix whose calls :func:`build_requests` gives a category filter
    (``include_categories``, one of the bundle's categories) in a share ``cfg["filter_share"]`` of them:
    none when that share is 0 or the bundle has no category."""
    if not ids.get("category") or cfg["filter_share"] <= 0:
        return []
    return [m for m in FILTERED if m in cfg["mix"]]


def build_requests(ids: dict, cfg: dict, seed: int, n: int) -> list[tuple[str, bytes]]:
    """``n`` pre-built (method, serialized request) pairs. A share ``cfg["filter_share"]`` of the Recommend
    and of the SimilarItems requests ask for one of the bundle's categories (``filters.include_categories``)."""
    from recserve.v1 import recommender_pb2 as pb

    rng = np.random.default_rng(seed)
    keys = list(cfg["mix"])
    w = np.array([cfg["mix"][k] for k in keys], float)
    methods = np.array(keys)[rng.choice(len(keys), size=n, p=w / w.sum())]
    users, items, cats = ids["user"], ids["item"], ids["category"]
    u_idx = zipf_index(rng, len(users), cfg["zipf"], n)
    i_idx = zipf_index(rng, len(items), cfg["zipf"], n * 6)
    countries = ids.get("country") or []
    crng = np.random.default_rng([seed, 7])     # its own draws: the rest of the workload stays as it was
    frng = np.random.default_rng([seed, 11])    # the SimilarItems' filters: their own draws too
    out = []
    for j, m in enumerate(methods):
        if m == "Recommend":
            r = rng.random()
            if r < cfg["anon"]:
                uid = ""
            elif r < cfg["anon"] + cfg["unknown"]:
                uid = f"bench-unknown-{rng.integers(1 << 40)}"
            else:
                uid = users[u_idx[j]]
            req = pb.RecommendRequest(user_id=uid, k=cfg["k"], explain=bool(rng.random() < cfg["explain_share"]))
            if countries and (uid == "" or uid.startswith("bench-unknown-")):
                # a visitor the backend does not know, but whose country it does (GeoIP)
                req.context.country = countries[int(crng.integers(len(countries)))]
            if uid == "" and rng.random() < 0.5:  # anonymous with a session
                req.session_item_ids.extend(items[i] for i in i_idx[6 * j:6 * j + 3])
            if cats and rng.random() < cfg["filter_share"]:
                req.filters.include_categories.append(cats[int(rng.integers(len(cats)))])
            out.append((m, req.SerializeToString()))
        elif m == "SimilarItems":
            req = pb.SimilarItemsRequest(item_id=items[i_idx[6 * j]], k=cfg["k"])
            if cats and frng.random() < cfg["filter_share"]:       # the same category filter as a Recommend's
                req.filters.include_categories.append(cats[int(frng.integers(len(cats)))])
            out.append((m, req.SerializeToString()))
        else:
            uid = users[u_idx[j]]
            ev = [pb.Event(user_id=uid, item_id=items[i], type=pb.EVENT_TYPE_CLICK if rng.random() < 0.3
                           else pb.EVENT_TYPE_VIEW) for i in i_idx[6 * j:6 * j + cfg["events_batch"]]]
            out.append((m, pb.RecordEventsRequest(events=ev).SerializeToString()))
    return out


def parse_mix(s: str) -> dict:
    out = {}
    for part in s.split(","):
        k, _, v = part.partition("=")
        if k.strip() not in MIX_KEYS:
            raise UsageError(f"--mix: unknown method {k!r} (use {', '.join(MIX_KEYS)})")
        try:
            share = float(v)
        except ValueError:
            raise UsageError(f"--mix: {part!r} is not METHOD=SHARE with a number") from None
        if not math.isfinite(share) or share < 0:
            raise UsageError(f"--mix: {part!r}: a share is a finite number >= 0")
        if share > 0:
            out[MIX_KEYS[k.strip()]] = share
    if not out:
        raise UsageError("--mix: no method with a positive share")
    total = sum(out.values())       # weights: recommend=4,similar=1 is 0.8 / 0.2, and the record says so
    return {m: v / total for m, v in out.items()}
