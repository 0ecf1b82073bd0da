"""Every served artifact computed from one slice of interactions at one ``now``.

Used twice by a build: on the interactions before the ranker's label cut (to produce the ranker's
training candidates exactly as the server would have at that time) and on all training interactions (the
bundle that is served).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recserve._core.candidates import Releases, sorted_unique, stored_consumed
from recserve._core.cross import Crosser, FeatureSchema
from recserve._core.embed import UserVectorParams, user_vectors
from trainer import embeddings, features, index as hnsw, neighbours
from trainer.countries import CountryLists, country_lists


@dataclass
class Artifacts:
    now: float
    item_emb: np.ndarray
    user_emb: np.ndarray      # long-term history vector (decay_long only), zero for users without history
    item_feats: np.ndarray
    user_feats: np.ndarray
    schema: FeatureSchema
    i2i_rows: np.ndarray
    i2i_scores: np.ndarray
    pop_rows: np.ndarray
    pop_scores: np.ndarray
    trend_rows: np.ndarray
    trend_scores: np.ndarray
    pop_cat_indptr: np.ndarray
    pop_cat_rows: np.ndarray
    hist_indptr: np.ndarray
    hist_items: np.ndarray
    hist_ts: np.ndarray
    hist_event: np.ndarray
    seen_items: np.ndarray    # bool[n_items]: had a training interaction
    index: object
    index_info: dict
    embed_method: str
    # each item's nearest items by embedding as SimilarItems asks the index (set for the bundle's build)
    sim_rows: np.ndarray | None = None
    # sorted rows of the items created after ``now``: not in the catalogue yet, so in no candidate list
    unreleased: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # the distinct items of the users whose bounded history misses some (``features.consumed``): sorted user
    # rows and the CSR of their sets; every other user's consumed items are her history's
    consumed_users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    consumed_indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    consumed_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    # trending per users' country: cold requests' order, warm ones' popular source (trainer/countries.py)
    countries: CountryLists = field(default_factory=CountryLists)

    def crosser(self) -> Crosser:
        return Crosser(self.schema, self.item_feats, self.item_emb)

    def history(self, u: int):
        a, b = self.hist_indptr[u], self.hist_indptr[u + 1]
        return self.hist_items[a:b], self.hist_ts[a:b], self.hist_event[a:b]

    def consumed(self, u: int) -> np.ndarray:
        """Sorted distinct rows of every item user ``u`` interacted with, however old: what the server
        excludes as consumed (her history holds only the newest ``history_len`` events)."""
        rows = stored_consumed(self.consumed_users, self.consumed_indptr, self.consumed_items, int(u))
        return rows if rows is not None else sorted_unique(self.history(u)[0])


@dataclass
class Catalogue:
    categories: np.ndarray
    cat_codes: np.ndarray
    creators: np.ndarray
    creator_codes: np.ndarray


def catalogue(ds, share_categories: int | None = None) -> Catalogue:
    """Category and creator vocabularies. Categories are coded in name order; a catalogue with more than
    ``share_categories`` of them codes them by number of items instead (most first, ties by name), so
    that the ``share_categories`` with a user share feature are codes 0..n-1."""
    cats, cc = features.vocab(ds.item_category)
    if share_categories is not None and len(cats) > share_categories:
        order = np.lexsort((np.arange(len(cats)), -np.bincount(cc, minlength=len(cats))))
        code = np.empty(len(cats), np.int64)
        code[order] = np.arange(len(cats))
        cats, cc = cats[order], code[cc]
    crs, crc = features.vocab(ds.item_creator, unknown="")
    return Catalogue(cats, cc, crs, crc)


def countries_of(ds, mask: np.ndarray, now: float, params: dict, cfg: dict) -> CountryLists:
    """The per-country trending lists of the interactions ``mask`` at ``now`` (``cfg``'s prior)."""
    return country_lists(ds.user[mask], ds.item[mask], ds.ts[mask], ds.event[mask], ds.user_country, ds.n_items, now,
                         params["event_weights"], params["half_life_days"], int(cfg.get("country_min_users", 0)),
                         cfg.get("country_prior", 100.0))


def fit(ds, mask: np.ndarray, now: float, cat: Catalogue, params: dict, cfg: dict, timer=None,
        i2i: bool = True) -> Artifacts:
    """The artifacts of the interactions ``mask`` at ``now``. Every item keeps its row (and its embedding,
    placed from its category and creator when nobody interacted with it); those created after ``now`` are
    marked ``unreleased``, and the candidates computed from these artifacts leave them out. ``i2i=False``
    leaves the item-to-item lists empty (n_items x 0), for a caller that sets them itself (the tuning)."""
    user, item, ts, event, value = ds.user[mask], ds.item[mask], ds.ts[mask], ds.event[mask], ds.value[mask]
    step = timer or (lambda name: _Null())
    ew = params["event_weights"]
    with step("embeddings"):
        item_emb, _als_users, method = embeddings.item_embeddings(
            user, item, event, ds.n_users, ds.n_items, cat.cat_codes, cat.creator_codes, ew,
            factors=cfg["factors"], seed=cfg["seed"], method=cfg["embed"], threads=cfg["threads"],
            iterations=cfg["als_iterations"], regularization=cfg["als_reg"], alpha=cfg["als_alpha"])
    with step("index"):
        # hnswlib inserts in parallel in no fixed order, so the graph (and every ANN answer, tuning choice
        # and ranker row after it) would change from run to run; one thread inserts in item order, and a
        # seeded build is then reproducible
        serial = ds.n_items <= int(cfg.get("index_serial_max_items", 0))
        idx = hnsw.build_index(item_emb, M=cfg["hnsw_M"], ef_construction=cfg["hnsw_ef_construction"],
                               ef=params["ef"], seed=cfg["seed"], threads=1 if serial else cfg["threads"])
        rec = hnsw.recall_at_k(idx, item_emb, k=10, seed=cfg["seed"], threads=cfg["threads"])
    if i2i:
        with step("i2i"):
            i2i_rows, i2i_scores = item_neighbours(user, item, ts, ds.n_users, ds.n_items, cfg)
    else:
        i2i_rows, i2i_scores = np.full((ds.n_items, 0), -1, np.int32), np.zeros((ds.n_items, 0), np.float32)
    with step("features"):
        pop, trend = features.popularity(item, ts, event, ds.n_items, now, ew, params["half_life_days"])
        pop_rows, pop_scores = features.ranked(pop)
        trend_rows, trend_scores = features.ranked(trend)
        countries = countries_of(ds, mask, now, params, cfg)
        n_cat = len(cat.categories)
        n_share = min(n_cat, int(cfg.get("share_categories", n_cat)))
        # the category-filtered popular source: trending within each category, as the unfiltered one
        pci, pcr = features.per_category(trend_rows, cat.cat_codes, n_cat)
        item_feats = features.item_features(ds, item, ts, event, value, now, cat.cat_codes, cat.creator_codes,
                                            pop, trend)
        user_feats = features.user_features(ds, user, item, ts, event, now, cat.cat_codes, n_share)
        hi, hit, hts, hev = features.histories(user, item, ts, event, ds.n_users, params["history_len"])
        cu, cip, cit = features.consumed(user, item, ds.n_users, ds.n_items, hi, hit)
        # the long-term user vector, in the item space (comparable with item_emb, unlike ALS user factors)
        long_term = UserVectorParams(decay_short=float(params["decay_long"]), decay_long=float(params["decay_long"]),
                                     alpha=1.0, half_life=0.0)
        user_emb = user_vectors(item_emb, hi, hit, long_term,
                                event_weights=np.asarray(ew, np.float32)[hev.astype(np.int64)])
    return Artifacts(now=now, item_emb=item_emb, user_emb=user_emb, item_feats=item_feats, user_feats=user_feats,
                     schema=features.make_schema(n_share, list(ds.item_extra), list(ds.user_extra)),
                     i2i_rows=i2i_rows, i2i_scores=i2i_scores,
                     pop_rows=pop_rows, pop_scores=pop_scores, trend_rows=trend_rows, trend_scores=trend_scores,
                     pop_cat_indptr=pci, pop_cat_rows=pcr, hist_indptr=hi, hist_items=hit, hist_ts=hts,
                     hist_event=hev, seen_items=np.bincount(item, minlength=ds.n_items) > 0, index=idx,
                     index_info={"space": "cosine", "M": cfg["hnsw_M"],
                                 "ef_construction": cfg["hnsw_ef_construction"], "ef": params["ef"],
                                 "recall_at_k": {"k": 10, "recall": round(rec, 4)}},
                     embed_method=method, unreleased=Releases(ds.item_created).hidden(now),
                     consumed_users=cu, consumed_indptr=cip, consumed_items=cit, countries=countries)


def i2i_model(cfg: dict, n_items: int) -> str:
    """The item-item model a build uses: ``cfg["i2i_model"]``, where ``auto`` means EASE for catalogues up to
    ``ease_max_items`` items (a dense inverse) and co-occurrence cosine above."""
    m = cfg.get("i2i_model", "cosine")
    if m == "auto":
        m = "ease" if n_items <= int(cfg.get("ease_max_items", 0)) else "cosine"
    if m not in ("cosine", "ease"):
        raise ValueError(f"unknown i2i model {m!r}")
    return m


# n x n float64 matrices alive at once while EASE is fitted (neighbours.ease_from_gram): the Gram matrix and
# its ridged copy, inverted in place; then the Gram matrix, the inverse and the weights
EASE_DENSE_COPIES = 3


def ease_bytes(n_items: int, M: int = 400) -> int:
    """What fitting EASE on ``n_items`` items holds in memory at its peak: the dense float64 matrices, the
    top-``M`` lists (int32 rows, float32 scores, the int64 partition) and top_m's two blocks of rows."""
    n = int(n_items)
    return EASE_DENSE_COPIES * 8 * n * n + 16 * n * int(M) + 16 * min(n, neighbours.TOP_M_ROWS) * n


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):      # absent, or "max" (no limit)
        return None


