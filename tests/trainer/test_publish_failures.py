"""A build that cannot write all of its version publishes nothing: a short index file (hnswlib reports no
write error), a CURRENT that cannot be replaced."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from recserve.bundle import index_header, index_whole
from trainer.cli import main
from trainer.writer import save_index

BUILD = ["--factors", "8", "--no-tune", "--no-evaluate", "--label-windows", "1", "--no-progress"]


def _index(n: int = 400, d: int = 16):
    emb = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    index = hnswlib.Index(space="cosine", dim=d)
    index.init_index(max_elements=n, M=8, ef_construction=40, random_seed=1)
    index.add_items(emb, num_threads=1)
    return index


def test_an_index_written_to_a_full_disk_is_an_error():
    """hnswlib's save_index returns normally on a full disk (``/dev/full`` refuses every write): the build
    hashed the short file and published it, and only the evaluation's load (or a server) refused it."""
    with pytest.raises(OSError, match="written short: .*is the disk full") as exc:
        save_index(_index(), Path("/dev/full"))
    assert exc.value.errno == errno.EIO and exc.value.filename == "/dev/full"


def test_an_index_cut_in_its_last_links_is_not_whole(tmp_path):
    p = tmp_path / "index.hnsw"
    save_index(_index(), p)
    assert index_whole(p)
    size = p.stat().st_size
    for cut in (1, 4, 100):
        os.truncate(p, size - cut)
        index_header(p)                         # the header's check passes: the cut is past the level-0 data
        assert not index_whole(p)
    with open(p, "ab") as f:                    # longer than its elements' links is not whole either
        f.write(b"\0" * (100 - 4 + 8))
    assert not index_whole(p)


def test_a_current_that_is_a_directory_is_refused_before_any_work(small_data, tmp_path, capsys):
    """The build trained in full, then failed to replace CURRENT and left a complete version nothing named,
    another at every try."""
    out = tmp_path / "out"
    (out / "CURRENT").mkdir(parents=True)
    assert main(["build", "--data", str(small_data), str(out), *BUILD]) == 2
    assert capsys.readouterr().err.strip() == (f"recserve-train: error: {out}: its CURRENT is a directory (CURRENT "
                                               "is a file naming the served version)")
    assert sorted(p.name for p in out.iterdir()) == ["CURRENT"]


def test_a_current_that_cannot_be_written_leaves_no_unnamed_version(small_data, tmp_path, monkeypatch, capsys):
    """A full disk as CURRENT was replaced: "No space left on device", and a complete version that CURRENT
    did not name was left, with an empty ``.CURRENT.<pid>.tmp``."""
    from trainer import writer

    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), *BUILD]) == 0
    before = (out / "CURRENT").read_text()
    capsys.readouterr()

    def full(root, version):
        (root / f".CURRENT.{os.getpid()}.tmp").write_text("")
        raise OSError(errno.ENOSPC, "No space left on device", str(root / f".CURRENT.{os.getpid()}.tmp"))

    monkeypatch.setattr(writer, "set_current", full)
    assert main(["build", "--data", str(small_data), str(out), *BUILD]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (out / "CURRENT").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == sorted(["CURRENT", before.strip()])


def test_an_interrupted_build_does_not_claim_another_builds_version(small_data, tmp_path, monkeypatch, capsys):
    """Another build published while this one ran, then this one was interrupted: it said "CURRENT names
    the new version V already", V being the other build's."""
    from trainer import build as B
    from trainer import writer

    out = tmp_path / "out"

    def other_then_ctrl_c(*args, **kw):
        out.mkdir(exist_ok=True)
        writer.set_current(out, "20261208T000000-other")       # the other build's last step
        raise KeyboardInterrupt

    monkeypatch.setattr(B.writer, "write_bundle", other_then_ctrl_c)
    assert main(["build", "--data", str(small_data), str(out), *BUILD]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"recserve-train: error: interrupted; nothing was published ({out}/CURRENT names "
        "20261208T000000-other, another build's)")



def test_a_full_disk_names_the_file_and_the_room_left(tmp_path):
    """``write_text`` on a full disk said a bare "No space left on device"."""
    from trainer import writer

    with pytest.raises(OSError, match=r"^\[Errno 28\] No space left on device \([0-9.]+ MiB free on its disk\): "):
        with writer.writing(tmp_path / "x"):
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("make, says", [
    (lambda cur: cur.mkdir(), "{cur} is a directory, not a file naming a version"),
    (lambda cur: cur.symlink_to(cur.parent / "elsewhere"), "{cur} is a symbolic link to nothing ({dst})"),
])
def test_verify_says_what_a_current_that_is_no_file_is(tmp_path, capsys, make, says):
    """It said "... is neither a bundle (manifest.json) nor a root with CURRENT" of a root with a CURRENT."""
    cur = tmp_path / "CURRENT"
    make(cur)
    assert main(["verify", str(tmp_path)]) == 3
    assert capsys.readouterr().err.strip() == "recserve-train: error: " + says.format(
        cur=cur, dst=tmp_path / "elsewhere")


def test_a_current_that_cannot_be_read_back_keeps_the_version(small_data, tmp_path, monkeypatch, capsys):
    """CURRENT replaced, then a failing disk (its fsync, the read back): the version it may name is kept; a
    version nothing names is harmless, a CURRENT naming nothing is not."""
    from trainer import writer

    out = tmp_path / "out"

    def failing(root, version):
        (root / "CURRENT").write_bytes(b"\xff" + version.encode())       # cannot be read back as a name
        raise OSError(errno.EIO, "Input/output error", str(root))

    monkeypatch.setattr(writer, "set_current", failing)
    assert main(["build", "--data", str(small_data), str(out), *BUILD]) == 1
    versions = [p.name for p in out.iterdir() if p.is_dir()]
    assert len(versions) == 1 and (out / "CURRENT").read_bytes() == b"\xff" + versions[0].encode()


def test_a_failing_fsync_names_the_file(small_data, tmp_path, monkeypatch, capsys):
    """A failing disk shows at the fsync: the build said a bare "Input/output error"."""
    from trainer import writer

    real = writer.fsync_path

    def eio(p):
        if p.name == "index.hnsw":
            raise OSError(errno.EIO, "Input/output error")
        real(p)

    monkeypatch.setattr(writer, "fsync_path", eio)
    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), *BUILD]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "/index.hnsw: Input/output error (" in err and err.endswith("MiB free on its disk)"), err


def test_a_full_lmdb_map_is_not_called_a_disk_error(tmp_path):
    import lmdb

    from trainer import writer

    with pytest.raises(OSError, match=r"MDB_MAP_FULL \(the tables outgrow the writer's 16 GiB map\): "):
        with writer.writing(tmp_path / "tables.lmdb"):
            raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")


def test_a_current_made_a_directory_meanwhile_names_nothing(small_data, tmp_path, monkeypatch):
    """A CURRENT that is a directory (or a link loop) names no version: the renamed one is taken away, as
    for any CURRENT naming another (it was kept, as if CURRENT could not be read)."""
    from trainer import writer

    out = tmp_path / "out"

    def racing(root, version):
        (root / "CURRENT").mkdir()
        raise IsADirectoryError(21, "Is a directory", str(root / "CURRENT"))

    monkeypatch.setattr(writer, "set_current", racing)
    assert main(["build", "--data", str(small_data), str(out), *BUILD]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["CURRENT"]
