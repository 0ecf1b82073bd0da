"""Extra numeric columns of the item and user tables become ranker features, from file to served bundle."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from recserve.bundle import Bundle
from trainer.build import build
from trainer.datawrite import write_dataset
from trainer.io import EXTRA_MAX, load_dataset
from trainer.synth import synth
from trainer.timing import Timer


def _with_extras(d, rng):
    items = pacsv.read_csv(d / "items.csv")
    n = items.num_rows
    quality = rng.random(n)
    quality[::7] = np.nan                                       # empty cells: missing
    items = items.append_column("quality", pa.array(quality, mask=np.isnan(quality)))
    items = items.append_column("colour", pa.array(rng.choice(["red", "blue"], n)))   # text: not used
    pacsv.write_csv(items, d / "items.csv")
    users = pacsv.read_csv(d / "users.csv")
    age = rng.integers(18, 80, users.num_rows).astype(np.float64)
    age[::5] = np.nan                                           # empty cells of a user column: missing too
    age[1] = 1e39                                               # beyond float32: missing, not infinite
    users = users.append_column("age", pa.array(age, mask=np.isnan(age)))
    pacsv.write_csv(users, d / "users.csv")
    return items, users


def test_extra_numeric_columns_are_ranker_features(tmp_path):
    data = tmp_path / "data"
    ds0, _ = synth(300, 200, seed=4)
    write_dataset(ds0, data)
    items, users = _with_extras(data, np.random.default_rng(0))
    ds = load_dataset(data)
    assert list(ds.item_extra) == ["quality"] and list(ds.user_extra) == ["age"]
    assert ds.report["extra_item_columns_not_used"] == ["colour"]
    root = build(ds, tmp_path / "out", {"factors": 8, "tune": False, "label_windows": 1, "ranker_users": 300,
                                        "ranker_rounds": 10}, timer=Timer(verbose=False))
    with Bundle.open(root) as b:
        assert "item.x_quality" in b.schema.names and "user.x_age" in b.schema.names
        assert "item.x_colour" not in b.schema.names
        cols = b.tables.columns("item_feats")
        feats = np.asarray(b.item_feats)
        ids = items.column("item_id").to_pylist()
        rows = b.tables.rows_of("item", [str(i) for i in ids])
        want = items.column("quality").to_numpy(zero_copy_only=False).astype(np.float32)
        np.testing.assert_array_equal(feats[rows, cols.index("x_quality")], want)      # NaN where empty
        ucols = b.tables.columns("user_feats")
        urows = b.tables.rows_of("user", [str(u) for u in users.column("user_id").to_pylist()])
        age = users.column("age").to_numpy(zero_copy_only=False).astype(np.float64)
        age[1] = np.nan
        np.testing.assert_array_equal(np.asarray(b.user_feats)[urows, ucols.index("x_age")], age.astype(np.float32))
        # served: the crossed rows carry the extra columns, and an unknown user gets their means
        from recserve.pipeline.recommender import Recommender, RecRequest

        rec = Recommender(b, None)
        for u in (0, 1, 2):         # an empty age, a value beyond float32, a known one
            res = rec.recommend(RecRequest(user_id=str(users.column("user_id")[u]), k=5))
            assert len(res.items) == 5
        assert len(rec.recommend(RecRequest(user_id="someone-new", k=5)).items) == 5
        assert rec.user_mean[ucols.index("x_age")] == pytest.approx(float(np.nanmean(age)), rel=1e-5)
    # written back out, the extra columns survive
    out = tmp_path / "again"
    write_dataset(ds, out, fmt="parquet")
    again = load_dataset(out)
    np.testing.assert_array_equal(again.item_extra["quality"], ds.item_extra["quality"])


def test_at_most_extra_max_columns_are_used(tmp_path):
    data = tmp_path / "data"
    ds0, _ = synth(60, 40, seed=5)
    write_dataset(ds0, data)
    items = pacsv.read_csv(data / "items.csv")
    for j in range(EXTRA_MAX + 2):
        items = items.append_column(f"f{j}", pa.array(np.full(items.num_rows, float(j))))
    pacsv.write_csv(items, data / "items.csv")
    ds = load_dataset(data)
    assert list(ds.item_extra) == [f"f{j}" for j in range(EXTRA_MAX)]
    assert ds.report["extra_item_columns_not_used"] == [f"f{EXTRA_MAX}", f"f{EXTRA_MAX + 1}"]


def test_a_decimal_parquet_column_is_a_feature(tmp_path):
    """A Parquet decimal column (a price-like export type) is numeric: a feature, not 'not used'."""
    import decimal

    import pyarrow.parquet as pq

    data = tmp_path / "data"
    ds0, _ = synth(60, 40, seed=2)
    write_dataset(ds0, data, fmt="parquet")
    items = pq.read_table(data / "items.parquet")
    margin = [decimal.Decimal(f"{i % 7}.25") for i in range(items.num_rows)]
    pq.write_table(items.append_column("margin", pa.array(margin, pa.decimal128(9, 2))), data / "items.parquet")
    ds = load_dataset(data)
    assert list(ds.item_extra) == ["margin"] and "extra_item_columns_not_used" not in ds.report
    by_id = dict(zip(items["item_id"].to_pylist(), margin))           # the rows are in id order
    np.testing.assert_array_equal(ds.item_extra["margin"], [float(by_id[i]) for i in ds.item_ids])


def test_column_names_lightgbm_refuses_still_build(tmp_path):
    """Extra columns named with JSON's special characters, or two names that meet once '.' is spelled
    '__', build and serve: the names LightGBM is given are its own, the schema keeps the files' names."""
    data = tmp_path / "data"
    ds0, _ = synth(200, 120, seed=6)
    write_dataset(ds0, data)
    items = pacsv.read_csv(data / "items.csv")
    rng = np.random.default_rng(1)
    for name in ("size[cm]", 'w:h{"x"}', "a.b", "a__b"):
        items = items.append_column(name, pa.array(rng.random(items.num_rows)))
    pacsv.write_csv(items, data / "items.csv")
    ds = load_dataset(data)
    # a ranker of a known size (cross-validation may keep the first tree alone, which explains with one feature)
    root = build(ds, tmp_path / "out", {"factors": 8, "tune": False, "label_windows": 1, "ranker_users": 200,
                                        "ranker_trees": 10}, timer=Timer(verbose=False))
    with Bundle.open(root) as b:
        assert {"item.x_size[cm]", 'item.x_w:h{"x"}', "item.x_a.b", "item.x_a__b"} <= set(b.schema.names)
        from recserve.pipeline.recommender import Recommender, RecRequest

        # a session item: ranked (a cold request is ordered by trending score, with nothing to explain)
        res = Recommender(b, None).recommend(RecRequest(k=5, explain=True, session_item_ids=[str(ds.item_ids[0])]))
        assert len(res.items) == 5 and all(len(i.contributions) == 5 for i in res.items)


