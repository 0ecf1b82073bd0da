"""Interactions that share a time at the split: logs backfilled at one time, dates without hours. The test
cut and the ranker's label windows still split them where a later time exists, and the build says the
share it held out, not only the share asked."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from trainer import split
from trainer.cli import main

T0, DAY = 1_700_000_000, 86_400


def _data(tmp_path, when):
    """100 users × 20 interactions over 40 items; ``when(k, t)`` gives interaction k's time from a time ``t``
    spread over 30 days."""
    rnd = random.Random(0)
    d = tmp_path / "d"
    d.mkdir()
    rows = []
    for k in range(2000):
        item = min(int(rnd.expovariate(1 / 10)), 39)
        rows.append(f"u{k // 20},i{item},{when(k, T0 + rnd.randrange(30 * DAY))},"
                    f"{rnd.choice(['view', 'click', 'purchase'])}\n")
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event\n" + "".join(rows))
    (d / "items.csv").write_text("item_id,category,creator,price\n"
                                 + "".join(f"i{i},c{i % 5},cr{i % 7},{i % 9 + 1}.5\n" for i in range(40)))
    return d


def test_a_quantile_on_the_oldest_shared_time_cuts_at_the_next_time():
    ts = np.array([5.0] * 95 + list(range(10, 15)), np.float64)
    cut = split.time_cut(ts, 0.1)
    assert cut == 10.0 and (ts < cut).sum() == 95
    with pytest.raises(ValueError, match="no training interaction"):
        split.time_cut(np.full(50, 7.0), 0.1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=40), st.floats(0.01, 0.99))
def test_a_cut_leaves_both_sides_and_moves_only_where_the_quantile_left_none_before(times, holdout):
    ts = np.array(times, np.float64)
    q = float(np.quantile(ts, 1.0 - holdout))
    if ts.min() == ts.max():
        with pytest.raises(ValueError):
            split.time_cut(ts, holdout)
        return
    cut = split.time_cut(ts, holdout)
    assert (ts < cut).any() and (ts >= cut).any()
    assert cut == (q if (ts < q).any() else ts[ts > q].min())


def test_logs_backfilled_at_one_time_build_and_the_note_says_the_share_held_out(tmp_path, capsys):
    """90 % of the interactions backfilled at one old time: the build failed at --holdout 0 and 0.05, with
    "the time split leaves no training interaction ... build with --holdout 0" (from the ranker's label
    window). At 0.1 the test cut leaves training only the backfill's one time: the ranker's own reason,
    which names --label-split user, and that builds."""
    rnd = random.Random(1)
    d = _data(tmp_path, lambda k, t: T0 - 10 * DAY if rnd.random() < 0.9 else t)

    def build(*flags):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        return main(["build", "--data", str(d), "--no-tune", "--no-progress", *flags, str(out)])

    for holdout in ("0", "0.05"):
        assert build("--holdout", holdout) == 0, capsys.readouterr().err
    held = re.search(r"the newest ([\d.]+)% \((\d+) of 2000\)", capsys.readouterr().err)
    assert held and 0 < int(held[2]) <= 100, held
    assert build("--holdout", "0.1") == 2
    err = capsys.readouterr().err
    assert "no label window for the ranker" in err and "try --label-split user" in err, err
    assert build("--holdout", "0.1", "--label-split", "user") == 0, capsys.readouterr().err


def test_dates_without_hours_hold_out_a_whole_day_and_say_so(tmp_path, capsys):
    """Five weekly dates, 400 interactions each: --holdout 0.1 holds out the last date, 20 %; the note said
    "the newest 10%"."""
    dates = ["2024-01-01", "2024-01-08", "2024-01-15", "2024-01-22", "2024-01-29"]
    d = _data(tmp_path, lambda k, t: dates[k % 5])
    assert main(["build", "--data", str(d), "--holdout", "0.1", "--no-tune", "--no-progress",
                 str(tmp_path / "out")]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "the newest 20% (400 of 2000) of the interactions were held out" in err, err
    assert "not the 10% asked" in err


def test_a_small_share_asked_is_compared_with_the_share_held_out_in_proportion(tmp_path, capsys):
    """100 days of dates without hours, 1 % a day: --holdout 0.001 holds out the last day, ten times the
    share asked; a fixed tolerance of one point said nothing of it."""
    d = _data(tmp_path, lambda k, t: T0 - (k % 100) * DAY)
    assert main(["build", "--data", str(d), "--holdout", "0.001", "--no-tune", "--no-progress", "--no-evaluate",
                 str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert "the newest 1% (20 of 2000) of the interactions were held out of this bundle (not evaluated: " \
           "--no-evaluate) (not the 0.1% asked" in capsys.readouterr().err
