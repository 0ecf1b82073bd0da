"""bench/_clients.py's summary of one phase, on synthetic call records (no server)."""
from __future__ import annotations

import numpy as np

PHASE = {"warmup": 1.0, "duration": 11.0}


def _records(t, lat, code):
    from _servers import METHODS

    rec = METHODS.index("Recommend")
    return {"t": np.asarray(t, float), "lat": np.asarray(lat, float), "method": np.full(len(t), rec, np.int8),
            "lag": np.zeros(len(t)), "code": np.asarray(code, np.int16)}


def test_throughput_counts_calls_finished_in_the_window():
    """An open loop offers 100 calls/s to a server that answers 50/s: its queue grows, and the throughput
    says 50/s (before: the calls *due* in the window, 100/s, as if it kept up)."""
    from _clients import summarize

    t = np.arange(0, 11, 0.01)                              # offered 100/s for 11 s
    done = np.arange(len(t)) * 0.02 + 0.01                  # one answer every 20 ms, in order
    m = summarize(_records(t, done - t, np.zeros(len(t))), ["OK"], 0.0, PHASE)["methods"]["ALL"]
    assert m["calls"] == 1000                               # due in [1, 11)
    assert abs(m["throughput"] - 50.0) < 1.0, m["throughput"]
    # a server that keeps up: throughput = the offered rate
    m = summarize(_records(t, np.full(len(t), 0.002), np.zeros(len(t))), ["OK"], 0.0, PHASE)["methods"]["ALL"]
    assert abs(m["throughput"] - 100.0) < 1.0


def test_percentiles_are_numpys_over_the_ok_calls_and_errors_are_counted_apart():
    from _clients import summarize

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


def test_a_late_send_counts_its_wait_and_an_early_one_does_not_shorten_the_call():
    """The client's own backlog is latency (coordinated omission): ``lat`` runs from the intended time
    of a late send. An early timer's call is timed from its send. Throughput counts when calls finish."""
    from _clients import summarize

    t = np.arange(0, 11, 0.01)                               # 100/s intended
    lag = np.arange(len(t)) * 0.005                          # the client falls behind 5 ms per call
    call = 0.002
    lat = lag + call                                         # as _drive records a late send
    rec = _records(t, lat, np.zeros(len(t)))
    rec["lag"] = lag
    m = summarize(rec, ["OK"], 0.0, PHASE)["methods"]["ALL"]
    due = (t >= 1) & (t < 11)
    assert m["p50"] == np.percentile(lat[due] * 1e3, 50) > 1000         # seconds of backlog, not 2 ms
    finished = t + lag + call
    assert m["throughput"] == np.sum((finished >= 1) & (finished < 11)) / 10.0 < 70
    early = _records(t, np.full(len(t), call), np.zeros(len(t)))       # sent 1 ms early: timed from the send
    early["lag"] = np.full(len(t), -0.001)
    m = summarize(early, ["OK"], 0.0, PHASE)["methods"]["ALL"]
    assert m["p50"] == call * 1e3


def test_call_latency_runs_from_the_earlier_of_the_intended_and_the_actual_send():
    from _clients import call_latency

    assert abs(call_latency(intended=10.0, sent=10.5, done=10.6) - 0.6) < 1e-12       # late: its wait counts
    assert abs(call_latency(intended=10.0, sent=9.999, done=10.002) - 0.003) < 1e-12   # early: from the send


def test_a_window_with_no_call_due_still_has_ALL_with_0_calls():
    """A server slower than the window: the only call was due before it. "ALL" is there with 0 calls (it was
    missing, and the report failed with KeyError: 'ALL')."""
    from _clients import summarize

    phase = {"warmup": 1.0, "duration": 2.0}                 # window [1, 2); the call answers at 3 s
    out = summarize(_records([0.0], [3.0], [0]), ["OK"], 0.0, phase)["methods"]
    assert list(out) == ["ALL"]
    assert out["ALL"]["calls"] == 0 and out["ALL"]["throughput"] == 0.0 and out["ALL"]["errors"] == {}
    assert np.isnan(out["ALL"]["p99"])
    out = summarize(_records([], [], []), [], 0.0, phase)["methods"]          # no call at all
    assert out["ALL"]["calls"] == 0


