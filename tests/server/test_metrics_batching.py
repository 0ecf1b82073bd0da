"""The worker's metrics add up per-call observations and write them in one go: what a scrape then shows
must be exactly what writing every observation at once would have shown."""
import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from recserve.metrics import Metrics


def exposition(registry) -> dict[str, float]:
    """The scrape's samples without the creation timestamps (they differ between two registries)."""
    out = {}
    for ln in generate_latest(registry).decode().splitlines():
        if ln.startswith("#") or "_created" in ln:
            continue
        name, value = ln.rsplit(" ", 1)
        out[name] = float(value)
    return out


def assert_same(a: dict, b: dict) -> None:
    """Every count equal; sums equal up to the order of their additions."""
    assert a.keys() == b.keys()
    for k in a:
        if "_sum{" in k:
            assert np.isclose(a[k], b[k], rtol=1e-12, atol=0), k
        else:
            assert a[k] == b[k], k


def calls(seed: int, n: int):
    rng = np.random.default_rng(seed)
    stages = ["validate", "user", "candidates", "ranking", "rerank", "assemble"]
    for i in range(n):
        # values on and around the bucket bounds too (a value equal to a bound belongs to that bucket)
        ms = rng.choice([0.1, 0.25, 1.0, 2.5, 10.0, 100.0, 1e4, float(rng.random() * 20)], len(stages))
        timings = list(zip(stages, ms.tolist())) + [("total", float(ms.sum()))]
        sources = {s: int(rng.choice([0, 5, 7, 200, 3000])) for s in ("ann", "i2i", "session", "popular")}
        code = ["OK", "OK", "INVALID_ARGUMENT", "NOT_FOUND"][i % 4]
        cold = ["", "", "country", "global", "ranker"][i % 5]
        yield timings, sources, code, float(rng.choice([0.001, 0.0004, 0.003, 2.5, 30.0])), cold


def test_batched_writes_expose_the_same_metrics_as_direct_observations():
    batched_reg, direct_reg = CollectorRegistry(), CollectorRegistry()
    batched, direct = Metrics(batched_reg), Metrics(direct_reg)
    for i, (timings, sources, code, seconds, cold) in enumerate(calls(0, 500)):
        batched.observe_recommend(timings, sources, cold)
        batched.observe("Recommend", code, seconds)
        batched.settle(idle=i % 97 == 0)
        for stage, ms in timings:
            if stage != "total":
                direct.stage.labels(stage).observe(ms / 1000.0)
        for s, n in sources.items():
            direct.candidates.labels(s).observe(n)
        direct.requests.labels("Recommend", code).inc()
        if cold:
            direct.cold.labels(cold).inc()
        direct.latency.labels("Recommend").observe(seconds)
    assert exposition(batched_reg) != exposition(direct_reg)       # the last calls are still pending
    batched.flush()
    assert_same(exposition(batched_reg), exposition(direct_reg))
    assert exposition(batched_reg)['recserve_cold_answers_total{list="country"}'] == 100


def test_pending_observations_are_written_when_idle_or_after_the_flush_interval(monkeypatch):
    reg = CollectorRegistry()
    m = Metrics(reg)

    def count(code="OK"):
        return reg.get_sample_value("recserve_requests_total", {"method": "SimilarItems", "code": code}) or 0.0

    clock = [1000.0]
    monkeypatch.setattr("recserve.metrics.time.monotonic", lambda: clock[0])
    m.flush()
    for _ in range(3):
        m.observe("SimilarItems", "OK", 0.002)
        m.settle(idle=False)                 # calls still in flight, the last write is recent
    assert count() == 0
    clock[0] += Metrics.FLUSH_S
    m.observe("SimilarItems", "OK", 0.002)
    m.settle(idle=False)                     # continuous load: written once FLUSH_S has passed
    assert count() == 4
    m.observe("SimilarItems", "NOT_FOUND", 0.002)
    m.settle(idle=True)                      # nothing in flight: written at once
    assert count("NOT_FOUND") == 1
    assert reg.get_sample_value("recserve_request_seconds_count", {"method": "SimilarItems"}) == 5


def test_answered_calls_reach_the_scrape_while_a_long_call_is_in_flight(shared_root, facts, start_server, tmp_path):
    """The observations were written only as calls ended: with one Recommend in flight for 6 s, the four
    SimilarItems answered meanwhile stayed out of the scrape until it ended (and a SIGKILL then lost them)."""
    import time
    import urllib.request

    from recserve.v1 import recommender_pb2 as pb
    from srvutil import metric

    s = start_server(shared_root, "--workers", "1", "--events-dir", str(tmp_path / "ev"), metrics=True,
                     env={"RECSERVE_DEBUG_DELAY_MS": "6000"})
    stub = s.stub()
    slow = stub.Recommend.future(pb.RecommendRequest(user_id=facts["user"], k=5), timeout=30)
    time.sleep(0.5)
    for _ in range(4):
        stub.SimilarItems(pb.SimilarItemsRequest(item_id=facts["items"][0], k=5), timeout=10)
    answered = time.monotonic()

    def similar_ok() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10).read().decode()
        return metric(text, "recserve_requests_total", method="SimilarItems", code="OK")

    while similar_ok() < 4 and time.monotonic() < answered + 3:
        time.sleep(0.1)
    assert similar_ok() == 4 and not slow.done()
    slow.result()
