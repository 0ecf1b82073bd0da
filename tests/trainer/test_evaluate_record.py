"""``recserve-train evaluate``: on the bundle's own data it reproduces the recorded evaluation (the build's
user sample, which the record states); on newer logs it counts the held-out pairs the bundle cannot score."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recserve.bundle import resolve
from trainer.build import evaluate_bundle
from trainer.cli import main
from trainer.io import load_dataset

FAST = ["--factors", "8", "--no-tune", "--label-windows", "1", "--no-progress"]


def test_evaluate_on_the_own_data_reproduces_the_record(small_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), "--seed", "3", "--eval-users", "30", *FAST]) == 0
    assert "evaluated users: 30 (at most 30, drawn with seed 3; fewer than 200" in capsys.readouterr().out
    manifest = resolve(out) / "manifest.json"
    built = json.loads(manifest.read_text())["evaluation"]
    assert (built["users"], built["seed"], built["eval_users"]) == (30, 3, 30)

    assert main(["evaluate", str(out), "--data", str(small_data), "--no-progress"]) == 0
    assert "evaluated users: 30 (at most 30, drawn with seed 3; fewer than 200" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["evaluation"] == built
    assert "drawn with seed 3" in (resolve(out) / "report.html").read_text()

    # another sample asked for: another record, which says which sample it is
    assert main(["evaluate", str(out), "--data", str(small_data), "--seed", "4", "--no-progress"]) == 0
    other = json.loads(manifest.read_text())["evaluation"]
    assert (other["users"], other["seed"], other["eval_users"]) == (30, 4, 30)
    assert other["methods"] != built["methods"]


def _read(path):
    ids = {c: pa.string() for c in ("user_id", "item_id", "category", "creator", "country")}
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=ids))


def test_newer_logs_count_what_the_bundle_does_not_know(small_data, tmp_path, capsys):
    """Held-out pairs of items the bundle has never heard of (for users with a history) and of users it does
    not know are counted and printed, not silently dropped; the evaluation itself is that of the known pairs."""
    x, items, users = (_read(small_data / f"{n}.csv") for n in ("interactions", "items", "users"))
    cut = float(np.quantile(x["timestamp"].to_numpy(), 0.9))
    old, new, newer = tmp_path / "old", tmp_path / "new", tmp_path / "newer"
    for d, inter in ((old, x.filter(pc.less(x["timestamp"], cut))), (new, x)):
        d.mkdir()
        pacsv.write_csv(inter, d / "interactions.csv")
        pacsv.write_csv(items, d / "items.csv")
        pacsv.write_csv(users, d / "users.csv")

    # next week's logs: 5 new items, bought by 10 known users (20 distinct pairs, one row twice), and 4 new
    # users, who buy 3 known items each and one new item
    newer.mkdir()
    new_items = items.slice(0, 5).set_column(0, "item_id", pa.array([f"new{k}" for k in range(5)]))
    known = x.filter(pc.less(x["timestamp"], cut))["user_id"].unique().to_pylist()[:10]
    t = int(x["timestamp"].to_numpy().max())
    rows = [(u, f"new{(k + j) % 5}") for k, u in enumerate(known) for j in range(2)]
    rows.append(rows[0])
    rows += [(f"newuser{k}", items["item_id"][j].as_py()) for k in range(4) for j in range(3)]
    rows += [(f"newuser{k}", "new0") for k in range(4)]
    # and one user the bundle does not know, with a row before its cut too: in no row of the evaluation
    rows += [("stray", items["item_id"][0].as_py()), ("stray", items["item_id"][1].as_py())]
    times = [t] * (len(rows) - 2) + [int(x["timestamp"].to_numpy().min()), t]
    extra = pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                      "timestamp": times, "event": ["purchase"] * len(rows),
                      "value": pa.nulls(len(rows), pa.float64())}).cast(x.schema)
    pacsv.write_csv(pa.concat_tables([x, extra]), newer / "interactions.csv")
    pacsv.write_csv(pa.concat_tables([items, new_items]), newer / "items.csv")
    pacsv.write_csv(users, newer / "users.csv")

    out = tmp_path / "out"
    assert main(["build", "--data", str(old), str(out), "--holdout", "0", *FAST]) == 0
    base = evaluate_bundle(resolve(out), load_dataset(new))
    res = evaluate_bundle(resolve(out), load_dataset(newer))
    assert (base["truth_unknown_items"], base["truth_unknown_users"]) == (0, 0)
    assert (res["truth_unknown_items"], res["truth_unknown_users"]) == (20, 17)
    assert (base["truth_no_history"], res["truth_no_history"]) == (0, 1)
    assert res["users"] == base["users"] and res["methods"] == base["methods"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(newer), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "held-out (user, item) pairs left out of the truth: 20 (the bundle does not know the item: newer " \
           "than the bundle's data, it cannot recommend it)" in lines
    assert "held-out (user, item) pairs not evaluated by the methods below: 17 (the bundle does not know the " \
           "user: no history to rank from; the new users' rows, when printed, answer such users cold if they are " \
           "new after the cut)" in lines
    assert "held-out (user, item) pairs in no row below: 1 (the bundle holds no history of the user, yet these " \
           "logs hold her interactions before its cut: neither ranked from a history nor new after the cut; a " \
           "server reads such interactions once recorded as events)" in lines
    # the four users the bundle does not know join the new users (those of its users file without a
    # history, already in the logs before): every one answered cold
    cold, was = res["cold_users"], base["cold_users"]
    assert cold["new_users"] == was["new_users"] + 4 == cold["cold_start_answers"]


def test_an_interrupted_evaluate_leaves_the_record_and_its_reports_agreeing(small_data, tmp_path, monkeypatch):
    """The manifest's evaluation was written first and the reports after it: an interrupt between them left
    report.json / report.html with the old figures beside the new record."""
    import os
    import signal

    from trainer import report

    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), "--seed", "3", "--eval-users", "30", *FAST]) == 0
    v = resolve(out)
    before = {n: (v / n).read_bytes() for n in ("manifest.json", "report.json", "report.html")}

    def interrupted(*a, **kw):          # Ctrl-C while the HTML report renders, the slow step
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "render", interrupted)
    assert main(["evaluate", str(out), "--data", str(small_data), "--seed", "4", "--no-progress"]) == 130
    assert {n: (v / n).read_bytes() for n in before} == before          # all three old
    monkeypatch.undo()

    real = os.replace
    sent = []

    def with_a_sigint(src, dst):        # a real SIGINT arriving while the three files are renamed
        if not sent and str(dst).endswith("report.json"):
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        real(src, dst)

    monkeypatch.setattr(os, "replace", with_a_sigint)
    assert main(["evaluate", str(out), "--data", str(small_data), "--seed", "4", "--no-progress"]) == 130
    monkeypatch.undo()
    after = {n: (v / n).read_bytes() for n in before}
    assert sent and [n for n in before if after[n] == before[n]] == []  # all three new, not some
    seed = json.loads(after["manifest.json"])["evaluation"]["seed"]
    assert seed == 4 and json.loads(after["report.json"])["seed"] == 4
    assert not [p for p in v.iterdir() if p.name.endswith(".tmp")]


def test_two_evaluates_of_one_bundle_record_one_after_the_other(small_data, tmp_path):
    """Two ``evaluate`` runs at once shared the temporary files and the manifest's read-modify-write: a run
    failed on the other's rename, and a record was left beside the other run's reports."""
    import threading

    from trainer import writer
    from trainer.build import record_evaluation

    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), "--seed", "3", "--eval-users", "30", *FAST]) == 0
    v = resolve(out)
    result = json.loads((v / "manifest.json").read_text())["evaluation"]
    done = threading.Event()
    with writer.bundle_lock(v):                     # another evaluate, in the middle of its record
        t = threading.Thread(target=lambda: (record_evaluation(v, {**result, "seed": 9}), done.set()))
        t.start()
        assert not done.wait(1.0)                   # waits for it
    t.join(30)
    assert done.is_set()
    assert json.loads((v / "manifest.json").read_text())["evaluation"]["seed"] == 9
    assert json.loads((v / "report.json").read_text())["seed"] == 9
    assert main(["verify", str(out)]) == 0
