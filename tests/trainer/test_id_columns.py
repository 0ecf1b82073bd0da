"""Ids are text: leading zeros survive CSV, Parquet integers become their decimal form."""
from __future__ import annotations

import decimal
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recserve.bundle import Bundle
from trainer.build import build
from trainer.datawrite import write_dataset
from trainer.io import DataError, load_dataset
from trainer.synth import synth
from trainer.timing import Timer


def _zero_padded(seed: int = 2):
    """A synthetic data set whose ids and category / creator / country codes all look like numbers."""
    ds, _ = synth(300, 200, seed=seed)
    ds.user_ids = np.array([f"{k:04d}" for k in range(ds.n_users)], dtype=object)
    ds.item_ids = np.array([f"{k:03d}" for k in range(ds.n_items)], dtype=object)
    ds.item_category = np.array([f"0{c[3:]}" for c in ds.item_category], dtype=object)
    ds.item_creator = np.array([f"00{c[2:]}" for c in ds.item_creator], dtype=object)
    ds.user_country = np.array(["01"] * ds.n_users, dtype=object)
    return ds


def test_leading_zero_ids_survive_csv_into_the_bundle(tmp_path):
    data = tmp_path / "data"
    write_dataset(_zero_padded(), data, fmt="csv")
    ds = load_dataset(data)
    assert "007" in set(ds.item_ids) and "0042" in set(ds.user_ids)
    assert all(c.startswith("0") for c in ds.item_category) and all(c.startswith("00") for c in ds.item_creator)
    assert set(ds.user_country) == {"01"}
    root = build(ds, tmp_path / "out", {"factors": 8, "tune": False, "label_windows": 1, "ranker_users": 300,
                                        "ranker_rounds": 10}, timer=Timer(verbose=False))
    with Bundle.open(root) as b:
        assert b.tables.row_of("item", "007") is not None
        assert b.tables.row_of("user", "0042") is not None
        assert b.tables.row_of("item", "7") is None
        assert b.tables.id_of("category", 0).startswith("0")
        assert b.tables.id_of("creator", b.tables.n_ids("creator") - 1).startswith("00")


def test_parquet_integer_ids_are_decimal_strings(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"item_id": pa.array([7, 42], pa.int64()), "category": pa.array([1, 2], pa.int32()),
                             "creator": pa.array([5, None], pa.int64()), "price": [1.0, 2.0]}), d / "items.parquet")
    pq.write_table(pa.table({"user_id": pa.array([3.0, 3.0]), "item_id": pa.array([7, 42], pa.uint16()),
                             "timestamp": [1_700_000_000, 1_700_000_100], "event": ["view", "click"]}),
                   d / "interactions.parquet")
    ds = load_dataset(d)
    assert ds.item_ids.tolist() == ["42", "7"] and ds.item_category.tolist() == ["2", "1"]    # in id order
    assert ds.item_creator.tolist() == ["", "5"]
    assert ds.user_ids.tolist() == ["3"]                       # 3.0 is the integer id 3, not "3.0"
    assert ds.item_ids[ds.item].tolist() == ["7", "42"]         # uint16 and int64 columns join


def test_parquet_decimal_ids_are_their_integer_or_refused(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    dec = pa.array([decimal.Decimal("14.0"), decimal.Decimal("7")], pa.decimal128(10, 1))
    pq.write_table(pa.table({"item_id": dec, "category": ["a", "b"], "price": [1.0, 2.0]}), d / "items.parquet")
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": pa.array([14, 7], pa.int32()),
                             "timestamp": [1_700_000_000] * 2, "event": ["view", "click"]}),
                   d / "interactions.parquet")
    ds = load_dataset(d)
    assert ds.item_ids.tolist() == ["14", "7"] and ds.item_ids[ds.item].tolist() == ["14", "7"]
    pq.write_table(pa.table({"item_id": pa.array([decimal.Decimal("14.5"), decimal.Decimal("7")],
                                                 pa.decimal128(10, 1)), "category": ["a", "b"], "price": [1.0, 2.0]}),
                   d / "items.parquet")
    with pytest.raises(DataError, match="items.parquet: column item_id has non-integer numbers"):
        load_dataset(d)


def test_fractional_or_empty_ids_are_refused(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"item_id": pa.array([7.5, 42.0]), "category": ["a", "b"], "price": [1.0, 2.0]}),
                   d / "items.parquet")
    with pytest.raises(DataError, match="items.parquet: column item_id has non-integer numbers"):
        load_dataset(d)
    pq.write_table(pa.table({"item_id": pa.array([float("inf"), 42.0]), "category": ["a", "b"],
                             "price": [1.0, 2.0]}), d / "items.parquet")
    with pytest.raises(DataError, match="items.parquet: column item_id has non-integer numbers"):
        load_dataset(d)
    c = tmp_path / "csv"
    c.mkdir()
    (c / "items.csv").write_text("item_id,category,price\n007,1,1.5\n")
    (c / "interactions.csv").write_text("user_id,item_id,timestamp,event\n,007,1700000000,view\n")
    with pytest.raises(DataError, match="interactions.csv: column user_id has 1 empty value"):
        load_dataset(c)