def available_memory() -> int | None:
    """Bytes a new allocation can have: the kernel's ``MemAvailable``, and, in a container with a memory
    limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), no more than what is left under that
    limit; None where neither is known."""
    have = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    have.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, cur = _read_int(limit), _read_int(used)
        if lim is not None and cur is not None and lim < 1 << 60:      # v1 says "no limit" with a huge number
            have.append(max(lim - cur, 0))
            break
    return min(have) if have else None


def _size(b: float) -> str:
    return f"{b / 2 ** 30:.1f} GiB" if b >= 2 ** 30 else f"{b / 2 ** 20:.0f} MiB"


def ease_memory_shortfall(n_items: int, M: int = 400, available: int | None = None) -> str | None:
    """Why EASE on ``n_items`` items cannot be fitted here (the memory it needs is more than is available),
    or None when it can, or when the available memory is not known."""
    need = ease_bytes(n_items, M)
    have = available_memory() if available is None else available
    if have is None or need <= have:
        return None
    return (f"EASE on {n_items:,} items needs about {_size(need)} of memory ({EASE_DENSE_COPIES} dense "
            f"{n_items:,} x {n_items:,} matrices) and {_size(have)} is available")


def ease_refit_iters(cfg: dict, n_items: int) -> int:
    """Conjugate-gradient steps that re-solve EASE on the kept weights (``neighbours.refit_support``): each
    costs about one dense ``n x n`` product, so only for catalogues up to ``ease_refit_max_items``."""
    return int(cfg.get("ease_refit_iters", 0)) if n_items <= int(cfg.get("ease_refit_max_items", 0)) else 0


def item_neighbours(user, item, ts, n_users: int, n_items: int, cfg: dict):
    if i2i_model(cfg, n_items) == "ease":
        gram = neighbours.ease_gram(user, item, n_users, n_items)
        return neighbours.ease_from_gram(gram, float(cfg["ease_lambda"]), M=int(cfg["ease_M"]),
                                         threads=int(cfg["threads"]), dropout=float(cfg.get("ease_dropout", 0.0)),
                                         refit_iters=ease_refit_iters(cfg, n_items))
    return neighbours.cooccurrence_neighbours(user, item, ts, n_users, n_items, M=cfg["i2i_M"])


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