def test_columns_not_used_are_in_the_build_output_and_its_reports(tmp_path, capsys):
    """Text columns (and numeric ones past the first EXTRA_MAX) are named where the build is read: its printed
    output, report.json and report.html, not only the manifest."""
    import json

    from recserve.bundle import resolve
    from trainer.cli import main

    data = tmp_path / "data"
    ds0, _ = synth(300, 200, seed=4)
    write_dataset(ds0, data)
    _with_extras(data, np.random.default_rng(0))
    users = pacsv.read_csv(data / "users.csv")
    pacsv.write_csv(users.append_column("bio", pa.array(["likes <films>"] * users.num_rows)), data / "users.csv")
    assert main(["build", "--data", str(data), str(tmp_path / "out"), "--factors", "8", "--no-tune",
                 "--label-windows", "1", "--no-progress"]) == 0
    line = (f"columns not used as features (text, numeric past the first {EXTRA_MAX} of the items or users "
            "table, any other column of interactions): items: 'colour'; users: 'bio'")
    assert line in capsys.readouterr().err.splitlines()
    version = resolve(tmp_path / "out")
    assert json.loads((version / "report.json").read_text())["columns_not_used"] == {"items": ["colour"],
                                                                                   "users": ["bio"]}
    page = (version / "report.html").read_text()
    assert "<h2>Input columns not used</h2>" in page and "items: &#x27;colour&#x27;; users: &#x27;bio&#x27;" in page
    # data without such columns: nothing printed, an empty list in report.json, no section in report.html
    write_dataset(ds0, tmp_path / "plain")
    capsys.readouterr()
    assert main(["build", "--data", str(tmp_path / "plain"), str(tmp_path / "out2"), "--factors", "8",
                 "--no-tune", "--label-windows", "1", "--no-progress"]) == 0
    assert "not used" not in capsys.readouterr().err
    version = resolve(tmp_path / "out2")
    assert json.loads((version / "report.json").read_text())["columns_not_used"] == {}
    assert "Input columns not used" not in (version / "report.html").read_text()


