"""A bundle written by an earlier trainer (``tests/fixtures/bundle_v1``, format version 1, built on
2026-12-05 from ``synth(60, 40, seed=0)``) must keep verifying, loading and answering: a format change that
breaks bundles already on disk fails here. The fixture is never regenerated; a new format version adds a
fixture of its own beside it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recserve._core.tables import TableReader
from recserve.bundle import Bundle, verify
from recserve.v1 import recommender_pb2 as pb
from srvutil import copy_root

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bundle_v1"
VERSION = "20261205T091139-1667b3"


def test_the_saved_bundle_verifies_and_opens():
    m = verify(FIXTURE)
    assert m["format_version"] == 1 and m["version"] == VERSION
    with Bundle.open(FIXTURE) as b:
        assert (b.n_users, b.n_items) == (60, 40)
        labels, dist = b.index.knn_query(b.item_emb[:5], k=1)
        assert abs(dist[:, 0]).max() < 1e-4


def test_a_server_answers_from_the_saved_bundle(tmp_path, start_server):
    root = copy_root(FIXTURE, tmp_path / "root")
    with TableReader(root / VERSION / "tables.lmdb") as t:
        items = [t.id_of("item", r) for r in range(t.n_ids("item"))]
        users = [t.id_of("user", r) for r in range(t.n_ids("user"))]
        indptr = t.array("hist_indptr").copy()
        hist = t.array("hist_items").copy()
        emb = t.array("item_emb").copy()
    srv = start_server(root, "--workers", "1")
    stub = srv.stub()
    for row in (0, 17, 59):
        r = stub.Recommend(pb.RecommendRequest(user_id=users[row], k=10), timeout=20)
        ids = [i.item_id for i in r.items]
        assert r.bundle_version == VERSION and not r.cold_start
        assert len(ids) == len(set(ids)) and 0 < len(ids) <= 10 and set(ids) <= set(items)
        consumed = {items[i] for i in hist[indptr[row]:indptr[row + 1]]}
        assert not set(ids) & consumed
        assert all(np.isfinite(i.score) for i in r.items)
    s = stub.SimilarItems(pb.SimilarItemsRequest(item_id=items[3], k=5, filters=pb.Filters(in_stock_only=False)),
                          timeout=20)
    got = [i.item_id for i in s.items]
    assert len(got) == 5 and items[3] not in got and set(got) <= set(items)
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = e @ e[3]
    sims[3] = -np.inf
    assert items[int(sims.argmax())] in got, "the nearest item by embedding is among the answers"
    cold = stub.Recommend(pb.RecommendRequest(user_id="someone-new", k=5), timeout=20)
    assert cold.cold_start and len(cold.items) == 5
    # written before manifests carried a digest: served, with a warning that its values are not checked
    srv.terminate()
    assert "its manifest is not sealed" in srv.proc.stderr.read()


def test_the_saved_bundle_without_consumed_tables_takes_them_from_the_histories():
    """Written before the ``consumed_*`` tables: every user's consumed items are her history's, in the server
    and in the trainer's evaluation of the bundle."""
    from recserve.pipeline.recommender import Recommender
    from trainer.build import artifacts_from_bundle

    with Bundle.open(FIXTURE) as b:
        assert not b.tables.has_array("consumed_users")
        rec = Recommender(b, None)
        art = artifacts_from_bundle(b)
        indptr, hist = b.tables.array("hist_indptr"), b.tables.array("hist_items")
        for row in range(b.n_users):
            want = np.unique(hist[indptr[row]:indptr[row + 1]])
            np.testing.assert_array_equal(rec.histories.of(b.tables.id_of("user", row), row)[3], want)
            np.testing.assert_array_equal(art.consumed(row), want)


# a bundle written by the trainer of 2026-12-06 (``synth(60, 40, seed=0)``, ``history_len`` 12): its manifest
# sealed with ``manifest_sha256`` and the ``consumed_*`` tables of the users whose histories it cut; never
# regenerated, so a change to the digest's canonical form or to those tables' layout fails here
SEALED = Path(__file__).resolve().parents[1] / "fixtures" / "bundle_v1_sealed"
SEALED_VERSION = "20261206T061801-013897"


def test_the_sealed_bundle_verifies_and_its_digest_is_still_computed_alike():
    import json

    from recserve.bundle import MANIFEST_DIGEST, manifest_digest

    m = verify(SEALED)
    assert m["format_version"] == 1 and m["version"] == SEALED_VERSION
    raw = json.loads((SEALED / SEALED_VERSION / "manifest.json").read_text())
    assert raw[MANIFEST_DIGEST] == manifest_digest(raw)


def test_the_sealed_bundle_excludes_every_consumed_item_of_a_cut_history():
    from recserve.pipeline.messages import Filters, RecRequest
    from recserve.pipeline.recommender import Recommender

    with Bundle.open(SEALED) as b:
        users = np.asarray(b.tables.array("consumed_users"))
        indptr, items = b.tables.array("consumed_indptr"), b.tables.array("consumed_items")
        hist_ptr, hist = b.tables.array("hist_indptr"), b.tables.array("hist_items")
        assert len(users) > 0 and int(b.params["history_len"]) == 12
        rec = Recommender(b, None)
        checked = 0
        for j, row in enumerate(users.tolist()):
            consumed = np.asarray(items[indptr[j]:indptr[j + 1]])
            older = set(consumed.tolist()) - set(np.asarray(hist[hist_ptr[row]:hist_ptr[row + 1]]).tolist())
            assert older, "a stored set holds items beyond the cut history"
            uid = b.tables.id_of("user", row)
            np.testing.assert_array_equal(rec.histories.of(uid, row)[3], consumed)
            free = b.n_items - len(consumed)
            if free < 3:
                continue
            r = rec.recommend(RecRequest(user_id=uid, k=min(10, free), filters=Filters(in_stock_only=False)))
            got = set(b.tables.rows_of("item", [i.item_id for i in r.items]).tolist())
            assert got and not got & set(consumed.tolist())
            checked += 1
        assert checked > 0


def test_a_bundle_whose_ranker_read_country_lists_it_lacks_is_refused(tmp_path):
    """``warm_trending`` country says the ranker was trained on the users' country lists: the saved bundle,
    which has none, is refused with that manifest (sealed again), rather than served with the global list."""
    import json
    import re
    import shutil

    import pytest

    from recserve.bundle import BundleError, seal_manifest

    d = tmp_path / VERSION
    shutil.copytree(FIXTURE / VERSION, d)
    m = json.loads((d / "manifest.json").read_text())
    assert "warm_trending" not in m["params"]                   # built before it: the global list
    m["params"]["warm_trending"] = "country"
    (d / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    with pytest.raises(BundleError, match=re.escape("params.warm_trending is 'country'")):
        verify(d)
