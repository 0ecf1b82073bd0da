"""The assembled pipeline for one bundle in one process: validation, candidates, ranking, re-ranking.

A :class:`Recommender` is built once per (bundle, process) after fork, is read-only afterwards (except the
item state overlay refreshed from the event store), and is swapped whole on hot reload.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np

from recserve._core import candidates as CC
from recserve._core import rerank as RR
from recserve._core.merge import merge_candidates
from recserve.events import Event, EventStore, Recorded
from recserve.pipeline import candidates as C
from recserve.pipeline import ranking as R
from recserve.pipeline.errors import DeadlineExceeded, InvalidArgument
from recserve.pipeline.filters import allowed_items
from recserve.pipeline.history import Histories
from recserve.pipeline.items import ItemSnapshot, walk_allowed
from recserve.pipeline.messages import (EXPLAIN_CHUNK, MAX_CONTEXT_EXTRA, MAX_DEVICE, MAX_EVENT_AHEAD, MAX_EXPLAIN,
                                        MAX_LIST, MAX_PRICE, Filters, Item, RecRequest, Result, check_batch,
                                        check_count, check_id, check_k, check_ts, unknown_ids)
from recserve.pipeline.novelty import NEW_SOURCE, NewItems
from recserve.pipeline.regional import CountryTrending
from recserve.pipeline.similar import similar_items


def scaled_quotas(quotas: dict, n: int) -> dict:
    """``{"cap": n, "quotas": ...}`` with every source quota scaled so that they sum to about ``n``."""
    if n < 1:
        raise ValueError(f"candidates must be >= 1, got {n}")
    total = max(sum(int(v) for v in quotas.values()), 1)
    return {"cap": n, "quotas": {s: max(1, math.ceil(int(v) * n / total)) for s, v in quotas.items()}}


def _column_means(a: np.ndarray) -> np.ndarray:
    """float32 mean of each column over its non-missing values (NaN where a column has none)."""
    a = np.asarray(a, np.float64)
    if len(a) == 0:
        return np.zeros(a.shape[1], np.float32)
    known = ~np.isnan(a)
    n = known.sum(0)
    total = np.where(known, a, 0.0).sum(0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan).astype(np.float32)


class Recommender:
    def __init__(self, bundle, store: EventStore | None, defaults: dict | None = None):
        self.bundle = bundle
        self.store = store
        self.version = bundle.version
        t = bundle.tables
        self.tables = t
        p = dict(bundle.params)
        CC.check_params(p)          # the bundle's own (verify checks them too; Bundle.open may skip it)
        given = {k: v for k, v in (defaults or {}).items() if v is not None}
        if "cap" in given:
            p.pop("candidates", None)     # the server's cap outranks the bundle's own candidates (one precedence)
        p.update(given)
        if p.get("candidates"):
            p.update(scaled_quotas(p.get("quotas") or CC.DEFAULT_PARAMS["quotas"], int(p["candidates"])))
        self.params = p
        self.n_items = int(bundle.n_items)
        self.emb = np.ascontiguousarray(bundle.item_emb, np.float32)
        cols = t.columns("item_feats") or list(bundle.schema.item_columns)
        self.item_cols = cols
        self.base_feats = np.asarray(bundle.item_feats, np.float32)
        col = {c: i for i, c in enumerate(cols)}
        self.columns = col
        self.c_price, self.c_cat = col.get("price"), col.get("category")
        self.c_creator, self.c_stock = col.get("creator"), col.get("in_stock")
        self.now = bundle.data_end              # the bundle's fit time: every feature is a snapshot at it
        created = bundle.item_created()
        # an item created after a request's time is not in the catalogue yet at that time: never recommended
        self.releases = CC.Releases(created) if created is not None else None
        self.created = created                  # and the novelty boost's age of an item (None: unknown)
        self.user_feats = np.asarray(bundle.user_feats, np.float32)
        self.user_mean = _column_means(self.user_feats)      # the features of a user the bundle lacks
        self.i2i_rows = t.array("i2i_rows")
        self.i2i_scores = t.array("i2i_scores")
        self.pop_rows = t.array("pop_rows")
        self.pop_scores = t.array("pop_scores")
        self.trend_rows = t.array("trend_rows")
        self.trend_scores = t.array("trend_scores")
        self.trend_of_row = np.zeros(self.n_items, np.float32)
        self.trend_of_row[self.trend_rows] = self.trend_scores
        self.cat_indptr = t.array("pop_cat_indptr")
        self.cat_rows = t.array("pop_cat_rows")
        self.n_cats = t.n_ids("category")
        self.ann = C.AnnSource(bundle.index, self.emb)
        # search breadths, per query: Recommend's tuned on user vectors, SimilarItems' on item vectors (a
        # bundle without the latter searches with the former)
        self.ef = int(p.get("ef") or bundle.index.ef)
        self.similar_ef = int(p.get("similar_ef") or self.ef)
        # each item's neighbours as a SimilarItems search would return them, stored by the trainer (None in
        # bundles built without them: every SimilarItems searches the index)
        self.sim_rows = t.array("sim_rows") if t.has_array("sim_rows") else None
        # the exact prices for the price filters (bundles before them filter on the float32 feature)
        self.base_price = t.array("item_price") if t.has_array("item_price") else None
        self.sim_rows_ef = 0
        if self.sim_rows is not None:
            # the breadth the trainer searched the rows with: recorded since SimilarItems searches twice as
            # broad as it asks (similar_breadth); before, max(its similar_ef, the row width). A row is read
            # only where a live search would be no broader (recserve.pipeline.similar.search); a broader
            # similar_ef set at serve time (--similar-ef) is honoured by searching live
            self.sim_rows_ef = int(bundle.manifest["index"].get("similar_rows_ef") or max(
                int(bundle.params.get("similar_ef") or bundle.params.get("ef") or 0), self.sim_rows.shape[1]))
            if self.similar_ef > self.sim_rows_ef:
                self.sim_rows = None
        self.schema = bundle.schema
        self.sources = list(self.schema.sources)
        # the item table with the stock/price overlay: replaced whole, never mutated, so a request reads
        # one consistent snapshot
        self._items = self._snapshot(self.base_feats, self.base_price)
        self.ranker = R.Ranker(bundle.ranker_text, list(self.schema.names), str(p.get("ranker_engine", "forest")))
        # every parameter the manifest leaves out takes the trainer's default (``CC.DEFAULT_PARAMS``), so the
        # shared retrieval and the rest of the pipeline read one set of values
        self.cparams = {**CC.DEFAULT_PARAMS, **p}
        self.quotas = {**{s: 0 for s in self.sources}, **{s: int(v) for s, v in self.cparams["quotas"].items()}}
        self.cap = int(self.cparams["cap"])
        self.history_len = int(self.cparams["history_len"])
        self.cold_by_ranker = self.cparams["cold_order"] == "ranker"
        # trending per country: the order of cold requests in trending order (cold_trending), the popular
        # source of the others when the ranker was trained on it (warm_trending); None: the global list
        self.cold_regional = self.cparams["cold_trending"] == "country" and not self.cold_by_ranker
        self.warm_regional = self.cparams["warm_trending"] == "country"
        self.countries = (CountryTrending.load(t, self.trend_rows, self.trend_scores, self.trend_of_row)
                          if self.cold_regional or self.warm_regional else None)
        # the new items a cold answer in trending order adds when the novelty boost is on
        self.new_items = (NewItems(created / 86400.0, self.trend_of_row)
                          if created is not None and float(self.cparams["novelty_boost"]) > 0
                          and not self.cold_by_ranker else None)
        self._new_bit = 1 << len(self.sources)
        self._popular_bit = self.sources.index("popular") if "popular" in self.sources else None
        self.histories = Histories(t, store, self.history_len, bundle.data_end)
        self._items_gen = -1
        masks = range(1 << len(self.sources))
        self._source_lists = {m: [s for i, s in enumerate(self.sources) if m >> i & 1] for m in masks} \
            if len(self.sources) <= 8 else None
        self._items_lock = threading.Lock()

    def _source_names(self, mask: int) -> list[str]:
        """The names of the sources in a candidate's bitmask (a fresh list: the caller may keep it)."""
        if mask == self._new_bit:
            return [NEW_SOURCE]
        if self._source_lists is not None:
            return list(self._source_lists[mask])
        return [s for i, s in enumerate(self.sources) if mask >> i & 1]

    # -- helpers -----------------------------------------------------------------------------------
    def _cold_list(self, cold: bool, region: int | None) -> tuple[str, str]:
        """(the list that ordered a cold answer: country, global or ranker; the country's id, or "")."""
        if not cold:
            return "", ""
        if region is not None:
            return "country", self.tables.id_of("country", region)
        return ("ranker" if self.cold_by_ranker else "global"), ""

    def _regional_refill(self, region: int, allowed, gone, quota: int, limit: int):
        """A country's whole list as trained (out-of-stock entries kept for the merge to skip, so an item's
        rank is its rank in training), long enough to hold ``quota`` servable items."""
        n = limit
        while True:
            rows, scores = C.drop_rows(*self.countries.head(region, n), gone)
            if allowed is None or np.count_nonzero(allowed[rows]) >= quota or n >= self.n_items:
                return rows, scores
            n *= 2

    def _popular(self, trained, quota: int, region, cold: bool, include, allowed, gone, snap):
        """The popular source's list for ``quota`` items: ``trained`` (the trending list as trained, without
        the history's items), or the list the request's country, categories or filter call for."""
        limit = quota + len(gone) + 1
        if region is not None and cold:     # a cold request from a country with a trending list of its own
            return self.countries.top(region, allowed, gone, quota)
        if len(include) and region is not None:
            return self.countries.in_categories(region, include, snap.category, allowed, gone, quota)
        if len(include):
            return C.drop_rows(*C.popular_in_categories(self.cat_indptr, self.cat_rows, self.trend_of_row,
                                                        include, allowed, limit), gone)
        if allowed is None:         # as the trainer's evaluation has it
            head = ((lambda n: self.countries.head(region, n)) if region is not None else
                    (lambda n: (self.trend_rows[:n], self.trend_scores[:n])))
            return CC.popular_as_served(trained, quota, gone, CC.head_without(head, gone))
        if allowed is snap.in_stock:
            # the shared list, whose out-of-stock entries the merge skips; refilled only when it cannot
            # fill the popular quota (k above the quota, much of it out of stock, or consumed before the
            # history's window), long enough to hold the quota in stock
            def refill(q: int):
                if region is not None:
                    return self._regional_refill(region, allowed, gone, q, q + len(gone) + 1)
                n = snap.trend_prefix(q + len(gone) + 1)
                return C.drop_rows(self.trend_rows[:n], self.trend_scores[:n], gone)

            return CC.popular_as_served(trained, quota, gone, refill, allowed)
        if region is not None:
            return self.countries.top(region, allowed, gone, limit)
        return C.drop_rows(*walk_allowed(self.trend_rows, self.trend_scores, allowed, limit), gone)

    def known_user(self, user_id: str) -> bool:
        return self.tables.row_of("user", user_id) is not None

    def has_history(self, user_id: str) -> bool:
        """Whether the bundle holds any interaction of the user (its events before the data end are hers)."""
        r = self.tables.row_of("user", user_id)
        return r is not None and int(self.histories.indptr[r + 1]) > int(self.histories.indptr[r])

    @property
    def feats(self) -> np.ndarray:
        return self._items.feats

    def _snapshot(self, feats: np.ndarray, price: np.ndarray | None) -> ItemSnapshot:
        return ItemSnapshot(feats, self.schema, self.emb, self.columns, self.trend_rows, self.trend_scores,
                            price)

    def _refresh_items(self) -> ItemSnapshot:
        """The current item snapshot, rebuilt when the event store's item state changed."""
        if self.store is None:
            return self._items
        gen = self.store.items_gen()
        if gen == self._items_gen:
            return self._items
        with self._items_lock:
            # the items updated since this snapshot's generation, on top of it; everything from the
            # bundle's own state when the store no longer lists every update since (or at first)
            gen, states = self.store.item_changes(self._items_gen) if self._items_gen >= 0 else (gen, None)
            if gen == self._items_gen:
                return self._items
            if states is None:
                gen, states = self.store.item_states()
                feats = np.array(self.base_feats)
                price = None if self.base_price is None else np.array(self.base_price)
            else:
                feats = np.array(self._items.feats)
                price = None if self.base_price is None else np.array(self._items.price)
            for item_id, st in states.items():
                r = self.tables.row_of("item", item_id)
                if r is None:
                    continue
                if "in_stock" in st and self.c_stock is not None:
                    feats[r, self.c_stock] = 1.0 if st["in_stock"] else 0.0
                if "price" in st and self.c_price is not None:
                    feats[r, self.c_price] = st["price"]
                    if price is not None:
                        price[r] = st["price"]
            self._items = self._snapshot(feats, price)
            self._items_gen = gen
            return self._items

    def _hidden(self, t: float) -> np.ndarray:
        """Sorted rows of the items created after unix time ``t`` (not released yet): none, at no cost that
        grows with the catalogue, once ``t`` is past every creation time."""
        return self.releases.hidden(t) if self.releases is not None else np.zeros(0, np.int64)

    # -- Recommend ---------------------------------------------------------------------------------
    def recommend(self, req: RecRequest) -> Result:
        """Recommend, start to finish (:meth:`recommend_steps` without pauses)."""
        steps = self.recommend_steps(req)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def recommend_steps(self, req: RecRequest):
        """Recommend as a generator that yields at each pause point, so the caller can let other work run
        there, and returns the :class:`Result`. It yields the name of each stage it finishes (validate,
        user, candidates, ranking, rerank) and of the two points inside the longest stages ("ann": the
        index searched, "features": the ranker's rows crossed), so no stretch between pauses is longer than
        one kernel. Stage times do not count the time spent in pauses; ``total`` does."""
        timings: list[tuple[str, float]] = []
        t0 = tp = time.perf_counter()
        carried = 0.0           # ms of the current stage before its inner pauses

        def check_deadline(point, when):
            if req.deadline is not None and time.monotonic() > req.deadline:
                raise DeadlineExceeded(point, when)

        def lap(stage):
            nonlocal tp, carried
            now = time.perf_counter()
            timings.append((stage, (now - tp) * 1000.0 + carried))
            tp, carried = now, 0.0
            check_deadline(stage, "after")

        def done(stage):
            """``yield from done(stage)``: the stage's lap, then a pause point for the caller."""
            nonlocal tp
            lap(stage)
            yield stage
            tp = time.perf_counter()

        def within(point):
            """``yield from within(point)``: a pause point inside a stage, whose time so far carries over."""
            nonlocal tp, carried
            now = time.perf_counter()
            carried += (now - tp) * 1000.0
            check_deadline(point, "during")
            yield point
            tp = time.perf_counter()

        check_id(req.user_id, "user_id", allow_empty=True)
        k = check_k(req.k)
        if req.explain and k > MAX_EXPLAIN:
            raise InvalidArgument("explain", f"explanations are given for k up to {MAX_EXPLAIN} items, not {k}")
        check_count(len(req.session_item_ids), MAX_LIST, "session_item_ids", "ids")
        for s in req.session_item_ids:
            check_id(s, "session_item_ids")
        lam = float(self.cparams["mmr_lambda"]) if req.mmr_lambda is None else req.mmr_lambda
        if not (math.isfinite(lam) and 0.0 <= lam <= 1.0):
            raise InvalidArgument("diversity.lambda", f"must be in [0, 1], got {lam}")
        mpc = int(self.cparams["max_per_creator"]) if req.max_per_creator is None else req.max_per_creator
        if mpc < 0:
            raise InvalidArgument("diversity.max_per_creator", f"must be >= 0, got {mpc}")
        if req.hour is not None and not 0 <= req.hour <= 23:
            raise InvalidArgument("context.hour", f"must be in 0..23, got {req.hour}")
        if req.weekday is not None and not 0 <= req.weekday <= 6:
            raise InvalidArgument("context.weekday", f"must be in 0..6, got {req.weekday}")
        if not 0 <= req.device <= MAX_DEVICE:
            raise InvalidArgument("context.device", f"must be a Device value, 0..{MAX_DEVICE}, got {req.device}")
        check_ts(req.timestamp, "context.timestamp")
        check_id(req.country, "context.country", allow_empty=True)
        if req.extra:
            check_count(len(req.extra), MAX_CONTEXT_EXTRA, "context.extra", "entries")
            for key, value in req.extra.items():
                check_id(key, "context.extra")
                check_id(value, f"context.extra[{key!r}]", allow_empty=True)
            R.check_context_extra(self.schema, req.extra)
        snap = self._refresh_items()
        feats = snap.feats
        allowed, include, n_allowed = allowed_items(self.tables, self.n_items, req.filters, snap)
        now = req.timestamp or time.time()
        hidden = self._hidden(now)
        tm = time.gmtime(now)
        hour = req.hour if req.hour is not None else tm.tm_hour
        weekday = req.weekday if req.weekday is not None else tm.tm_wday

        user_row = self.tables.row_of("user", req.user_id) if req.user_id else None
        h_rows, h_ev, h_ts, h_consumed = self.histories.of(req.user_id, user_row)
        sess = self.tables.rows_of("item", req.session_item_ids)
        sess = sess[sess >= 0]
        cold = len(h_rows) == 0 and len(sess) == 0     # nothing of hers to go on, known id or not
        yield from done("validate")

        # the history with the request's session appended as the newest session (as clicks, now)
        if len(sess):
            all_rows = np.concatenate([h_rows, sess])
            all_ev = np.concatenate([h_ev, np.full(len(sess), 1, np.int8)])
            all_ts = np.concatenate([h_ts, np.full(len(sess), now)])
        else:
            all_rows, all_ev, all_ts = h_rows, h_ev, h_ts
        seed_ts = session_seed_times(all_ts, len(sess))
        uvec = CC.history_vector(self.emb, all_rows, all_ev, all_ts, now, self.cparams)
        user_row_vals = self.user_feats[user_row] if user_row is not None else self.user_mean
        yield from done("user")

        frac = n_allowed / max(self.n_items, 1)
        brute = allowed is not None and (frac < C.BRUTE_FRACTION or n_allowed <= C.BRUTE_MAX and frac < 0.5)
        q = dict(self.quotas)
        if not req.exclude_consumed:
            consumed = np.zeros(0, np.int32)
        elif len(sess):
            consumed = CC.sorted_unique(np.concatenate([h_consumed, sess]))
        else:
            consumed = h_consumed
        # the trainer's lists (same recency rules, so the ranker sees what it was trained on)
        # a filter drops items after the ANN query: over-fetch; with none, ask for n as the trainer does
        # (hnswlib searches with max(ef, k): one more changes the answer, and the ranker's features)
        over = 1.0 / max(frac, 0.05)
        fetch = (lambda n: n) if allowed is None else (lambda n: int(n * over) + 1)
        ann = CC.ann_lists(lambda n: self.ann.query(uvec, fetch(n), allowed, brute, self.ef, hidden),
                           self.cparams, all_rows, self.n_items - len(hidden), req.exclude_consumed, allowed,
                           consumed)
        yield from within("ann")
        # the request's country, where it has a list and this request reads it
        region = (self.countries.code(req.country, user_row)
                  if self.countries is not None and (self.cold_regional if cold else self.warm_regional) else None)
        trend = (self.trend_rows, self.trend_scores) if region is None or cold else \
            self.countries.head(region, CC.popular_depth(self.cparams, len(all_rows)))
        base = CC.source_lists(all_rows, seed_ts, ann[0], ann[1], self.i2i_rows, self.i2i_scores, *trend,
                               self.cparams, drop_history=req.exclude_consumed, hidden=hidden)
        # what no list may hold: the consumed items and those not created yet
        gone = CC.sorted_unique(np.concatenate([consumed, hidden])) if len(hidden) else consumed
        lists = dict(zip(CC.SOURCES, base))
        # at least four times k candidates (CC.served_quota), the popular source making up the rest
        q["popular"], budget = CC.served_quota(self.cparams, k, len(all_rows) > 0)
        bits = snap.exclusion_bits(gone, allowed)

        def merge(pop, quota):
            lists["popular"] = pop
            return merge_candidates([lists.get(s, C.EMPTY) for s in self.sources],
                                    [quota if s == "popular" else q[s] for s in self.sources], budget,
                                    self.n_items, bits)

        def popular(quota):
            return self._popular(trained, quota, region, cold, include, allowed, gone, snap)

        trained = lists["popular"]          # as trained: trending without the history's items
        if self._popular_bit is None:
            merged = merge(C.EMPTY, 0)
        else:
            merged, _ = CC.top_up(merge, popular, q["popular"], CC.PER_K * k, self._popular_bit, bits)
        counts = {s: int(np.count_nonzero(merged.sources & (1 << i))) for i, s in enumerate(self.sources)}
        rows, srcs = merged.rows, merged.sources
        by_ranker = not cold or self.cold_by_ranker
        if cold and self.new_items is not None:     # built only for the trending order with the boost on
            # new items, which have had little time to trend, for the novelty boost to weigh (cold only)
            # (created by the request's time: released; the unreleased ones are outside the window)
            new = self.new_items.rows(now, float(self.cparams["new_item_days"]), k, allowed,
                                      np.concatenate([consumed, rows]))
            rows = np.concatenate([rows, new.astype(rows.dtype)])
            srcs = np.concatenate([srcs, np.full(len(new), self._new_bit, srcs.dtype)])
            counts[NEW_SOURCE] = len(new)
        yield from done("candidates")
        if len(rows) == 0:
            return Result([], self.version, timings + [("total", (time.perf_counter() - t0) * 1000)], cold,
                          counts, *self._cold_list(cold, region))

        if by_ranker:
            dev = float(req.device)
            ctx = R.context_vector(self.schema, float(hour), float(weekday), dev, req.extra)
            # every feature is a snapshot at the bundle's now (the user's, the items' popularity, the item
            # age, as in training); the request's time gives the context (hour, weekday) and the release cut
            X = R.features(snap.crosser, user_row_vals, uvec, merged, ctx, self.now / 86400.0)
            yield from within("features")
            scores = self.ranker.predict(X)
        else:   # cold: the trending score (the ranker never saw a user without history; cold_order)
            scores = (self.trend_of_row[rows].astype(np.float64) if region is None
                      else self.countries.score_of(region, rows))
        yield from done("ranking")

        rel = RR.minmax(scores)
        creators = (feats[rows, self.c_creator].astype(np.int64)
                    if self.c_creator is not None else None)
        boost = float(self.cparams["novelty_boost"])
        novelty = None
        if boost and self.created is not None:     # new in the catalogue: created within new_item_days
            age_days = (now - self.created[rows]) / 86400.0     # NaN (unknown) is never new
            novelty = (age_days <= float(self.cparams["new_item_days"])).astype(np.float32)
        pos, pen = RR.diversify(rel, self.emb, rows, k, lam, creators, mpc, novelty, boost)
        if novelty is not None:     # the relevance explained is the one MMR weighed, the boost included
            rel = rel + boost * novelty
        yield from done("rerank")

        contribs: list = [[] for _ in pos]
        if req.explain:     # LightGBM's pred_contrib costs about 0.5 ms a row: a few rows between pauses
            for a in range(0, len(pos) if by_ranker else 0, EXPLAIN_CHUNK):
                yield from within("explain")
                contribs[a:a + EXPLAIN_CHUNK] = self.ranker.contributions(X[pos[a:a + EXPLAIN_CHUNK]])
            pen = RR.penalties(self.emb, rows[pos], lam)
            lap("explain")                  # its own stage: pred_contrib is the costliest step of such a call
        ids = self.tables.ids_of("item", rows[pos])
        names = self._source_names
        items = [Item(i, s, names(m), c, pe, r) for i, s, m, c, pe, r in
                 zip(ids, scores[pos].tolist(), srcs[pos].tolist(), contribs, pen.tolist(),
                     rel[pos].tolist())]
        lap("assemble")
        timings.append(("total", (time.perf_counter() - t0) * 1000.0))
        return Result(items, self.version, timings, cold, counts, *self._cold_list(cold, region))

    # -- SimilarItems ------------------------------------------------------------------------------
    def similar(self, item_id: str, k: int, filters: Filters, deadline: float | None = None) -> Result:
        return similar_items(self, item_id, k, filters, deadline)

    # -- writes ------------------------------------------------------------------------------------
    def validate_events(self, events: list[Event]) -> list[Event]:
        """Validated events (timestamp 0 -> now); unknown items reject the whole batch, naming them."""
        if not events:
            raise InvalidArgument("events", "the batch is empty")
        check_batch(len(events), "events", "events")
        now = time.time()
        out, unknown = [], []
        for i, e in enumerate(events):
            check_id(e.user_id, f"events[{i}].user_id")
            check_id(e.item_id, f"events[{i}].item_id")
            if not 0 <= e.type <= 4:
                raise InvalidArgument(f"events[{i}].type", "must be view, click, cart, purchase or rating")
            check_ts(e.timestamp, f"events[{i}].timestamp")
            if e.timestamp > now + MAX_EVENT_AHEAD:     # it would outrank, and evict, the user's real events
                raise InvalidArgument(f"events[{i}].timestamp", f"{e.timestamp:.0f} is more than a day after the "
                                      f"server's clock ({now:.0f})")
            if self.tables.row_of("item", e.item_id) is None:
                unknown.append(e.item_id)
            out.append(Event(e.user_id, e.item_id, e.type, e.timestamp or now, server_time=not e.timestamp))
        if unknown:
            raise unknown_ids("events.item_id", unknown)
        return out

    def record_events(self, events: list[Event], deadline: float | None = None, abandoned=None) -> Recorded:
        """Validate and write a batch; nothing is written when ``deadline`` (monotonic) passes, or
        ``abandoned()`` turns true (the call was cancelled), before the commit: the client has given up,
        and its retry will not count the events twice."""
        return self.store.record(*self.events_write(events, deadline, abandoned))

    def events_write(self, events: list[Event], deadline: float | None = None, abandoned=None) -> tuple:
        """What :meth:`record_events` hands the store, for it or a group commit (``EventStore.record_many``):
        (the validated events, ``known_user``, ``before_commit``)."""
        if self.store is None:
            raise RuntimeError("no event store")

        def before_commit():
            if deadline is not None and time.monotonic() > deadline or abandoned is not None and abandoned():
                raise DeadlineExceeded("write")

        return self.validate_events(events), self.known_user, before_commit

    def update_items(self, updates: list[tuple[str, bool | None, float | None]]) -> int:
        if self.store is None:
            raise RuntimeError("no event store")
        if not updates:
            raise InvalidArgument("items", "the batch is empty")
        check_batch(len(updates), "items", "updates")
        unknown = []
        for i, (item_id, in_stock, price) in enumerate(updates):
            check_id(item_id, f"items[{i}].item_id")
            if in_stock is None and price is None:
                raise InvalidArgument(f"items[{i}]", "sets neither in_stock nor price")
            if price is not None and not 0 <= price <= MAX_PRICE:
                raise InvalidArgument(f"items[{i}].price", f"must be in [0, {MAX_PRICE:g}], got {price}")
            if self.tables.row_of("item", item_id) is None:
                unknown.append(item_id)
        if unknown:
            raise unknown_ids("items.item_id", unknown)
        n = self.store.update_items(updates)
        self._refresh_items()
        return n

    def warmup(self) -> None:
        """One request through every stage, so a broken bundle fails before it is swapped in."""
        self.recommend(RecRequest(k=5))
        lengths = np.diff(np.asarray(self.histories.indptr))
        if len(lengths) and lengths.max() > 0:      # and the user with the longest history: its own stages
            self.recommend(RecRequest(user_id=self.tables.id_of("user", int(lengths.argmax())), k=5))
        if self.n_items:
            self.similar(self.tables.id_of("item", 0), 5, Filters(in_stock_only=False))


def session_seed_times(ts: np.ndarray, n_session: int) -> np.ndarray:
    """The times the candidate sources split sessions by: ``ts`` with its last ``n_session`` (the request's
    session, dated the request's time) after the history's newest event, as far from it as the request's
    time is. A request dated before her newest event (a replay, an event recorded up to a day ahead) gave
    a negative gap, which split nothing: a request 30 days before her newest event had the session source
    seeded by that event too, as if she were still in its session."""
    if n_session == 0 or len(ts) == n_session:
        return ts
    last = ts[:-n_session].max()
    out = ts.copy()
    out[-n_session:] = last + np.abs(out[-n_session:] - last)
    return out