def _row(offered, p99, errors=0, due=None, ok_done=None):
    """A sweep row from a made-up phase summary: ``due`` calls due in a 10 s window, ``ok_done`` OK answers."""
    from _sweep import sweep_row

    due = int(offered * 10) if due is None else due
    ok_done = due if ok_done is None else ok_done
    real = {"window_s": 10.0, "methods": {"ALL": {"calls": due, "ok": ok_done, "throughput": ok_done / 10.0,
                                                  "p50": p99 / 2, "p99": p99,
                                                  "errors": {"UNAVAILABLE": errors} if errors else {}}}}
    return sweep_row(offered, real, None, p99_ms=15.0)


def test_the_sweep_judges_no_p99_on_fewer_answers_than_the_phase_table_shows_one():
    """The phase table showed '-' for a p99 over 34 OK answers, and the summary said the bound "held at every
    rate swept" on that p99. A rate with too few answers is not judged: not a pass, and said so."""
    from _sweep import describe, summarize_sweep

    few = _row(3, 5.0, due=34)
    assert not few["met_p99"] and not few["p99_judged"] and few["ok"] == 34
    s = summarize_sweep([few])["p99_bound"]
    assert s["max_rate"] is None and not s["held_at_every_rate"] and s["too_few_answers_at"] == [3]
    assert s["failed_at"] == []
    assert describe(s) == ("not judged at the lowest rate swept, 3/s (too few OK answers to judge a p99 (under "
                           "100) at 3/s)")
    s = summarize_sweep([_row(100, 5.0), _row(5, 5.0, due=40), _row(200, 20.0)])["p99_bound"]
    assert s["max_rate"] is None and s["too_few_answers_at"] == [5] and s["failed_at"] == [200]
    s = summarize_sweep([_row(100, 5.0), _row(200, 5.0, due=99), _row(300, 5.0)])["p99_bound"]
    assert s["max_rate"] == 100 and "too few OK answers to judge a p99 (under 100) at 200/s" in describe(s)
    assert summarize_sweep([few])["kept_up"]["held_at_every_rate"]       # kept up with: 34 of 34 answered
    # errors fail a rate however few OK answers it had: 50 of 2,000 answered, the rest UNAVAILABLE
    s = summarize_sweep([_row(200, 5.0, errors=1950, due=2000, ok_done=50)])["p99_bound"]
    assert s["failed_at"] == [200] and s["too_few_answers_at"] == []
    assert describe(s) == "not held at the lowest rate swept, 200/s (failed at 200/s)"


def test_sweep_takes_the_last_rate_before_the_first_failure_not_the_highest_passing():
    from _sweep import describe, summarize_sweep

    rows = [_row(100, 5.0), _row(200, 20.0), _row(300, 9.0), _row(400, 30.0, errors=3)]
    s = summarize_sweep(rows)["p99_bound"]
    assert s["max_rate"] == 100 and s["failed_at"] == [200, 400] and not s["held_at_every_rate"]
    assert "up to 100/s" in describe(s) and "200, 400" in describe(s)
    rows = [_row(300, 5.0), _row(100, 5.0), _row(200, 5.0)]                      # any order
    s = summarize_sweep(rows)["p99_bound"]
    assert s["held_at_every_rate"] and s["max_rate"] == 300
    assert describe(s) == "held at every rate swept (the limit is above 300/s)"
    s = summarize_sweep([_row(100, 50.0), _row(200, 5.0)])["p99_bound"]
    assert s["max_rate"] is None and "lowest rate swept, 100/s" in describe(s)


