"""The input's row order does not matter: rows tied on (user, timestamp, event) are ordered by item, so a
reordered export of the same interactions builds the same bundle."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from trainer import features
from trainer.build import build
from trainer.datawrite import write_dataset
from trainer.io import load_dataset
from trainer.synth import synth
from trainer.timing import Timer


def _with_ties(src, out, order_seed: int | None):
    """``src``'s data with 150 rows copied onto another item at the same (user, timestamp, event), written to
    ``out``; the rows of every table shuffled with ``order_seed`` (None: as they are)."""
    out.mkdir()
    opts = pacsv.ConvertOptions(column_types={"user_id": pa.string(), "item_id": pa.string()})
    for name in ("items.csv", "users.csv"):
        t = pacsv.read_csv(src / name, convert_options=opts)
        if order_seed is not None:          # the item and user rows shuffled too
            t = t.take(pa.array(np.random.default_rng(order_seed + 1).permutation(t.num_rows)))
        pacsv.write_csv(t, out / name)
    x = pacsv.read_csv(src / "interactions.csv", convert_options=opts)
    rng = np.random.default_rng(0)
    picked = x.take(pa.array(rng.choice(x.num_rows, 150, replace=False)))
    items = pacsv.read_csv(src / "items.csv", convert_options=opts)["item_id"]
    other = items.take(pa.array(rng.integers(0, len(items), 150)))
    x = pa.concat_tables([x, picked.set_column(picked.schema.get_field_index("item_id"), "item_id", other)])
    if order_seed is not None:
        x = x.take(pa.array(np.random.default_rng(order_seed).permutation(x.num_rows)))
    pacsv.write_csv(x, out / "interactions.csv")
    return out


def test_histories_do_not_depend_on_row_order():
    rng = np.random.default_rng(3)
    n = 400
    user, item = rng.integers(0, 5, n), rng.integers(0, 50, n)
    ts, event = rng.integers(0, 4, n).astype(np.float64), rng.integers(0, 2, n).astype(np.int8)
    perm = rng.permutation(n)
    a = features.histories(user, item, ts, event, 5, history_len=30)
    b = features.histories(user[perm], item[perm], ts[perm], event[perm], 5, history_len=30)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_shuffled_rows_build_the_same_bundle(tmp_path):
    base = tmp_path / "base"
    ds, _ = synth(300, 200, seed=1)
    write_dataset(ds, base)
    a = load_dataset(_with_ties(base, tmp_path / "a", None))
    b = load_dataset(_with_ties(base, tmp_path / "b", 7))
    for col in ("user", "item", "ts", "event", "item_ids", "item_category", "item_price", "user_ids"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    assert np.array_equal(a.value, b.value, equal_nan=True)
    manifests = []
    for ds_, root in ((a, tmp_path / "ba"), (b, tmp_path / "bb")):
        build(ds_, root, {"seed": 0, "factors": 8, "ranker_users": 300, "ranker_rounds": 30},
              timer=Timer(verbose=False))
        manifests.append(json.loads((root / (root / "CURRENT").read_text().strip() / "manifest.json").read_text()))
    ma, mb = manifests
    assert ma["files"] == mb["files"]       # tables.lmdb, index.hnsw, ranker.txt: the same bytes
    assert ma["params"] == mb["params"] and ma["training"]["tuning"] == mb["training"]["tuning"]
