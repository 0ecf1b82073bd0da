"""The interaction logs' optional ``device`` column: read as the API's Device codes, refused naming the
column when a value is no device, written back, and learnt by the ranker so that the request's device
changes the served answer."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from recserve.pipeline.messages import DEVICES, Filters
from trainer.datawrite import write_dataset
from trainer.io import DataError, load_dataset
from trainer.synth import synth


@pytest.fixture(scope="module")
def small():
    return synth(60, 40, seed=3)[0]


def _with_devices(ds, tmp_path, values, fmt="csv"):
    """``ds`` written, its interactions given a device column of ``values`` (cycled over the rows)."""
    d = tmp_path / "d"
    write_dataset(ds, d, fmt)
    path = d / f"interactions.{fmt}"
    t = pq.read_table(path) if fmt == "parquet" else pacsv.read_csv(path)
    col = pa.array([values[k % len(values)] for k in range(t.num_rows)])
    t = t.append_column("device", col)
    if fmt == "parquet":
        pq.write_table(t, path)
    else:
        pacsv.write_csv(t, path)
    return d, t


def _expected(t, values):
    """The codes of the file's rows, in the loaded data set's order ((user, ts, event, item, value))."""
    code = {**{n: c for c, n in enumerate(DEVICES)}, "": 0}
    return [code[str(v).strip().lower()] if not isinstance(v, int) else v for v in t.column("device").to_pylist()]


@pytest.mark.parametrize("values", [["mobile", "TV", " tablet ", "", "desktop", "Unspecified"], [0, 1, 2, 3, 4]])
def test_names_and_codes_are_read(small, tmp_path, values):
    d, t = _with_devices(small, tmp_path, values)
    ds = load_dataset(d)
    assert "extra_interaction_columns_not_used" not in ds.report
    # each (user id, item id, timestamp) of the file keeps its device
    want = {}
    for u, i, ts, dev in zip(t.column("user_id").to_pylist(), t.column("item_id").to_pylist(),
                             t.column("timestamp").to_pylist(), _expected(t, values)):
        want.setdefault((str(u), str(i), float(ts)), set()).add(dev)
    got = {}
    for u, i, ts, dev in zip(ds.user_ids[ds.user], ds.item_ids[ds.item], ds.ts.tolist(), ds.device.tolist()):
        got.setdefault((u, i, ts), set()).add(dev)
    assert got == want and ds.device.dtype == np.int8 and ds.device.any()


def test_parquet_codes_and_the_round_trip(small, tmp_path):
    d, _ = _with_devices(small, tmp_path, [2, 4, None], fmt="parquet")
    ds = load_dataset(d)
    assert set(ds.device.tolist()) == {0, 2, 4}
    write_dataset(ds, tmp_path / "again")
    back = load_dataset(tmp_path / "again")
    np.testing.assert_array_equal(back.device, ds.device)
    assert (tmp_path / "again" / "interactions.csv").read_text().splitlines()[0].endswith(',"device"')
    # a data set without devices writes no column, and reads back all unspecified
    write_dataset(small, tmp_path / "none")
    assert "device" not in (tmp_path / "none" / "interactions.csv").read_text().splitlines()[0]
    assert not load_dataset(tmp_path / "none").device.any()


EXPECTED = "(expected desktop, mobile, tablet, tv, unspecified or empty, or a code 0..4)"


@pytest.mark.parametrize("fmt, values, says", [
    ("csv", ["mobile", "phone"], f"has 1 unknown device name(s), e.g. 'phone' {EXPECTED}"),
    ("csv", [1, 7], f"has 1 unknown device name(s), e.g. '7' {EXPECTED}"),
    ("csv", [1.5, 2], f"has 1 unknown device name(s), e.g. '1.5' {EXPECTED}"),
    ("csv", ["2", "NA"], f"has 1 unknown device name(s), e.g. 'na' {EXPECTED}"),     # not a null
    ("parquet", [1, 7], "has 637 value(s) that are no device code 0..4, e.g. 7"),
    ("parquet", [1.5, 2.0], "has 637 value(s) that are no device code 0..4, e.g. 1.5"),
    ("parquet", [1, 2 ** 62 + 1], "has 637 value(s) that are no device code 0..4, e.g. 4.61169e+18"),
])
def test_a_value_that_is_no_device_is_refused_naming_the_column(small, tmp_path, fmt, values, says):
    d, _ = _with_devices(small, tmp_path, values, fmt)
    assert len(small) == 1274
    with pytest.raises(DataError) as e:
        load_dataset(d)
    assert str(e.value) == f"interactions.{fmt}: column device {says}"


def test_dropping_unknown_items_keeps_each_device_with_its_interaction(small, tmp_path):
    d, t = _with_devices(small, tmp_path, ["tv", "mobile", "desktop"])
    rows = t.to_pylist()
    rows[0]["item_id"] = "no-such-item"
    pacsv.write_csv(pa.Table.from_pylist(rows), d / "interactions.csv")
    ds = load_dataset(d, drop_unknown=True)
    assert ds.report["dropped_unknown_items"] == 1 and len(ds) == len(rows) - 1
    code = {"tv": 4, "mobile": 2, "desktop": 1}
    want = sorted((str(r["user_id"]), str(r["item_id"]), float(r["timestamp"]), code[r["device"]]) for r in rows[1:])
    got = sorted(zip(ds.user_ids[ds.user], ds.item_ids[ds.item], ds.ts.tolist(), ds.device.tolist()))
    assert got == want


def test_the_ranker_learns_the_device_and_the_server_answers_by_it(tmp_path):
    """Users alternate between the TV, where they only take half of the categories, and the phone, where they
    take the other half, a month each: the ranker trained on those logs puts more of the TV half in the answer
    when the request says TV; a bundle of the same logs without devices answers both devices alike."""
    from recserve.bundle import Bundle
    from recserve.pipeline.recommender import Recommender, RecRequest
    from trainer.build import build
    from trainer.timing import Timer

    ds = synth(1500, 300, seed=0)[0]
    cats = np.unique(ds.item_category)
    tv_cats = set(cats[::2])
    on_tv_item = np.array([c in tv_cats for c in ds.item_category])
    tv = (ds.user + np.floor(ds.ts / (30 * 86400)).astype(np.int64)) % 2 == 0
    keep = tv == on_tv_item[ds.item]
    logs = ds.subset(keep)
    logs.device = np.where(tv[keep], 4, 2).astype(np.int8)
    plain = ds.subset(keep)
    assert not plain.device.any()
    opts = {"seed": 0, "factors": 16, "ranker_users": 1500, "ranker_rounds": 60}
    shares = {}
    for name, data in (("devices", logs), ("plain", plain)):
        build(data, tmp_path / name, opts, timer=Timer(verbose=False))
        with Bundle.open(tmp_path / name) as b:
            rec = Recommender(b, None)
            now = float(b.tables.meta("now"))
            tv_rows = set(np.flatnonzero(on_tv_item).tolist())
            for dev in (2, 4):
                s = []
                for row in range(0, b.n_users, 5):
                    r = rec.recommend(RecRequest(user_id=b.tables.id_of("user", row), k=20, timestamp=now,
                                                 device=dev, filters=Filters(in_stock_only=False)))
                    items = [int(np.flatnonzero(data.item_ids == i.item_id)[0]) for i in r.items]
                    s.append(np.mean([i in tv_rows for i in items]))
                shares[name, dev] = float(np.mean(s))
    assert shares["plain", 2] == shares["plain", 4], shares
    assert shares["devices", 4] > shares["devices", 2] + 0.05, shares


def test_synth_gives_devices_only_when_asked(tmp_path):
    """``device_effect`` 0 draws no device; above it every interaction has one of the four, each device's
    sessions lean to their own items, and the column is written and read back."""
    plain = synth(400, 150, seed=5)[0]
    assert not plain.device.any()
    ds = synth(400, 150, seed=5, device_effect=1.0)[0]
    assert set(np.unique(ds.device).tolist()) == {1, 2, 3, 4}
    # the devices lean to items of their own: each device's item distribution differs from the others'
    shares = np.array([np.bincount(ds.item[ds.device == d], minlength=ds.n_items) / (ds.device == d).sum()
                       for d in (1, 2)])
    assert 0.5 * np.abs(shares[0] - shares[1]).sum() > 0.2
    write_dataset(ds, tmp_path / "d")
    back = load_dataset(tmp_path / "d")

    def rows(d):
        return sorted(zip(d.user_ids[d.user], d.item_ids[d.item], d.ts.tolist(), d.event.tolist(), d.device.tolist()))
    assert rows(back) == rows(ds)
    with pytest.raises(ValueError, match="device_effect must be >= 0"):
        synth(10, 10, device_effect=-1.0)


def test_synth_cli_devices_flag(tmp_path, capsys):
    from trainer.cli import main

    assert main(["synth", str(tmp_path / "d"), "--users", "50", "--items", "30", "--devices", "0.5"]) == 0
    assert load_dataset(tmp_path / "d").device.all()
    with pytest.raises(SystemExit) as e:
        main(["synth", str(tmp_path / "e"), "--devices", "-1"])
    assert e.value.code == 2 and "--devices: must be at least 0, not -1" in capsys.readouterr().err
