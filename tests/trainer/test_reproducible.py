"""A seeded build is reproducible: the same data and seed give the same index answers, tuning and ranker."""
from __future__ import annotations

import json

from trainer.build import build
from trainer.synth import synth
from trainer.timing import Timer


def _build(ds, root, **cfg):
    build(ds, root, {"seed": 0, "factors": 8, "ranker_users": 300, "ranker_rounds": 30, "holdout": 0, **cfg},
          timer=Timer(verbose=False))
    version = (root / "CURRENT").read_text().strip()
    m = json.loads((root / version / "manifest.json").read_text())
    return m, (root / version / "ranker.txt").read_text()


def test_same_seed_same_bundle(tmp_path):
    # 1,500 items: large enough that hnswlib's parallel insertion changed the graph between runs
    ds, _ = synth(600, 1500, seed=2)
    m1, r1 = _build(ds, tmp_path / "a")
    m2, r2 = _build(ds, tmp_path / "b")
    assert m1["training"]["tuning"] == m2["training"]["tuning"]
    assert m1["index"] == m2["index"] and m1["params"] == m2["params"]
    assert r1 == r2
