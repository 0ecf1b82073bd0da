"""Per-user ranker labels: every user with two or more training interactions becomes a group."""
from __future__ import annotations

import json

import numpy as np

from trainer.build import build
from trainer.split import per_user_label_mask
from trainer.synth import synth
from trainer.timing import Timer


def test_per_user_mask_takes_each_users_newest_share():
    user = np.array([0, 0, 0, 0, 1, 1, 2, 0, 1])
    ts = np.array([1, 2, 3, 4, 10, 11, 5, 0, 12], float)
    train = np.ones(len(user), bool)
    train[8] = False                                   # a held-out row is never a label
    m = per_user_label_mask(user, ts, train, 3, 0.5)
    assert set(np.flatnonzero(m).tolist()) == {2, 3, 5}   # user 0: ts 3, 4; user 1: ts 11; user 2: one row, none
    r = per_user_label_mask(user, ts, train, 3, 0.5, seed=1, random=True)
    assert r.sum() == 3 and not r[8] and not r[6]
    assert (np.bincount(user[r], minlength=3) == [2, 1, 0]).all()


def test_build_with_per_user_labels_trains_on_more_groups(tmp_path):
    ds, _ = synth(200, 120, seed=3)
    groups = {}
    for split in ("time", "user"):
        root = tmp_path / split
        build(ds, root, {"seed": 0, "factors": 8, "ranker_users": 200, "ranker_rounds": 20, "holdout": 0,
                         "label_split": split}, timer=Timer(verbose=False))
        version = (root / "CURRENT").read_text().strip()
        manifest = json.loads((root / version / "manifest.json").read_text())
        assert manifest["training"]["label_split"] == split
        groups[split] = (manifest["training"]["ranker"]["groups"]
                         + manifest["training"]["ranker"]["valid_groups"])
    # the time window holds only the users active last; per-user labels reach more users
    assert groups["user"] > groups["time"]


def test_training_data_at_one_time_names_the_label_split_not_equal_timestamps(tmp_path):
    """Two days of dates without hours: the held-out day splits off, the training day has one time. The
    time label split has no window (it raised 'all timestamps equal?' before); per-user labels build."""
    import pytest

    from trainer.io import DataError

    ds, _ = synth(200, 120, seed=3)
    day = 1_700_000_000.0
    ds.ts = np.where(ds.ts < np.quantile(ds.ts, 0.8), day, day + 86400.0)
    cfg = {"seed": 0, "factors": 8, "ranker_users": 200, "ranker_rounds": 20, "holdout": 0.2, "tune": False}
    with pytest.raises(DataError, match=r"no label window for the ranker \(--label-split time\).*--label-split user"):
        build(ds, tmp_path / "time", dict(cfg, label_split="time"), timer=Timer(verbose=False))
    assert not (tmp_path / "time" / "CURRENT").exists()
    build(ds, tmp_path / "user", dict(cfg, label_split="user"), timer=Timer(verbose=False))
    assert (tmp_path / "user" / "CURRENT").exists()
