"""Bad input data: exit code != 0 and a one-line reason naming the problem."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from trainer.cli import main
from trainer.io import DataError, load_dataset


def _copy(small_data, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(small_data, d)
    return d


def _edit(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def _replace_col(lines, col, value, row=1):
    head = [h.strip("\"") for h in lines[0].split(",")]
    k = head.index(col)
    f = lines[row].split(",")
    f[k] = value
    lines[row] = ",".join(f)
    return lines


CASES = {
    "missing column": ("interactions.csv", lambda l: [",".join(x.split(",")[:2] + x.split(",")[3:]) for x in l],
                       "missing column(s) 'timestamp'"),
    "mistyped price": ("items.csv", lambda l: _replace_col(l, "price", "cheap"), "price"),
    "empty file": ("interactions.csv", lambda l: [], "empty file"),
    "header only": ("items.csv", lambda l: l[:1], "empty file"),
    "bad timestamp": ("interactions.csv", lambda l: _replace_col(l, "timestamp", "yesterday"), "timestamp"),
    "bad created_at": ("items.csv", lambda l: _replace_col(l, "created_at", "2025-13-45"), "unparsable timestamp"),
    "unknown item": ("interactions.csv", lambda l: _replace_col(l, "item_id", "nope"), "unknown item_id"),
    "duplicate item": ("items.csv", lambda l: l + [l[1]], "duplicate item_id"),
    "NaN price": ("items.csv", lambda l: _replace_col(l, "price", "NaN"), "price has 1 NaN"),
    "unknown event": ("interactions.csv", lambda l: _replace_col(l, "event", "like"), "unknown event"),
    "long item id": ("items.csv", lambda l: _replace_col(l, "item_id", "é" * 129), "longer than 256 bytes"),
    "control user id": ("interactions.csv", lambda l: _replace_col(l, "user_id", "a\x01b"), "control characters"),
    "duplicate column": ("items.csv", lambda l: [l[0] + ",price"] + [x + ",1" for x in l[1:]],
                         "duplicate column(s) 'price'"),
    "huge price": ("items.csv", lambda l: _replace_col(l, "price", "1e300"), "above 1e+12 or infinite"),
    "infinite price": ("items.csv", lambda l: _replace_col(l, "price", "inf"), "above 1e+12 or infinite"),
    "blank user id": ("interactions.csv", lambda l: _replace_col(l, "user_id", "  "), "white space only"),
    # a 500,000-character category once ran the build out of memory (a fixed-width copy of every item's)
    "long category": ("items.csv", lambda l: _replace_col(l, "category", "c" * 500_000),
                      "column category has 1 name(s) longer than 256 bytes"),
    "control creator": ("items.csv", lambda l: _replace_col(l, "creator", "a\x7fb"),
                        "column creator has 1 name(s) with control characters"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, small_data, tmp_path, capsys):
    fname, fn, reason = CASES[case]
    d = _copy(small_data, tmp_path)
    if case == "empty file":
        (d / fname).write_text("")
    else:
        _edit(d / fname, fn)
    rc = main(["build", "--data", str(d), str(tmp_path / "out")])
    out = capsys.readouterr().err.strip().splitlines()
    errors = [x for x in out if x.startswith("recserve-train: error: ")]
    assert rc == 2, out
    assert len(errors) == 1 and out[-1] == errors[0], out   # exactly one reason line, last
    err = errors[0]
    assert reason in err, err
    assert fname in err
    assert not (tmp_path / "out" / "CURRENT").exists()


def test_missing_dir_and_bad_bundle(tmp_path, capsys):
    assert main(["build", "--data", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'none'}: does not exist")
    (tmp_path / "f").write_text("")
    assert main(["build", "--data", str(tmp_path / "f"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'f'}: not a directory")
    assert main(["verify", str(tmp_path)]) == 3
    assert "neither a bundle" in capsys.readouterr().err


def test_drop_unknown_counts(small_data, tmp_path):
    d = _copy(small_data, tmp_path)
    _edit(d / "interactions.csv", lambda l: _replace_col(_replace_col(l, "item_id", "zz", 1), "item_id", "zz", 2))
    ds = load_dataset(d, drop_unknown=True)
    assert ds.report["dropped_unknown_items"] == 2
    full = load_dataset(small_data)
    assert len(ds) == len(full) - 2


def test_evaluate_says_what_drop_unknown_dropped(small_data, tmp_path, capsys):
    """``build --drop-unknown`` printed its count; ``evaluate --drop-unknown`` dropped them silently."""
    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), "--factors", "8", "--no-tune", "--no-evaluate",
                 "--label-windows", "1", "--no-progress"]) == 0
    capsys.readouterr()
    d = _copy(small_data, tmp_path)
    _edit(d / "interactions.csv", lambda l: _replace_col(_replace_col(l, "item_id", "zz", 1), "item_id", "zz", 2))
    assert main(["evaluate", str(out), "--data", str(d), "--drop-unknown", "--no-progress"]) == 0
    assert "dropped 2 interaction(s) with unknown items" in capsys.readouterr().err


def test_parquet_equals_csv(small_data, tmp_path):
    import numpy as np
    from trainer.datawrite import write_dataset

    a = load_dataset(small_data)
    write_dataset(a, tmp_path / "pq", fmt="parquet")
    b = load_dataset(tmp_path / "pq")
    for k in ("user", "item", "ts", "event", "item_price", "item_created", "item_in_stock", "user_signup"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    np.testing.assert_array_equal(np.isnan(a.value), np.isnan(b.value))
    assert list(a.item_ids) == list(b.item_ids)


def test_gzipped_csv_reads_as_csv(small_data, tmp_path):
    import gzip

    import numpy as np

    d = _copy(small_data, tmp_path)
    raw = (d / "interactions.csv").read_bytes()
    (d / "interactions.csv").unlink()
    (d / "interactions.csv.gz").write_bytes(gzip.compress(raw))
    a, b = load_dataset(small_data), load_dataset(d)
    np.testing.assert_array_equal(a.ts, b.ts)
    assert a.user_ids.tolist() == b.user_ids.tolist() and "interactions.csv.gz" in b.files


def test_timestamp_formats(tmp_path):
    import numpy as np

    d = tmp_path / "d"
    d.mkdir()
    (d / "items.csv").write_text("item_id,category,price,created_at\na,x,1.5,2025-01-01\nb,y,2,2025-01-01T10:00:00\n")
    (d / "interactions.csv").write_text(
        "user_id,item_id,timestamp,event\n1,a,2025-01-02T00:00:00Z,view\n1,b,2025-01-02T03:00:00+02:00,click\n")
    ds = load_dataset(d)
    base = 1735689600.0   # 2025-01-01T00:00:00Z
    np.testing.assert_array_equal(ds.item_created, [base, base + 36000])
    np.testing.assert_array_equal(ds.ts, [base + 86400, base + 86400 + 3600])
    assert ds.item_creator.tolist() == ["", ""] and ds.item_in_stock.tolist() == [1, 1]
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event\n1,a,1735776000000,view\n")
    assert load_dataset(d).ts.tolist() == [1735776000.0]      # milliseconds are recognised
    # numbers beside dates in one column (read as text): each value parsed as what it is
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event\n"
                                        "1,a,1735776000,view\n1,b,2025-01-02,view\n1,a,1735776000000,view\n")
    assert load_dataset(d).ts.tolist() == [1735776000.0] * 3
    # fractions of a second, zones, and numbers in any unit since 1970, mixed in one column
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event\n"
                                        "1,a,1735776000,view\n"
                                        "1,a,2025-01-02T00:00:00.250Z,view\n"
                                        "1,a,2025-01-02T02:00:00.5+02:00,view\n"
                                        "1,a,2025-01-02 00:00:00.123456789,view\n"
                                        "1,a,1735776000250000,view\n"
                                        "1,a,1735776000250000000,view\n")
    np.testing.assert_allclose(np.sort(load_dataset(d).ts),
                               1735776000.0 + np.sort([0, .25, .5, .123456, .25, .25]), rtol=0, atol=1e-6)
    # Parquet timestamps of any unit and zone, sub-second values included
    import pyarrow as pa
    import pyarrow.parquet as pq

    (d / "interactions.csv").unlink()
    for typ in (pa.timestamp("ms", tz="UTC"), pa.timestamp("ns"), pa.timestamp("us", tz="Europe/Paris")):
        ts = pa.array([1735776000123], pa.timestamp("ms", tz="UTC")).cast(typ)
        pq.write_table(pa.table({"user_id": ["1"], "item_id": ["a"], "timestamp": ts, "event": ["view"]}),
                       d / "interactions.parquet")
        assert load_dataset(d).ts.tolist() == pytest.approx([1735776000.123], abs=1e-6), typ
    (d / "interactions.parquet").unlink()
    # empty optional dates: unknown (an item never "new", a user without a signup date)
    (d / "items.csv").write_text("item_id,category,price,created_at\na,x,1.5,\nb,y,2,2025-01-01\n")
    (d / "users.csv").write_text("user_id,signup_date\n1,\n2,2025-01-01\n")
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event\n1,a,1735776000,view\n")
    ds = load_dataset(d)
    assert ds.item_created.tolist() == [0.0, base]
    (d / "items.csv").write_text("item_id,category,price,created_at\na,x,1.5,\nb,y,2,1735689600\nc,y,2,2025-01-01\n")
    assert load_dataset(d).item_created.tolist() == [0.0, base, base]    # read as text: empty is still empty
    (d / "users.csv").unlink()
    # after the year 9999 (the server's bound too), and text in any case
    (d / "interactions.csv").unlink()
    pq.write_table(pa.table({"user_id": ["1"], "item_id": ["a"], "event": ["view"],
                             "timestamp": pa.array([253402300800], pa.int64()).cast(pa.timestamp("s"))}),
                   d / "interactions.parquet")
    with pytest.raises(DataError, match="1 timestamp\\(s\\) after the year 9999"):
        load_dataset(d)
    (d / "interactions.parquet").unlink()
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event\n1,a,1735776000,view\n1,a,-1e300,view\n")
    with pytest.raises(DataError, match="1 timestamp\\(s\\) before the year 1, e.g. -1e\\+300"):
        load_dataset(d)
    (d / "interactions.csv").unlink()
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event\n1,a,2025-01-02t00:00:00z,view\n")
    assert load_dataset(d).ts.tolist() == [1735776000.0]
    # one bad value among numbers: counted once, and shown as it is in the file
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event\n"
                                        + "1,a,1735776000,view\n" * 5 + "1,b,yesterday,view\n")
    with pytest.raises(DataError, match=r"has 1 unparsable timestamp\(s\), e.g. 'yesterday'$"):
        load_dataset(d)


def test_two_files_for_one_table_and_too_little_training_data(small_data, tmp_path, capsys):
    from trainer.datawrite import write_dataset

    d = _copy(small_data, tmp_path)
    write_dataset(load_dataset(d), tmp_path / "pq", fmt="parquet")
    shutil.copy(tmp_path / "pq" / "items.parquet", d / "items.parquet")
    assert main(["build", "--data", str(d), str(tmp_path / "out")]) == 2
    assert "both items.parquet and items.csv" in capsys.readouterr().err
    assert main(["build", "--data", str(small_data), "--holdout", "0.99", str(tmp_path / "out")]) == 2
    assert "too little training data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_users_with_one_training_interaction_each_leave_no_label_window(small_data, tmp_path, capsys):
    """Session-style logs, every user once: a per-user label split has nothing to fit on; one line, exit 2
    (a bare StopIteration before)."""
    d = _copy(small_data, tmp_path)
    lines = (d / "interactions.csv").read_text().splitlines()
    u = [h.strip('"') for h in lines[0].split(",")].index("user_id")
    seen, keep = set(), [lines[0]]
    for ln in lines[1:]:
        if ln.split(",")[u] not in seen:
            seen.add(ln.split(",")[u])
            keep.append(ln)
    (d / "interactions.csv").write_text("\n".join(keep) + "\n")
    for split in ("user", "user-random"):
        assert main(["build", "--data", str(d), "--label-split", split, "--no-tune", "--no-evaluate",
                     str(tmp_path / "out")]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("[")]    # not progress
        assert len(err) == 1 and err[0].startswith(f"recserve-train: error: no label window for the ranker "
                                                   f"(--label-split {split})"), err


def test_held_out_data_with_nothing_to_evaluate_fails_before_training(small_data, tmp_path, capsys, monkeypatch):
    """Every held-out interaction by a user new to the training data: refused at once (not after the whole
    build), and built with --no-evaluate."""
    import trainer.artifacts

    d = _copy(small_data, tmp_path)
    lines = (d / "interactions.csv").read_text().splitlines()
    from trainer.split import time_cut

    cut = time_cut(np.array([float(ln.split(",")[2]) for ln in lines[1:]]), 0.1)     # build's own split
    out = [lines[0]] + [('"new-' + ln[1:]) if float(ln.split(",")[2]) >= cut else ln for ln in lines[1:]]
    (d / "interactions.csv").write_text("\n".join(out) + "\n")
    fits = []
    real_fit = trainer.artifacts.fit
    monkeypatch.setattr(trainer.artifacts, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    assert main(["build", "--data", str(d), "--holdout", "0.1", "--no-tune", str(tmp_path / "out")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("[")]
    assert err == ["recserve-train: error: nothing to evaluate: no user of the held-out 0.1 has training "
                   "interactions and an item new to her (raise --holdout, or build with --no-evaluate)"], err
    assert not fits, "the refusal came after training"
    assert main(["build", "--data", str(d), "--holdout", "0.1", "--no-tune", "--no-evaluate",
                 str(tmp_path / "out")]) == 0
    assert re.search(r"the newest (9\.\d+|10(\.\d+)?)% \(\d+ of \d+\) of the interactions were held out of "
                     r"this bundle \(not evaluated: --no-evaluate\); build the bundle to serve with --holdout 0$",
                     capsys.readouterr().err, re.M)
    # a share below 1 % is not "0%" (which read as if nothing had been held out)
    assert main(["build", "--data", str(d), "--holdout", "0.004", "--no-tune", "--no-evaluate",
                 str(tmp_path / "out")]) == 0
    assert re.search(r"the newest 0\.[345]\d*% \(\d+ of \d+\) of the interactions were held out",
                     capsys.readouterr().err)


def test_the_evaluation_runs_before_current_names_the_version(small_data, tmp_path, monkeypatch, capsys):
    """The version is evaluated (reports written) while unpublished; a failed evaluation publishes
    nothing and leaves no directory behind."""
    import json

    from trainer import build as B

    out = tmp_path / "out"
    real, seen = B.evaluate_bundle, []

    def spy(staged, *a, **kw):
        seen.append(((out / "CURRENT").exists(), staged.name))
        return real(staged, *a, **kw)

    monkeypatch.setattr(B, "evaluate_bundle", spy)
    args = ["build", "--data", str(small_data), "--factors", "8", "--no-tune", "--label-windows", "1"]
    assert main([*args, str(out)]) == 0
    version = (out / "CURRENT").read_text().strip()
    assert seen == [(False, seen[0][1])] and seen[0][1].startswith(".tmp-"), seen
    m = json.loads((out / version / "manifest.json").read_text())
    assert m["evaluation"]["methods"] and (out / version / "report.json").is_file()
    assert "full+mmr" in capsys.readouterr().out

    def broken(*a, **kw):
        raise ValueError("no held-out user to evaluate")

    monkeypatch.setattr(B, "evaluate_bundle", broken)
    assert main([*args, str(out)]) == 2
    assert (out / "CURRENT").read_text().strip() == version
    assert sorted(p.name for p in out.iterdir()) == sorted(["CURRENT", version])


def test_holdout_zero_trains_on_everything_and_cannot_evaluate(small_data, tmp_path, capsys):
    import json

    from recserve.bundle import resolve

    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), "--holdout", "0", "--factors", "8",
                 "--no-tune", "--label-windows", "1"]) == 0
    m = json.loads((resolve(out) / "manifest.json").read_text())
    assert m["counts"]["held_out"] == 0 and m["counts"]["interactions"] == m["counts"]["interactions_total"]
    assert "held out of this bundle" not in capsys.readouterr().err
    assert main(["evaluate", str(out), "--data", str(small_data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recserve-train: error: nothing to evaluate: no interaction at or "
                                               "after the bundle's cut ") and err[0].endswith(
        "UTC (built with --holdout 0, it trained on all of its data: evaluate it on newer logs)"), err
    with pytest.raises(SystemExit) as exc:
        main(["build", "--data", str(small_data), str(out), "--holdout", "1.5"])
    assert exc.value.code == 2 and "argument --holdout: must be at most 0.99, not 1.5" in capsys.readouterr().err
    assert main(["build", "--data", str(small_data), str(out), "--holdout", "0", "--evaluate"]) == 2
    assert "--evaluate needs held-out data" in capsys.readouterr().err


def test_a_failing_table_write_is_one_line_and_leaves_nothing(small_data, tmp_path, monkeypatch, capsys):
    """An LMDB error while the tables are written (a full disk says ``mdb_txn_commit: Input/output
    error``): exit 1 with one line naming the file and the room left on its disk (it named neither), no
    version and no temporary directory left."""
    import lmdb

    from trainer import writer

    def full(*a, **kw):
        raise lmdb.Error("mdb_txn_commit: Input/output error")

    monkeypatch.setattr(writer, "write_tables", full)
    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), "--factors", "8", "--no-tune",
                 "--label-windows", "1", "--no-evaluate"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(f"recserve-train: error: {re.escape(str(out))}/\\.tmp-[^/]+/tables\\.lmdb: "
                        r"mdb_txn_commit: Input/output error \([0-9.]+ MiB free on its disk\)", err), err
    assert not out.exists() or not any(out.iterdir())


def test_evaluating_on_other_data_leaves_the_bundles_record(small_data, tmp_path, capsys):
    """``evaluate`` with the data a bundle was built from records its numbers in the bundle; with other
    data (next week's logs) it prints them and leaves the bundle's manifest and reports alone."""
    from recserve.bundle import resolve

    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), "--factors", "8", "--no-tune",
                 "--label-windows", "1", "--no-evaluate"]) == 0
    manifest = resolve(out) / "manifest.json"
    other = _copy(small_data, tmp_path)
    _edit(other / "interactions.csv", lambda lines: lines[:-50])
    before = manifest.read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(other)]) == 0
    text = capsys.readouterr()
    assert "full+mmr" in text.out and "is not the data" in text.err
    assert manifest.read_bytes() == before and not (resolve(out) / "report.json").exists()
    assert main(["evaluate", str(out), "--data", str(small_data)]) == 0
    assert manifest.read_bytes() != before and (resolve(out) / "report.json").is_file()


def test_what_counts_as_evaluable_follows_every_consumed_item():
    """A held-out purchase of an item the user viewed long ago, before the newest ``history_len`` events the
    bundle keeps of her, is no new item: the server excludes it as consumed, and so does the evaluation. An
    item she never had is new."""
    from types import SimpleNamespace

    from trainer.build import _evaluable

    n_train = 1100
    user = np.zeros(n_train + 50, np.int32)
    item = np.r_[np.arange(n_train), np.arange(50)].astype(np.int32)       # then her 50 oldest items again
    ts = np.arange(n_train + 50, dtype=np.float64)
    ds = SimpleNamespace(user=user, item=item, ts=ts, event=np.zeros(n_train + 50, np.int8), n_users=1,
                         n_items=n_train + 1)
    train = ts < n_train
    assert not _evaluable(ds, train, ~train)
    ds.item[-1] = n_train
    assert _evaluable(ds, train, ~train)


def test_lightgbm_feature_names_stay_unique():
    from trainer.ranker import _safe

    names = ["item.x_w_h_2", "item.x_w:h", "item.x_w_h", "a.b", "a__b"]
    safe = _safe(names)
    assert len(set(safe)) == len(safe) and all(ch.isalnum() or ch == "_" for s in safe for ch in s), safe


def test_a_bundle_version_is_refused_as_an_output_root(demo_bundle, small_data, tmp_path, capsys):
    """``build --out root/<version>`` would put CURRENT and a nested version inside a published version
    (which then fails to verify); ``synth`` and ``import`` would add their files to it."""
    root = tmp_path / "root"
    shutil.copytree(demo_bundle, root)
    version = root / (root / "CURRENT").read_text().strip()
    before = sorted(p.name for p in version.iterdir())
    assert main(["build", "--data", str(small_data), "--factors", "8", "--no-tune", "--label-windows", "1",
                 "--no-evaluate", str(version)]) == 2
    assert capsys.readouterr().err == f"recserve-train: error: {version} is a bundle version, not a bundle root\n"
    assert main(["synth", "--users", "20", "--items", "10", str(version)]) == 2
    assert capsys.readouterr().err == f"recserve-train: error: {version} is a bundle version, not a data directory\n"
    assert main(["import", "movielens", str(small_data), str(version)]) == 2
    assert "is a bundle version, not a data directory" in capsys.readouterr().err
    assert sorted(p.name for p in version.iterdir()) == before
    assert main(["verify", str(root)]) == 0


@pytest.mark.parametrize("fname, col, bad, says", [
    ("items.csv", None, b"t\xe9tle", "items.csv: the name of column {n} is not UTF-8 text: b't\\xe9tle'"),
    ("items.csv", "item_id", b"i\xff0", "items.csv: column item_id is not UTF-8 text: row 1 holds b'i\\xff0'"),
    ("interactions.csv", "item_id", b"i\xff0",
     "interactions.csv: column item_id is not UTF-8 text: row 1 holds b'i\\xff0'"),
    ("items.csv", "category", b"caf\xe9", "items.csv: column category is not UTF-8 text: row 1 holds b'caf\\xe9'"),
    ("interactions.csv", "event", b"vi\xe9w",
     "interactions.csv: column event is not UTF-8 text: row 1 holds b'vi\\xe9w'"),
    ("items.csv", "created_at", b"2024\xe9-01-01",
     "items.csv: column created_at is not UTF-8 text: row 1 holds b'2024\\xe9-01-01'"),
])
def test_csv_text_that_is_not_utf8_is_named_by_file_column_and_row(small_data, tmp_path, capsys, fname, col, bad,
                                                                    says):
    """Latin-1 bytes in a CSV header or in an id or name column: one line naming the file, the column and the
    row (before: a bare codec error naming no file, or pyarrow's "CSV column #0" with no row)."""
    d = _copy(small_data, tmp_path)
    lines = (d / fname).read_bytes().split(b"\n")
    head = lines[0].split(b",")
    if col is None:                     # a new column whose name is not UTF-8
        lines = [lines[0] + b"," + bad] + [x + b",1" if x else x for x in lines[1:]]
    else:
        k = [h.strip(b'"') for h in head].index(col.encode())
        row = lines[1].split(b",")
        row[k] = bad
        lines[1] = b",".join(row)
    (d / fname).write_bytes(b"\n".join(lines))
    assert main(["build", "--data", str(d), "--no-progress", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "recserve-train: error: " + says.format(n=len(head) + 1), err


@pytest.mark.parametrize("name, make, says", [
    ("users.csv", "dir", "users.csv is a directory, not a data file"),
    ("items.csv", "dir", "items.csv is a directory, not a data file"),
    ("items.csv.gz", "dangling", "items.csv.gz is a symbolic link to nothing, not a data file"),
    ("users.parquet", "dangling", "users.parquet is a symbolic link to nothing, not a data file"),
    ("interactions.pq", "fifo", "interactions.pq is not a regular file, not a data file"),
])
def test_a_table_name_that_is_not_a_file_is_refused(small_data, tmp_path, capsys, name, make, says):
    """Before: a users.csv directory was skipped (a bundle without user metadata, no word said), an items.csv
    directory was "no items.csv" and one beside items.parquet let the Parquet file be read."""
    import os

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    d = _copy(small_data, tmp_path)
    p = d / name
    if name == "items.csv":             # the table as a readable Parquet file beside the directory
        pq.write_table(pacsv.read_csv(p), d / "items.parquet")
    if name.endswith(".csv"):
        p.unlink()
    if make == "dir":
        p.mkdir()
    elif make == "dangling":
        p.symlink_to(d / "nowhere")
    else:
        os.mkfifo(p)
    assert main(["build", "--data", str(d), "--no-progress", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"recserve-train: error: {d}: {says}"


def test_a_build_that_fails_on_its_data_prints_only_the_reason(small_data, tmp_path):
    """Without progress (a pipe, --no-progress) the one line is the whole of stderr: no "[load] ..." first.
    With --progress the step line still shows what is running."""
    from cliutil import run_cli

    d = _copy(small_data, tmp_path)
    _edit(d / "items.csv", lambda l: _replace_col(l, "price", "cheap"))
    for flags in ([], ["--no-progress"]):
        p = run_cli("build", "--data", d, *flags, tmp_path / "out")
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert p.stderr.startswith("recserve-train: error: items.csv: column price is not numeric"), p.stderr
    p = run_cli("build", "--data", d, "--progress", tmp_path / "out")
    assert p.returncode == 2 and p.stderr.splitlines()[0] == "[load] ...", p.stderr
    tiny = tmp_path / "tiny"             # refused after loading, by the build's own checks
    shutil.copytree(small_data, tiny)
    _edit(tiny / "interactions.csv", lambda l: l[:40])
    p = run_cli("build", "--data", tiny, tmp_path / "out")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "too little training data" in p.stderr, p.stderr


def test_a_null_timestamp_is_not_called_empty(small_data, tmp_path, capsys):
    """pyarrow reads NA, NaN and null in a CSV as nulls: the message said "1 empty timestamp(s)" of a cell
    that was not empty."""
    d = _copy(small_data, tmp_path)
    _edit(d / "interactions.csv", lambda l: _replace_col(l, "timestamp", "NaN", row=3))
    assert main(["build", "--data", str(d), "--no-progress", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "recserve-train: error: interactions.csv: column timestamp has 1 missing timestamp(s) (empty, or a null "
        "such as NA, NaN or null), first in row 3")
    # in a column of text (ISO times), where pyarrow keeps NA as text: missing too, not "unparsable"
    d = _copy(small_data, tmp_path / "iso")
    _edit(d / "interactions.csv", lambda l: _replace_col(l, "timestamp", "2025-01-01T00:00:00Z"))
    _edit(d / "interactions.csv", lambda l: _replace_col(l, "timestamp", "NA", row=5))
    assert main(["build", "--data", str(d), "--no-progress", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "recserve-train: error: interactions.csv: column timestamp has 1 missing timestamp(s) (empty, or a null "
        "such as NA, NaN or null), first in row 5")


@pytest.mark.parametrize("fname, fn, says", [
    ("interactions.csv", lambda l: _replace_col(l, "event", "view "),
     "interactions.csv: unknown event(s) 'view ' (expected view/click/cart/purchase/rating)"),
    ("items.csv", lambda l: [l[0] + ",,"] + [x + ",1,2" for x in l[1:]], "items.csv: duplicate column(s) ''"),
])
def test_names_in_messages_are_quoted(small_data, tmp_path, capsys, fname, fn, says):
    """A trailing space or an empty name shows (before: "unknown event(s) view " and "duplicate column(s) ")."""
    d = _copy(small_data, tmp_path)
    _edit(d / fname, fn)
    assert main(["build", "--data", str(d), "--no-progress", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "recserve-train: error: " + says


def test_a_missing_table_names_every_form_it_may_take(small_data, tmp_path):
    d = _copy(small_data, tmp_path)
    (d / "items.csv").rename(d / "items.pq.bak")
    with pytest.raises(DataError, match=re.escape("no items.csv, items.csv.gz, items.parquet or items.pq")):
        load_dataset(d)


def test_interaction_columns_not_used_are_named(small_data, tmp_path, capsys):
    """The items and users tables' unused columns were named in the build output, the interactions' not."""
    import json

    from recserve.bundle import resolve

    d = _copy(small_data, tmp_path)
    _edit(d / "interactions.csv", lambda l: [l[0] + ",session,"] + [x + ",s1,7" for x in l[1:]])
    ds = load_dataset(d)
    assert ds.report["extra_interaction_columns_not_used"] == ["session", ""]
    assert main(["build", "--data", str(d), str(tmp_path / "out"), "--factors", "8", "--no-tune",
                 "--no-evaluate", "--threads", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [x for x in err if x.startswith("columns not used")][0].endswith(": interactions: 'session', ''"), err
    manifest = json.loads((resolve(tmp_path / "out") / "manifest.json").read_text())
    assert manifest["training"]["data_report"]["extra_interaction_columns_not_used"] == ["session", ""]


def test_a_disk_error_is_one_line_without_the_errno(small_data, tmp_path, capsys, monkeypatch):
    """The same form as the server's: the file and the reason (before: Python's "[Errno 28] ..." in front)."""
    import trainer.cli as cli

    def full(args):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "x.tmp"))

    monkeypatch.setattr(cli, "_run", full)
    assert cli.main(["build", "--data", str(small_data), "--no-progress", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"recserve-train: error: {tmp_path}/out/x.tmp: No space left on device\n"
