"""The server's Prometheus metrics: requests and errors by method and status code, latency per method and
per Recommend stage, merged candidates per source, bundle loads and the loaded version, events written,
the event store's size.
With several workers they are kept in prometheus_client's multiprocess files and served by the supervisor.

A Recommend makes a dozen observations. Written one by one to the multiprocess files they cost about
25 µs a call, so the per-call ones are added up in the worker (:class:`_Pending`) and written when the
worker has no call in flight, or every ``FLUSH_S`` seconds under continuous load (:meth:`Metrics.settle`).
"""
from __future__ import annotations

import bisect
import time


class _Pending:
    """Observations of one labelled histogram child not yet written: a count per bucket and their sum."""

    __slots__ = ("child", "bounds", "counts", "total", "n", "batched")

    def __init__(self, child):
        self.child = child
        # the child's value per bucket and for the sum (prometheus_client's own layout, checked here: a
        # release that changed it is observed one by one instead)
        self.batched = all(hasattr(child, a) for a in ("_upper_bounds", "_buckets", "_sum"))
        self.bounds = list(child._upper_bounds) if self.batched else []
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.n = 0

    def add(self, value: float) -> None:
        if not self.batched:
            self.child.observe(value)
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += 1     # the first bucket with value <= bound
        self.total += value
        self.n += 1

    def write(self) -> None:
        if not self.n:
            return
        for i, c in enumerate(self.counts):
            if c:
                self.child._buckets[i].inc(c)
                self.counts[i] = 0
        self.child._sum.inc(self.total)
        self.total = 0.0
        self.n = 0


class Metrics:
    FLUSH_S = 0.5       # the longest a per-call observation waits to be written under continuous load

    def __init__(self, registry=None):
        """``registry``: prometheus_client's default one unless given (tests give their own)."""
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        r = REGISTRY if registry is None else registry

        self.requests = Counter("recserve_requests_total", "RPCs by method and status code", ["method", "code"],
                                registry=r)
        self.latency = Histogram("recserve_request_seconds", "RPC latency", ["method"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5), registry=r)
        self.reloads = Counter("recserve_reloads_total", "bundle loads by outcome", ["outcome"], registry=r)
        self.version = Gauge("recserve_bundle_loaded", "1 for the loaded bundle version", ["version"],
                             multiprocess_mode="livemax", registry=r)
        self.stage = Histogram("recserve_stage_seconds", "Recommend pipeline stage latency", ["stage"],
                               buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1), registry=r)
        self.candidates = Histogram("recserve_candidates", "merged candidates per Recommend, by the "
                                    "source that found them", ["source"],
                                    buckets=(0, 5, 10, 25, 50, 100, 200, 500, 1000, 2000), registry=r)
        self.events = Counter("recserve_events_written_total", "events made durable by RecordEvents",
                              registry=r)
        self.events_before_data_end = Counter(
            "recserve_events_before_data_end_total", "events of written RecordEvents batches dated before the "
            "served bundle's data end, of users it holds a history of: taken to be in the bundle, they exclude "
            "their items but move no user vector",
            registry=r)
        self.cold = Counter("recserve_cold_answers_total", "Recommends answered from the cold-start path, by "
                            "what ordered them: a country's trending list, the global one, or the ranker",
                            ["list"], registry=r)
        self.forwarded = Counter("recserve_forwarded_total", "Recommends computed by an idle sibling worker",
                                 registry=r)
        # the event store's file, shared by the workers (the same value from each: the largest is current)
        self.store_used = Gauge("recserve_event_store_used_bytes", "the event store's high-water mark: pages "
                                "ever used, freed ones included (LMDB reuses them)", multiprocess_mode="max",
                                registry=r)
        self.store_map = Gauge("recserve_event_store_map_bytes", "the event store's map (--events-map-mb): "
                               "writes fail once the used pages reach it and none is free",
                               multiprocess_mode="max", registry=r)
        # per label set, looked up once: the pending observations of a histogram child, the pending count
        # of a counter child
        self._hists: dict[tuple, _Pending] = {}
        self._counts: dict[tuple, list] = {}
        self._written = time.monotonic()

    def _hist(self, metric, *labels) -> _Pending:
        key = (id(metric), *labels)
        p = self._hists.get(key)
        if p is None:
            p = self._hists[key] = _Pending(metric.labels(*labels))
        return p

    def observe(self, method: str, code: str, seconds: float | None) -> None:
        """One finished RPC (pending until :meth:`settle` writes it); ``seconds`` None: counted, no latency
        (a call refused before its method ran)."""
        key = (method, code)
        c = self._counts.get(key)
        if c is None:
            c = self._counts[key] = [self.requests.labels(method, code), 0]
        c[1] += 1
        if seconds is not None:
            self._hist(self.latency, method).add(seconds)

    def observe_recommend(self, timings, source_counts, cold_list: str = "") -> None:
        """A Recommend's stage times (ms), merged candidates per source and, for a cold answer, what ordered
        it (``country``, ``global`` or ``ranker``): pending until :meth:`settle`."""
        if cold_list:
            c = self._counts.get(("cold", cold_list))
            if c is None:
                c = self._counts[("cold", cold_list)] = [self.cold.labels(cold_list), 0]
            c[1] += 1
        for stage, ms in timings:
            if stage != "total":
                self._hist(self.stage, stage).add(ms / 1000.0)
        for source, n in source_counts.items():
            self._hist(self.candidates, source).add(n)

    def store_usage(self, used: int, map_size: int) -> None:
        """The event store's size (:meth:`recserve.events.EventStore.usage`), after a write."""
        self.store_used.set(used)
        self.store_map.set(map_size)

    def settle(self, idle: bool) -> None:
        """Write the pending observations when the worker is ``idle`` (no call in flight) or the last write
        is ``FLUSH_S`` old. Called by the worker's event loop after every call."""
        if idle or time.monotonic() - self._written >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        for c in self._counts.values():
            if c[1]:
                c[0].inc(c[1])
                c[1] = 0
        for p in self._hists.values():
            p.write()
        self._written = time.monotonic()

    @property
    def written_at(self) -> float:
        """``time.monotonic()`` of the last write of the pending observations."""
        return self._written
