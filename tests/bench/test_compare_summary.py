"""bench/compare.py's summary of alternating rounds, on synthetic rounds (no server): the ratios, the rounds B
did better and worse, and the sign test's probability, checked against scipy's exact binomial test."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest


def _rounds(pairs, figure="p99 Recommend"):
    from compare import FIGURES

    rows = []
    for a, b in pairs:
        row = {side: {f: 1.0 for f in FIGURES} for side in "AB"}
        row["A"][figure], row["B"][figure] = a, b
        rows.append(row)
    return rows


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40))
def test_sign_test_is_the_exact_two_sided_binomial_test(better, worse):
    from compare import sign_test

    expect = 1.0 if better + worse == 0 else binomtest(better, better + worse, 0.5).pvalue
    assert sign_test(better, worse) == pytest.approx(expect, rel=1e-9, abs=1e-300)
    assert sign_test(better, worse) == sign_test(worse, better)


def test_summary_counts_better_worse_and_ties_by_the_figure_s_direction():
    from compare import summary

    # p99: lower is better; 10 rounds B lower, 2 higher, 1 tie, 1 round where A measured nothing
    pairs = [(20.0, 17.0)] * 10 + [(20.0, 22.0)] * 2 + [(20.0, 20.0), (0.0, 5.0)]
    s = summary(_rounds(pairs))["p99 Recommend"]
    assert (s["b_better_rounds"], s["b_worse_rounds"], s["rounds"]) == (10, 2, 13)
    assert s["sign_test_p"] == pytest.approx(binomtest(10, 12, 0.5).pvalue)
    assert s["sign_test_p"] == pytest.approx(0.0386, abs=1e-4)
    assert s["median"] == pytest.approx(0.85)
    # throughput: higher is better, so the same ratios count the other way
    t = summary(_rounds(pairs, "throughput"))["throughput"]
    assert (t["b_better_rounds"], t["b_worse_rounds"]) == (2, 10) and t["sign_test_p"] == s["sign_test_p"]
    # an even split is no evidence either way
    even = summary(_rounds([(1.0, 2.0), (2.0, 1.0)] * 4))["p99 Recommend"]
    assert even["sign_test_p"] == 1.0
