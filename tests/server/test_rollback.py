"""A version whose tables are already open in the worker loads as any other: a rollback to a version a
request still leases (A -> B -> A), and a version directory whose tables.lmdb is a hard link of the live
one's (``cp -al``, ``rsync --link-dest``). Real bundles, real LMDB, hnswlib and ranker."""
from __future__ import annotations

import gc
import json
import os
import shutil
import weakref
from pathlib import Path

from recserve.bundle import seal_manifest
from recserve.config import ServeConfig
from recserve.events import EventStore
from recserve.live import BundleHolder
from recserve.pipeline.messages import RecRequest
from recserve.v1 import recommender_pb2 as pb
from srvutil import copy_root, new_version, set_current, wait_for

NOW = 1_700_000_000.0


def _items(rec, user):
    return [it.item_id for it in rec.recommend(RecRequest(user_id=user, k=5, timestamp=NOW)).items]


def test_a_rollback_to_a_version_a_request_still_leases_loads_it(demo_bundle, facts, tmp_path):
    root = copy_root(Path(demo_bundle), tmp_path / "root")
    a = (root / "CURRENT").read_text().strip()
    new_version(root, a, "b")
    store = EventStore(tmp_path / "ev", map_size=1 << 26)
    holder = BundleHolder(str(root), ServeConfig(), store)
    try:
        assert holder.try_reload() and holder.current_key == a
        expected = _items(holder.current, facts["user"])
        with holder.lease() as first:
            set_current(root, "b")
            assert holder.try_reload() and holder.current_key == "b"
            set_current(root, a)            # rolled back while this request still holds the first A
            assert holder.try_reload(), holder.last_error
            assert holder.current_key == a and holder.current is not first
            assert _items(first, facts["user"]) == expected
        # the lease ended, the first A closed: the A loaded again still reads its tables
        assert _items(holder.current, facts["user"]) == expected
    finally:
        if holder.current is not None:
            holder.current.bundle.close()
        store.close()


def _linked_version(root: Path, src: str, name: str) -> None:
    """``name``: hard links of ``src``'s files (``cp -al``), with a manifest of its own naming it."""
    (root / name).mkdir()
    for f in (root / src).iterdir():
        if f.name == "manifest.json":
            m = json.loads(f.read_text())
            m["version"] = name
            (root / name / f.name).write_text(json.dumps(seal_manifest(m)))
        else:
            os.link(f, root / name / f.name)


def test_a_version_hard_linking_the_live_tables_is_served(shared_root, facts, tmp_path, start_server):
    root = copy_root(shared_root, tmp_path / "root")
    a = (root / "CURRENT").read_text().strip()
    _linked_version(root, a, "linked")
    s = start_server(root, "--workers", "1", "--reload-interval", "0.1", "--events-dir", str(tmp_path / "ev"))
    stub = s.stub()

    def serving(version):
        r = stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=5), timeout=30)
        return r.bundle_version == version

    assert serving(facts["version"])
    set_current(root, "linked")
    assert wait_for(lambda: serving("linked"), 30)
    set_current(root, a)                    # and back: the first version's tables are the same file again
    assert wait_for(lambda: serving(facts["version"]), 30)
    shutil.rmtree(root / "linked")


def test_a_retired_pipeline_goes_with_its_last_reference_frozen_or_not(demo_bundle, tmp_path):
    """A reload freezes the new bundle's objects and leaves those an earlier load froze frozen (a full
    collection over them would pause the worker's loop): a retired pipeline must therefore hold no
    reference cycle, and go as soon as nothing refers to it."""
    root = copy_root(Path(demo_bundle), tmp_path / "root")
    new_version(root, (root / "CURRENT").read_text().strip(), "b")
    store = EventStore(tmp_path / "ev", map_size=1 << 26)
    holder = BundleHolder(str(root), ServeConfig(), store)
    try:
        assert holder.pending() and holder.try_reload() and not holder.pending()
        old, old_bundle = weakref.ref(holder.current), weakref.ref(holder.current.bundle)
        set_current(root, "b")
        assert holder.pending()
        gc.disable()                    # no collection but the reload's own
        try:
            assert holder.try_reload()
            assert old() is None and old_bundle() is None
        finally:
            gc.enable()
    finally:
        if holder.current is not None:
            holder.current.bundle.close()
        store.close()
