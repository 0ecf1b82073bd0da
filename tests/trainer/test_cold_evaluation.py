"""The build's evaluation of the users new after its cut (trainer/cold.py): who they are, what they were
answered, and where the figures are recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.cold import COLD_METHODS, new_users


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from trainer.build import build, evaluate_bundle, record_evaluation
    from trainer.synth import synth
    from trainer.timing import Timer

    ds, _ = synth(1200, 300, seed=3, country_effect=1.0)
    root = tmp_path_factory.mktemp("cold") / "b"
    path = build(ds, root, {"seed": 0, "factors": 8, "ranker_rounds": 10, "tune": False},
                 timer=Timer(verbose=False))
    res = evaluate_bundle(path, ds)
    record_evaluation(path, res)
    return ds, path, res


def test_new_users_are_those_with_nothing_before_the_cut():
    from trainer.synth import synth

    ds, _ = synth(400, 120, seed=1)
    cut = float(np.quantile(ds.ts, 0.8))
    row = {str(i): k for k, i in enumerate(ds.item_ids) if k % 7}        # a bundle missing some items
    got = new_users(ds, cut, row.get)
    want = {}
    for u, i, t, d in zip(ds.user, ds.item, ds.ts, ds.device):
        if (ds.user == u)[ds.ts < cut].any():
            continue
        uid = str(ds.user_ids[u])
        first, items = want.get(uid, ((np.inf, 0), set()))
        if str(ds.item_ids[i]) in row:
            items.add(row[str(ds.item_ids[i])])
        want[uid] = (min(first, (float(t), int(d))), items)
    assert got == {u: v for u, v in want.items() if v[1]} and got


def test_the_evaluation_records_the_new_users_cold_answers(built):
    ds, path, res = built
    cold = res["cold_users"]
    cut = res["cut"]
    first = np.full(ds.n_users, np.inf)
    np.minimum.at(first, ds.user, ds.ts)
    assert cold["new_users"] == cold["users"] == int(((first >= cut) & np.isfinite(first)).sum()) > 0
    assert cold["cold_start_answers"] == cold["users"] and cold["users_with_country_list"] > 0
    assert list(cold["methods"]) == list(COLD_METHODS)
    for v in cold["methods"].values():
        assert v["mean_len"] == 50 and 0.0 <= v["recall@10"] <= v["recall@50"] <= 1.0
    # the country lists of data with favourites per country beat the global head for these users
    served, trend = (cold["methods"][m] for m in COLD_METHODS)
    assert served["ndcg@10"] > trend["ndcg@10"] and served["recall@50"] > trend["recall@50"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["evaluation"]["cold_users"] == json.loads(json.dumps(cold))
    assert "<h2>New users</h2>" in (path / "report.html").read_text()


def test_the_table_prints_them(built):
    from trainer.evaluate import format_table

    _, _, res = built
    text = format_table(res)
    assert "new users (no interaction before the cut)" in text
    assert all(any(line.startswith(m) for line in text.splitlines()) for m in COLD_METHODS)
    res = {**res, "cold_users": None}
    assert "new users" not in format_table(res)


def test_newer_logs_count_only_users_the_bundle_has_no_history_of(built):
    """Logs from the cut on hold nothing of anyone's past: a user the bundle holds a history of is still no
    new user there, and the new users are exactly those of the build's own evaluation."""
    from recserve.bundle import Bundle
    from trainer.build import artifacts_from_bundle
    from trainer.cold import evaluate_cold

    ds, path, res = built
    newer = ds.subset(ds.ts >= res["cut"])
    with Bundle.open(path) as b:
        got = evaluate_cold(b, newer, artifacts_from_bundle(b))
    assert got["new_users"] == res["cold_users"]["new_users"] == got["cold_start_answers"]
    assert got["methods"] == res["cold_users"]["methods"]


def test_users_the_bundle_does_not_know_bring_their_country_from_the_logs(built):
    """New users under ids the bundle has never seen (next week's sign-ups): each asks with her country
    from the logs' users file, as a backend would, and gets her country's list where the bundle has one."""
    from recserve.bundle import Bundle
    from trainer.build import artifacts_from_bundle
    from trainer.cold import evaluate_cold

    ds, path, res = built
    renamed = ds.subset(np.ones(len(ds), bool))
    renamed.user_ids = np.array([f"next-{u}" for u in ds.user_ids], object)
    with Bundle.open(path) as b:
        got = evaluate_cold(b, renamed, artifacts_from_bundle(b))
    cold = res["cold_users"]
    assert got["users_with_country_list"] == cold["users_with_country_list"] > 0
    assert got["methods"][COLD_METHODS[0]]["recall@50"] == pytest.approx(cold["methods"][COLD_METHODS[0]]["recall@50"])


def test_logs_of_new_users_only_are_evaluated_by_their_rows(built, tmp_path, capsys):
    """Next week's sign-ups alone: no user with a history, so no method row, and the new users' rows are the
    evaluation (the command used to stop for want of a user with a history)."""
    from trainer.cli import main
    from trainer.evaluate import format_table
    from trainer.datawrite import write_dataset
    from trainer.report import render

    ds, path, res = built
    first = np.full(ds.n_users, np.inf)
    np.minimum.at(first, ds.user, ds.ts)
    signups = ds.subset(first[ds.user] >= res["cut"])
    assert len(signups) and not (first[signups.user] < res["cut"]).any()
    write_dataset(signups, tmp_path / "signups")
    capsys.readouterr()
    assert main(["evaluate", str(path), "--data", str(tmp_path / "signups")]) == 0
    out = capsys.readouterr().out
    assert "evaluated users: 0 (no held-out user has a training history" in out
    assert "merged+ranker" not in out and all(m in out for m in COLD_METHODS)
    from trainer.build import evaluate_bundle

    got = evaluate_bundle(path, signups)
    assert got["users"] == 0 and got["methods"] == {}
    assert got["cold_users"]["new_users"] == res["cold_users"]["new_users"]
    assert got["cold_users"]["methods"] == res["cold_users"]["methods"]
    assert format_table(got) in out
    page = render(json.loads((path / "manifest.json").read_text()), got)
    assert "<h2>New users</h2>" in page and "the new users' table below is the evaluation" in page


def test_logs_with_nothing_to_evaluate_say_so(built, tmp_path, capsys):
    """Only users with a history, on items they had: no user to rank for and no new user: one line, exit 2."""
    from trainer.cli import main
    from trainer.datawrite import write_dataset

    ds, path, res = built
    again = ds.subset(ds.ts < res["cut"])
    again.ts = again.ts - again.ts.min() + res["cut"] + 1.0          # the same pairs, dated after the cut
    write_dataset(again, tmp_path / "again")
    capsys.readouterr()
    assert main(["evaluate", str(path), "--data", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to evaluate: no held-out user has a training history and a new item, " \
                            "and none is new after the bundle's cut" in err[0]