def test_integers_beyond_two_to_the_53_are_features_not_errors(tmp_path):
    """Hashes, snowflake ids and nanosecond times as extra columns: CSV int64 and Parquet uint64 values
    beyond 2^53 (which Arrow's float cast refuses) are read, rounded to the nearest float64, and a build
    of such data succeeds."""
    import pyarrow.parquet as pq

    from trainer.cli import main

    data = tmp_path / "data"
    ds0, _ = synth(60, 40, seed=7)
    write_dataset(ds0, data)
    users = pacsv.read_csv(data / "users.csv")
    big = [-(2**62), 2**63 - 1] + [None] + list(range(users.num_rows - 3))
    pacsv.write_csv(users.append_column("phone_hash", pa.array(big, pa.int64())), data / "users.csv")
    items = pacsv.read_csv(data / "items.csv")
    (data / "items.csv").unlink()
    huge = [2**64 - 1, 2**53 + 1] + list(range(items.num_rows - 2))
    pq.write_table(items.append_column("snowflake", pa.array(huge, pa.uint64())), data / "items.parquet")
    ds = load_dataset(data)
    rows = {u: r for r, u in enumerate(ds.user_ids)}
    uid = users.column("user_id").to_pylist()
    got = ds.user_extra["phone_hash"]
    assert got[rows[str(uid[0])]] == float(-(2**62)) and got[rows[str(uid[1])]] == float(2**63 - 1)
    assert np.isnan(got[rows[str(uid[2])]])
    assert ds.item_extra["snowflake"][:2].tolist() == [float(2**64 - 1), float(2**53)]
    assert main(["build", "--data", str(data), str(tmp_path / "out"), "--factors", "8", "--no-tune",
                 "--no-evaluate", "--threads", "1", "--no-progress"]) == 0


def test_decimal_parquet_prices_and_features_are_the_numbers_a_csv_file_gives(tmp_path):
    """Arrow's decimal -> float64 cast is not correctly rounded (decimal 7.89 gave 7.890000000000001): a
    price filter at 7.89 left out an item the same CSV file's bundle kept. Decimals are read as the
    nearest float64, as CSV text is."""
    import decimal

    import pyarrow.parquet as pq

    data = tmp_path / "data"
    ds0, _ = synth(60, 40, seed=2)
    write_dataset(ds0, data, fmt="parquet")
    items = pq.read_table(data / "items.parquet")
    cents = [decimal.Decimal(f"{i % 30}.{(13 * i) % 100:02d}") for i in range(items.num_rows)]
    items = items.set_column(items.column_names.index("price"), "price", pa.array(cents, pa.decimal128(12, 2)))
    pq.write_table(items.append_column("margin", pa.array(cents, pa.decimal128(12, 2))), data / "items.parquet")
    ds = load_dataset(data)
    want = dict(zip(items["item_id"].to_pylist(), (float(str(c)) for c in cents)))
    np.testing.assert_array_equal(ds.item_price, [want[i] for i in ds.item_ids])
    np.testing.assert_array_equal(ds.item_extra["margin"], [want[i] for i in ds.item_ids])


def test_a_pandas_index_is_not_a_feature(tmp_path):
    """``df[df.price > 0].to_parquet()`` stores the index as ``__index_level_0__`` (named an index in the
    file's pandas metadata), and ``df.to_csv()`` as a column without a name: both became ranker features
    (``item.x___index_level_0__``, a row number the ranker split on)."""
    import json

    import pyarrow.parquet as pq

    data = tmp_path / "data"
    ds0, _ = synth(300, 200, seed=4)
    write_dataset(ds0, data, fmt="parquet")
    t = pq.read_table(data / "items.parquet")
    t = t.append_column("__index_level_0__", pa.array(np.arange(t.num_rows) * 2)).append_column(
        "margin", pa.array(np.linspace(0, 1, t.num_rows)))
    meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": []}
    pq.write_table(t.replace_schema_metadata({b"pandas": json.dumps(meta).encode()}), data / "items.parquet")
    ds = load_dataset(data)
    assert list(ds.item_extra) == ["margin"] and ds.report["extra_item_columns_not_used"] == ["__index_level_0__"]
    csv = tmp_path / "csv"
    write_dataset(ds0, csv, fmt="csv")
    lines = (csv / "items.csv").read_text().splitlines()
    (csv / "items.csv").write_text("\n".join([("," + lines[0])] + [f"{k},{x}" for k, x in enumerate(lines[1:])])
                                   + "\n")
    ds = load_dataset(csv)
    assert list(ds.item_extra) == [] and ds.report["extra_item_columns_not_used"] == [""]


@pytest.mark.parametrize("meta", [b"not json", b"[1, 2]", b'{"index_columns": 3}'])
def test_pandas_metadata_that_is_not_pandas_is_no_index(tmp_path, meta):
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    ds0, _ = synth(300, 200, seed=4)
    write_dataset(ds0, data, fmt="parquet")
    t = pq.read_table(data / "items.parquet")
    t = t.append_column("margin", pa.array(np.linspace(0, 1, t.num_rows)))
    pq.write_table(t.replace_schema_metadata({b"pandas": meta}), data / "items.parquet")
    assert list(load_dataset(data).item_extra) == ["margin"]
