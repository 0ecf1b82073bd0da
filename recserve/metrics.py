"""The server's Prometheus metrics: requests and errors by method and status code, latency per method and
per Recommend stage, merged candidates per source, bundle loads and the loaded version, events written.
With several workers they are kept in prometheus_client's multiprocess files and served by the supervisor."""
from __future__ import annotations


class Metrics:
    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("recserve_requests_total", "RPCs by method and status code", ["method", "code"])
        self.latency = Histogram("recserve_request_seconds", "RPC latency", ["method"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.reloads = Counter("recserve_reloads_total", "bundle loads by outcome", ["outcome"])
        self.version = Gauge("recserve_bundle_loaded", "1 for the loaded bundle version", ["version"],
                             multiprocess_mode="livemax")
        self.stage = Histogram("recserve_stage_seconds", "Recommend pipeline stage latency", ["stage"],
                               buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1))
        self.candidates = Histogram("recserve_candidates", "merged candidates per Recommend, by the "
                                    "source that found them", ["source"],
                                    buckets=(0, 5, 10, 25, 50, 100, 200, 500, 1000, 2000))
        self.events = Counter("recserve_events_written_total", "events made durable by RecordEvents")
        self.forwarded = Counter("recserve_forwarded_total", "Recommends computed by an idle sibling worker")
        # labelled children, looked up once per label set (``labels()`` costs a third of an observation)
        self._children: dict[tuple, object] = {}

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def observe(self, method: str, code: str, seconds: float) -> None:
        self._child(self.requests, method, code).inc()
        self._child(self.latency, method).observe(seconds)

    def observe_recommend(self, timings, source_counts) -> None:
        for stage, ms in timings:
            if stage != "total":
                self._child(self.stage, stage).observe(ms / 1000.0)
        for source, n in source_counts.items():
            self._child(self.candidates, source).observe(n)
