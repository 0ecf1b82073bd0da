"""A reload never closes a bundle under a request: the old pipeline closes when its last lease ends."""
from __future__ import annotations

import threading

from recserve.config import ServeConfig
from recserve.live import BundleHolder


class _Bundle:
    def __init__(self):
        self.closed = threading.Event()

    def close(self):
        self.closed.set()


class _Pipeline:
    def __init__(self, version):
        self.version = version
        self.bundle = _Bundle()


def _holder(tmp_path, versions):
    holder = BundleHolder(str(tmp_path), ServeConfig(), store=None)
    pipelines = {v: _Pipeline(v) for v in versions}
    holder.load = lambda key: pipelines[key]       # the loading itself is covered by the lifecycle tests
    return holder, pipelines


def test_old_bundle_stays_open_while_leased(tmp_path):
    holder, p = _holder(tmp_path, ["v1", "v2"])
    (tmp_path / "CURRENT").write_text("v1")
    assert holder.try_reload()
    with holder.lease() as rec:
        assert rec is p["v1"]
        (tmp_path / "CURRENT").write_text("v2")
        assert holder.try_reload()
        assert holder.current is p["v2"]
        assert not p["v1"].bundle.closed.is_set()      # still in use by this request
        with holder.lease() as newer:
            assert newer is p["v2"]
    assert p["v1"].bundle.closed.is_set()              # closed when the last lease ended
    assert not p["v2"].bundle.closed.is_set()


def test_unleased_old_bundle_closes_at_once(tmp_path):
    holder, p = _holder(tmp_path, ["v1", "v2"])
    (tmp_path / "CURRENT").write_text("v1")
    holder.try_reload()
    (tmp_path / "CURRENT").write_text("v2")
    holder.try_reload()
    assert p["v1"].bundle.closed.is_set()


def test_lease_before_any_bundle_is_none(tmp_path):
    holder, _ = _holder(tmp_path, [])
    with holder.lease() as rec:
        assert rec is None
