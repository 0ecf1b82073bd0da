import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from recserve._core.gather import gather, gather_reference
from recserve._core.tables import TableError, TableReader, TableWriter


@pytest.fixture
def table_file(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5000, 40)).astype(np.float32)
    path = tmp_path / "t.lmdb"
    with TableWriter(path) as w:
        w.write_array("feats", feats, columns=[f"c{i}" for i in range(40)])
        w.write_array("small", np.arange(6, dtype=np.int32).reshape(2, 3))
        w.write_ids("item", [f"item-{i}" for i in range(5000)])
        w.set_meta("schema", {"version": 1})
    return path, feats


def test_roundtrip_and_zero_copy(table_file):
    path, feats = table_file
    with TableReader(path) as r:
        view = r.array("feats", dtype="float32", width=40)
        np.testing.assert_array_equal(view, feats)
        assert not view.flags.owndata and not view.flags.writeable   # a view over the memory map
        assert r.columns("feats")[3] == "c3"
        assert r.array("small").tolist() == [[0, 1, 2], [3, 4, 5]]
        assert r.row_of("item", "item-42") == 42 and r.row_of("item", "nope") is None
        assert r.id_of("item", 4999) == "item-4999"
        assert r.ids_of("item", np.array([7, 0, 4999, 7])) == ["item-7", "item-0", "item-4999", "item-7"]
        assert r.ids_of("item", []) == []
        assert r.rows_of("item", ["item-1", "x"]).tolist() == [1, -1]
        assert r.meta("schema") == {"version": 1}
        assert r.n_ids("item") == 5000


def test_missing_or_mismatched_tables(table_file, tmp_path):
    path, _ = table_file
    with TableReader(path) as r:
        with pytest.raises(TableError, match="no array"):
            r.array("nope")
        with pytest.raises(TableError, match="dtype"):
            r.array("feats", dtype="int32")
        with pytest.raises(TableError, match="width"):
            r.array("feats", width=3)
        with pytest.raises(TableError, match="no id map"):
            r.row_of("user", "u")
        with pytest.raises(TableError, match="out of range"):
            r.id_of("item", 5000)
        with pytest.raises(TableError, match="out of range"):
            r.ids_of("item", [3, -1])
    with pytest.raises(TableError, match="does not exist"):
        TableReader(tmp_path / "missing.lmdb")
    junk = tmp_path / "junk.lmdb"
    junk.write_bytes(b"not an lmdb file" * 100)
    with pytest.raises(TableError):
        TableReader(junk)


def test_reader_closed(table_file):
    path, _ = table_file
    r = TableReader(path)
    r.close()
    with pytest.raises(TableError, match="closed"):
        r.array("feats")


def test_writer_rejects_bad_data(tmp_path):
    with TableWriter(tmp_path / "a.lmdb") as w:
        with pytest.raises(TableError, match="NaN"):
            w.write_array("x", np.array([[1.0, np.nan]], np.float32))
        w.write_array("missing", np.array([[1.0, np.nan]], np.float32), allow_nan=True)     # NaN: missing
        with pytest.raises(TableError, match="'inf' contains inf"):
            w.write_array("inf", np.array([[1.0, -np.inf]], np.float32), allow_nan=True)
        with pytest.raises(TableError, match="duplicate"):
            w.write_ids("item", ["a", "a"])
        with pytest.raises(TableError, match="column names"):
            w.write_array("y", np.zeros((2, 2), np.float32), columns=["a"])
    with pytest.raises(TableError, match="exists"):
        TableWriter(tmp_path / "a.lmdb")


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.integers(0, 99), max_size=200), width=st.integers(0, 9))
def test_gather_matches_reference(rows, width):
    table = np.random.default_rng(width).normal(size=(100, width)).astype(np.float32)
    np.testing.assert_array_equal(gather(table, rows), gather_reference(table, rows).reshape(len(rows), width))


def test_gather_from_memory_map_and_bounds(table_file):
    path, feats = table_file
    with TableReader(path) as r:
        view = r.array("feats")
        rows = np.random.default_rng(1).integers(0, 5000, 500)
        np.testing.assert_array_equal(gather(view, rows), feats[rows])
        with pytest.raises(ValueError, match="out of range"):
            gather(view, [5000])
        with pytest.raises(ValueError, match="out of range"):
            gather(view, [-1])


def test_gather_wide_rows_never_wrap():
    table = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        gather(table, np.array([2**32], np.int64))


def test_readers_of_one_file_share_its_environment(table_file, tmp_path):
    """LMDB opens a file once per process: readers of the same file (a hard link, a symlink, the same path)
    share its environment, each reads until it closes, and the last one closes the environment."""
    import os

    import lmdb

    path, feats = table_file
    os.link(path, tmp_path / "hard.lmdb")
    (tmp_path / "sym.lmdb").symlink_to(path)
    readers = [TableReader(p) for p in (path, tmp_path / "hard.lmdb", tmp_path / "sym.lmdb", path)]
    for r in readers[:-1]:
        r.close()
        with pytest.raises(TableError, match="closed"):
            r.array("feats")
    np.testing.assert_array_equal(readers[-1].array("feats"), feats)    # the others' closes left it open
    assert readers[-1].row_of("item", "item-9") == 9
    readers[-1].close()
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)    # closed: this process may open it
    env.close()
    with TableReader(tmp_path / "hard.lmdb") as r:
        np.testing.assert_array_equal(r.array("feats"), feats)
