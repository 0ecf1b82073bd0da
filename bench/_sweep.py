"""The load generator's rate sweep (``bench/load.py --sweep``): one row per open-loop rate, and the summary.

A rate *meets the latency bound* when the p99 of its OK answers is under the bound and no call failed; a rate
with fewer OK answers than a p99 needs (``TAIL_SAMPLES``, as the phase tables show one) is not judged, and
counts as not meeting it (listed apart: "too few OK answers"). The
server *kept up* with a rate when the OK answers that finished in the measured window are at least 95 % of
the calls due (scheduled, by their Poisson send times) in it. Each figure is the highest rate swept such
that it and every lower rate swept passed: a rate that passes above one that failed is listed, not taken.
"""
from __future__ import annotations

KEEP_UP = 0.95      # OK answers finished in the window, as a share of the calls due in it
# OK answers a tail percentile needs to be more than the few slowest calls blended (the JSON keeps every value)
TAIL_SAMPLES = {"p99": 100, "p99.9": 1000}


def sweep_row(offered: float, real: dict, ceiling: dict | None, p99_ms: float) -> dict:
    """One rate's row from the phase summaries (``_clients.summarize``) of recserve and of the ceiling."""
    v = real["methods"]["ALL"]
    cv = (ceiling or {}).get("methods", {}).get("ALL", {})
    errors = sum(v["errors"].values())
    done = v["throughput"] * real["window_s"]           # OK answers finished in the window
    judged = v["ok"] >= TAIL_SAMPLES["p99"]             # a p99 over enough answers to say something
    return {"offered": offered, "due": v["calls"], "due_per_s": v["calls"] / real["window_s"],
            "achieved": v["throughput"], "ok": v["ok"], "p50": v["p50"], "p99": v["p99"], "p99_judged": judged,
            "errors": errors, "ceiling_p99": cv.get("p99", float("nan")),
            "ceiling_ok": cv.get("ok", 0), "ceiling_achieved": cv.get("throughput", float("nan")),
            "met_p99": bool(judged and v["p99"] < p99_ms and errors == 0),
            "kept_up": bool(v["calls"] > 0 and done >= KEEP_UP * v["calls"])}


def _highest(rows: list[dict], key: str, judged: str | None = None) -> dict:
    """The highest rate passing ``key`` with every lower one; a row whose ``judged`` is false (too few answers
    to judge) stops it too, and is listed apart from the failures unless it had errors."""
    rows = sorted(rows, key=lambda r: r["offered"])
    best = None
    for r in rows:
        if not r[key]:
            break
        best = r["offered"]
    # too few answers, and nothing else wrong: a rate with errors failed, however few it answered
    unjudged = [r["offered"] for r in rows if judged and not r[judged] and not r.get("errors")]
    return {"max_rate": best, "failed_at": [r["offered"] for r in rows if not r[key] and r["offered"] not in unjudged],
            "too_few_answers_at": unjudged,
            "held_at_every_rate": all(r[key] for r in rows), "highest_swept": rows[-1]["offered"] if rows else None,
            "lowest_swept": rows[0]["offered"] if rows else None}


def summarize_sweep(rows: list[dict]) -> dict:
    """The highest rate meeting the latency bound, and the highest kept up with, as the module says."""
    return {"p99_bound": _highest(rows, "met_p99", "p99_judged"), "kept_up": _highest(rows, "kept_up")}


def describe(s: dict) -> str:
    """One line for one of :func:`summarize_sweep`'s figures."""
    if s["highest_swept"] is None:
        return "no rate swept"
    if s["held_at_every_rate"]:
        return f"held at every rate swept (the limit is above {s['highest_swept']:.0f}/s)"
    few = s.get("too_few_answers_at", [])
    why = "; ".join(([f"failed at {', '.join(f'{r:.0f}' for r in s['failed_at'])}/s"] if s["failed_at"] else [])
                    + ([f"too few OK answers to judge a p99 (under {TAIL_SAMPLES['p99']}) at "
                        f"{', '.join(f'{r:.0f}' for r in few)}/s"] if few else []))
    if s["max_rate"] is None:
        held = "not judged" if s["lowest_swept"] in few else "not held"
        return f"{held} at the lowest rate swept, {s['lowest_swept']:.0f}/s ({why})"
    return f"up to {s['max_rate']:.0f}/s, and at every lower rate swept ({why})"
