"""A bundle refused after its tables were opened leaves no LMDB environment open.

A leaked environment is an open file per poll of a server, and worse: py-lmdb refuses to open an
environment twice in one process, so every later poll would fail with "already open in this process"
instead of the bundle's real problem."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from recserve.bundle import Bundle, BundleError, resolve, seal_manifest, sha256_file, verify

POLLS = 5


def _open_fds_to(path: Path) -> int:
    """File descriptors of this process open on ``path`` (an LMDB environment holds its data file)."""
    target = os.path.realpath(path)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                n += 1
        except OSError:                    # closed between listdir and readlink
            continue
    return n


def _rewrite(d: Path, name: str, data: bytes) -> None:
    """Replaces a bundle file and its manifest hash, so that the checksums still verify."""
    (d / name).write_bytes(data)
    m = json.loads((d / "manifest.json").read_text())
    m["files"][name] = sha256_file(d / name)
    (d / "manifest.json").write_text(json.dumps(seal_manifest(m)))


@pytest.fixture()
def bundle_dir(demo_bundle, tmp_path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(demo_bundle, root)
    return resolve(root)


def test_fd_probe_sees_an_open_bundle(bundle_dir):
    """The probe itself can fail: an opened bundle holds the table file, a closed one does not."""
    tables = bundle_dir / "tables.lmdb"
    assert _open_fds_to(tables) == 0
    b = Bundle.open(bundle_dir)
    assert _open_fds_to(tables) >= 1
    b.close()
    assert _open_fds_to(tables) == 0


@pytest.mark.parametrize("bad", ["index", "ranker"])
def test_failed_open_closes_the_tables(bundle_dir, bad):
    tables = bundle_dir / "tables.lmdb"
    if bad == "index":
        # garbage after a valid header: hnswlib's loader refuses it; verify (which reads only the header
        # and the size) is skipped, as by a caller that verified the bundle earlier
        raw = (bundle_dir / "index.hnsw").read_bytes()
        _rewrite(bundle_dir, "index.hnsw", raw[:96] + bytes([0xFF]) * (len(raw) - 96))
        reason, check = "index.hnsw: cannot load", False
    else:
        # a ranker that is not text: verify refuses it; opening without verification fails too
        _rewrite(bundle_dir, "ranker.txt", b"tree\xff\xfe\n")
        with pytest.raises(BundleError, match="ranker.txt: not a usable LightGBM model"):
            verify(bundle_dir)
        reason, check = "ranker.txt: not UTF-8 text", False
    refused = []       # kept alive (as log records or a last error would), so nothing is freed by refcount
    for _ in range(POLLS):             # every poll names the real problem, never "already open"
        with pytest.raises(BundleError, match=reason) as exc:
            Bundle.open(bundle_dir, verify=check)
        refused.append(exc)
    assert _open_fds_to(tables) == 0, f"{_open_fds_to(tables)} LMDB environment(s) left open"


def test_infinite_features_refused(bundle_dir):
    """A feature table holding an infinity (which the trainer's writer refuses, but a table written by
    hand can hold) fails verify naming the column: every anonymous user's mean features would be inf."""
    import lmdb
    import numpy as np

    from recserve._core.tables import TableReader

    with TableReader(bundle_dir / "tables.lmdb") as t:
        feats = np.array(t.array("user_feats"))
        col = t.columns("user_feats")[1]
    feats[3, 1] = np.inf
    env = lmdb.open(str(bundle_dir / "tables.lmdb"), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"arr:user_feats", feats.tobytes())
    env.close()
    _rewrite(bundle_dir, "tables.lmdb", (bundle_dir / "tables.lmdb").read_bytes())
    with pytest.raises(BundleError, match=f"user_feats column '{col}' holds infinite values"):
        verify(bundle_dir)
