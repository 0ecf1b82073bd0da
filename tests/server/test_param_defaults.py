"""A manifest may leave out any serving parameter (``check_params`` accepts it): the server then uses the
trainer's defaults (``DEFAULT_PARAMS``) for every one of them, in the shared retrieval and in the rest of
the pipeline alike, so such a bundle answers as one that writes those defaults out."""
from __future__ import annotations

import json
import shutil

import numpy as np

from recserve._core import candidates as CC
from recserve.bundle import Bundle, resolve, seal_manifest
from recserve.pipeline.recommender import Recommender, RecRequest

LEFT_OUT = ("cap", "mmr_lambda", "max_per_creator", "quotas", "history_len", "novelty_boost", "new_item_days")


def _version_with_params(demo_bundle, dst, edit):
    src = resolve(demo_bundle)
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m["params"])
    (dst / "manifest.json").write_text(json.dumps(seal_manifest(m)))      # sealed again, as a tool would
    return dst


def test_parameters_a_manifest_leaves_out_are_the_trainers_defaults(demo_bundle, tmp_path):
    def drop(p):
        for key in LEFT_OUT:
            p.pop(key, None)

    def defaults(p):
        p.update({key: CC.DEFAULT_PARAMS[key] for key in LEFT_OUT})

    with Bundle.open(_version_with_params(demo_bundle, tmp_path / "without", drop)) as bare, \
            Bundle.open(_version_with_params(demo_bundle, tmp_path / "explicit", defaults)) as full:
        assert not set(LEFT_OUT) & set(bare.params)
        a, b = Recommender(bare, None), Recommender(full, None)
        assert a.cap == b.cap == CC.DEFAULT_PARAMS["cap"]
        assert a.quotas == b.quotas == CC.DEFAULT_PARAMS["quotas"]
        now = float(bare.tables.meta("now"))
        compared = 0
        for u in range(0, bare.n_users, 10):
            uid = bare.tables.id_of("user", u)
            req = RecRequest(user_id=uid, k=20, timestamp=now, hour=12, weekday=2)
            got, want = a.recommend(req), b.recommend(req)
            assert [i.item_id for i in got.items] == [i.item_id for i in want.items], uid
            np.testing.assert_array_equal([i.score for i in got.items], [i.score for i in want.items])
            assert got.source_counts == want.source_counts
            compared += 1
        assert compared >= 20


def test_a_served_cap_outranks_the_bundles_own_candidates(demo_bundle, tmp_path):
    """``candidates`` N sets the cap to N, so a manifest's ``candidates`` must not undo the server's ``cap``."""
    def with_candidates(p):
        p["candidates"] = 150

    with Bundle.open(_version_with_params(demo_bundle, tmp_path / "cand", with_candidates)) as b:
        assert Recommender(b, None).cap == 150
        assert Recommender(b, None, {"cap": 40}).cap == 40
        assert Recommender(b, None, {"candidates": 90}).cap == 90