def test_kept_up_compares_the_ok_answers_with_the_calls_actually_due():
    """A Poisson schedule due 930 calls in the window at a nominal 100/s: 900 answers keep up with it (they
    would not against the nominal 1,000); 850 do not."""
    from _sweep import summarize_sweep

    assert _row(100, 5.0, due=930, ok_done=900)["kept_up"]
    assert not _row(100, 5.0, due=930, ok_done=850)["kept_up"]
    assert not _row(100, float("nan"), due=0, ok_done=0)["kept_up"]           # nothing due: nothing shown
    s = summarize_sweep([_row(100, 5.0), _row(200, 5.0, due=2000, ok_done=1000), _row(300, 5.0)])["kept_up"]
    assert s["max_rate"] == 100 and s["failed_at"] == [200]


class _Flag:
    def is_set(self):
        return True


class _Queue:
    def put(self, _):
        pass


def test_the_open_loop_counts_client_exceptions_and_calls_left_unanswered(monkeypatch):
    """A call that raises something other than a gRPC error is CLIENT_EXCEPTION:<type>, and one still
    unanswered after its deadline and the grace is CLIENT_TIMEOUT: every scheduled call has a record (they
    were lost: the exception in its task, the pending task dropped)."""
    import asyncio
    import time
    from types import SimpleNamespace

    import _clients
    from _servers import METHODS

    monkeypatch.setattr(_clients, "DRAIN_GRACE_S", 0.2)
    n_calls = [0]

    async def fake_call(body, timeout):
        n_calls[0] += 1
        if n_calls[0] <= 20:                # the connection's warm-up calls: answered
            return None
        if body == b"boom":
            raise ValueError("a bug in the client")
        if body == b"hang":
            await asyncio.sleep(3600)
        return None

    requests = [("Recommend", b"ok"), ("Recommend", b"boom"), ("Recommend", b"hang")] * 100
    phase = _clients.phase_config("open", duration=0.5, channels=1, deadline=0.1, warmup=0.0, rate=40.0)
    res = asyncio.run(_clients._drive(0, [{m: fake_call for m in METHODS}], requests, phase, _Queue(), _Flag(),
                                      SimpleNamespace(value=time.monotonic())))
    due = len(res["t"])
    assert due > 0
    codes = [res["codes"][c] for c in res["code"]]
    expected = {"OK": 0, "CLIENT_EXCEPTION:ValueError": 0, "CLIENT_TIMEOUT": 0}
    for j in range(due):                    # the j-th scheduled call sends requests[j]
        expected[["OK", "CLIENT_EXCEPTION:ValueError", "CLIENT_TIMEOUT"][j % 3]] += 1
    assert {c: codes.count(c) for c in expected} == expected
    assert np.all(np.isfinite(res["lat"]))     # every one of them was sent


def test_the_table_shows_the_ok_count_and_no_tail_percentile_from_too_few_answers(capsys):
    """49 OK answers: their "p99.9" and "p99" are the slowest two blended, so the table shows '-' there and
    says on how many answers the latencies rest (before: 'calls' only, which counts failures too)."""
    from _clients import summarize
    from load import print_phase

    rng = np.random.default_rng(1)
    for n, shown in ((49, {"p99": False, "p99.9": False}), (500, {"p99": True, "p99.9": False}),
                     (3000, {"p99": True, "p99.9": True})):
        t = np.sort(rng.uniform(1, 11, n))
        s = summarize(_records(t, rng.lognormal(-6, 1, n), np.zeros(n)), ["OK"], 0.0, PHASE)
        s.update(server_cpu_ms_per_call=float("nan"))
        print_phase("p", s, None)
        row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Recommend")).split()
        assert row[1] == row[2] == str(n)                   # calls, ok
        p99, p999 = row[6], row[7]
        assert (p99 != "-") == shown["p99"] and (p999 != "-") == shown["p99.9"], (n, row)
        if shown["p99.9"]:
            assert float(p999) == round(s["methods"]["Recommend"]["p99.9"], 2)