def _items_with(d, **columns):
    d.mkdir(exist_ok=True)
    t = {"item_id": pa.array(["a", "b"]), "category": pa.array(["x", "y"]), "price": [1.0, 2.0]}
    t.update(columns)
    pq.write_table(pa.table(t), d / "items.parquet")
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": [1_700_000_000] * 2,
                             "event": ["view", "click"]}), d / "interactions.parquet")
    return d


@pytest.mark.parametrize("col, values, says", [
    ("category", pa.array([["x"], ["y", "z"]]), "column category is not text (type list<"),
    ("item_id", pa.array([{"k": 1}, {"k": 2}]), "column item_id is not text (type struct<k: int64>; "),
    ("creator", pa.array([["x"], None]), "column creator is not text (type list<"),
    ("item_id", pa.array([b"a", b"\xff\xfeb"], pa.binary()), "column item_id is not UTF-8 text: row 2 holds "
                                                             "b'\\xff\\xfeb'"),
    ("category", pa.array([b"\xe9t\xe9", b"y"], pa.large_binary()), "column category is not UTF-8 text: row 1"),
    # were text: '1970-01-01 00:00:01.000', 'true', ... (the build went on, or failed on "unknown item_id")
    ("item_id", pa.array([1000, 2000], pa.timestamp("ms")), "column item_id is not text (type timestamp[ms]; "),
    ("category", pa.array([True, False]), "column category is not text (type bool; "),
    ("creator", pa.array([1, 2], pa.duration("s")), "column creator is not text (type duration[s]; "),
    ("item_id", pa.array([0, 1], pa.date32()), "column item_id is not text (type date32[day]; "),
])
def test_id_and_text_columns_of_other_types_are_refused_naming_file_and_column(tmp_path, capsys, col, values,
                                                                                  says):
    from trainer.cli import main

    d = _items_with(tmp_path / "pq", **{col: values})
    with pytest.raises(DataError, match="^items.parquet: " + re.escape(says)):
        load_dataset(d)
    assert main(["build", "--data", str(d), str(tmp_path / "out")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("[")]
    assert len(err) == 1 and err[0].startswith("recserve-train: error: items.parquet: " + says), err


def test_utf8_binary_ids_are_text(tmp_path):
    ds = load_dataset(_items_with(tmp_path / "pq", item_id=pa.array([b"a", b"b"], pa.binary()),
                                  category=pa.array([b"x", "\u00e9".encode()], pa.large_binary())))
    assert ds.item_ids.tolist() == ["a", "b"] and ds.item_category.tolist() == ["x", "\u00e9"]


def test_a_parquet_file_with_a_column_twice_is_named(tmp_path):
    d = _items_with(tmp_path / "pq")
    t = pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["a", "b"]), pa.array(["x", "y"]),
                              pa.array([1.0, 2.0])], names=["item_id", "item_id", "category", "price"])
    pq.write_table(t, d / "items.parquet")
    with pytest.raises(DataError, match=r"^items.parquet: duplicate column\(s\) 'item_id'$"):
        load_dataset(d)


def test_a_null_category_is_an_empty_one_as_in_a_csv_file(tmp_path):
    """A null category (how pandas or Spark write a missing string) was refused as "1 empty value(s)", while
    an empty one, and a null creator or country, were read as empty."""
    ds = load_dataset(_items_with(tmp_path / "pq", category=pa.array(["x", None])))
    assert ds.item_category.tolist() == ["x", ""]


@pytest.mark.parametrize("column", [
    pa.array(["a", "b"], pa.string_view()),             # Polars writes Utf8View; pyarrow reads string_view
    pa.array([b"a", b"b"], pa.binary_view()),
    pa.array([b"a", b"b"], pa.binary(1)),
    pa.array(["a", "b"], pa.large_string()),
    pa.array(["a", "b"]).dictionary_encode(),
])
def test_every_text_type_is_an_id(tmp_path, column):
    """The check that refuses times and booleans as ids (a list of the types allowed) refused view and
    fixed-size types too."""
    ds = load_dataset(_items_with(tmp_path / "pq", item_id=column))
    assert ds.item_ids.tolist() == ["a", "b"]


def test_half_float_ids_are_integers_or_refused(tmp_path):
    """A float16 column raised a traceback: pc.floor has no half-float kernel."""
    d = _items_with(tmp_path / "pq", item_id=pa.array(np.array([1, 2], np.float16)))
    pq.write_table(pa.table({"user_id": ["u", "u"], "item_id": ["1", "2"], "timestamp": [1_700_000_000] * 2,
                             "event": ["view", "click"]}), d / "interactions.parquet")
    assert load_dataset(d).item_ids.tolist() == ["1", "2"]
    _items_with(d, item_id=pa.array(np.array([1, 2.5], np.float16)))
    with pytest.raises(DataError, match="column item_id has non-integer numbers"):
        load_dataset(d)
