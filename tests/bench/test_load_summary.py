"""bench/_clients.py's summary of one phase, on synthetic call records (no server)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _clients import summarize  # noqa: E402
from _servers import METHODS  # noqa: E402

PHASE = {"warmup": 1.0, "duration": 11.0}
REC = METHODS.index("Recommend")


def _records(t, lat, code):
    return {"t": np.asarray(t, float), "lat": np.asarray(lat, float), "method": np.full(len(t), REC, np.int8),
            "lag": np.zeros(len(t)), "code": np.asarray(code, np.int16)}


def test_throughput_counts_calls_finished_in_the_window():
    """An open loop offers 100 calls/s to a server that answers 50/s: its queue grows, and the throughput
    says 50/s (before: the calls *due* in the window, 100/s, as if it kept up)."""
    t = np.arange(0, 11, 0.01)                              # offered 100/s for 11 s
    done = np.arange(len(t)) * 0.02 + 0.01                  # one answer every 20 ms, in order
    m = summarize(_records(t, done - t, np.zeros(len(t))), ["OK"], 0.0, PHASE)["methods"]["ALL"]
    assert m["calls"] == 1000                               # due in [1, 11)
    assert abs(m["throughput"] - 50.0) < 1.0, m["throughput"]
    # a server that keeps up: throughput = the offered rate
    m = summarize(_records(t, np.full(len(t), 0.002), np.zeros(len(t))), ["OK"], 0.0, PHASE)["methods"]["ALL"]
    assert abs(m["throughput"] - 100.0) < 1.0


def test_percentiles_are_numpys_over_the_ok_calls_and_errors_are_counted_apart():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 11, 5000))
    lat = rng.lognormal(-6, 1, len(t))
    code = (rng.random(len(t)) < 0.02).astype(np.int16)      # 1 = DEADLINE_EXCEEDED
    lat[code == 1] = 5.0
    m = summarize(_records(t, lat, code), ["OK", "DEADLINE_EXCEEDED"], 0.0, PHASE)["methods"]["Recommend"]
    due = (t >= 1) & (t < 11)
    ok = due & (code == 0)
    for p in (50, 90, 99, 99.9):
        assert m[f"p{p:g}"] == np.percentile(lat[ok] * 1e3, p)
    assert m["max"] == lat[ok].max() * 1e3
    assert m["errors"] == {"DEADLINE_EXCEEDED": int((due & (code == 1)).sum())}
    assert m["ok"] == int(ok.sum()) and m["calls"] == int(due.sum())
