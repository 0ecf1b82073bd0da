"""Consumed items are every item of a user's training data, however old, in the bundle and in the trainer's own
uses (evaluation truth, candidate exclusion, ranker labels), while her history stays bounded to her newest
``history_len`` events. The demo bundle's data has a user with more training events than ``history_len``."""
from __future__ import annotations

import numpy as np
import pytest

from recserve.bundle import Bundle, BundleError, resolve, verify
from trainer import features
from trainer.build import artifacts_from_bundle
from trainer.cli import main


@pytest.mark.parametrize("history_len", [1, 3, 10, 100])
def test_consumed_tables_hold_what_the_bounded_histories_miss(history_len):
    rng = np.random.default_rng(history_len)
    n_users, n_items, n = 40, 30, 600
    user = rng.integers(0, n_users - 2, n).astype(np.int32)         # the last two users have no interaction
    item = rng.integers(0, n_items, n).astype(np.int32)
    ts = rng.random(n) * 1e6
    event = rng.integers(0, 4, n).astype(np.int8)
    hi, hit, _, _ = features.histories(user, item, ts, event, n_users, history_len)
    users, indptr, items = features.consumed(user, item, n_users, n_items, hi, hit)
    assert users.dtype == np.int32 and indptr.dtype == np.int64 and items.dtype == np.int32
    assert indptr[0] == 0 and indptr[-1] == len(items) and len(indptr) == len(users) + 1
    for u in range(n_users):
        every = np.unique(item[user == u])
        kept = np.unique(hit[hi[u]:hi[u + 1]])
        listed = np.flatnonzero(users == u)
        if len(every) == len(kept):
            assert not len(listed), u
        else:
            k = int(listed[0])
            np.testing.assert_array_equal(items[indptr[k]:indptr[k + 1]], every)


@pytest.fixture(scope="module")
def heavy(demo_bundle):
    """(artifacts of the demo bundle, its params, the training data per user, the heavy user's row, the item
    rows she had only before her newest history_len events)."""
    from trainer.synth import synth

    ds, _ = synth(300, 200, seed=0)         # the demo bundle's data (tests/conftest.py); rows are the ds's
    with Bundle.open(demo_bundle) as b:
        art = artifacts_from_bundle(b)
        params = dict(b.params)
    train = ds.ts < art.now
    mine = [set(ds.item[train & (ds.user == u)].tolist()) for u in range(ds.n_users)]
    u = int(np.argmax([np.count_nonzero(train & (ds.user == u)) for u in range(ds.n_users)]))
    early = sorted(mine[u] - set(art.history(u)[0].tolist()))
    assert early and len(art.history(u)[0]) == params["history_len"]
    return art, params, mine, u, early


def test_every_users_consumed_items_are_her_training_items(heavy):
    art, _, mine, u, _ = heavy
    for v, items in enumerate(mine):
        assert art.consumed(v).tolist() == sorted(items), v
    # stored only for the users whose bounded history misses some
    assert u in art.consumed_users.tolist()
    assert all(len(mine[v]) > len(set(art.history(v)[0].tolist())) for v in art.consumed_users.tolist())


def test_the_evaluation_excludes_every_consumed_item(heavy):
    """A held-out item she had long ago is no new item: not in her truth, and she is not evaluated for it alone;
    no method recommends it (the candidates exclude it as the server does)."""
    from trainer import evaluate as ev
    from trainer.retrieval import candidates_for

    art, params, mine, u, early = heavy
    users, truths = ev.eval_users(art, np.full(len(early), u), np.array(early), 2000, 0)
    assert u not in users.tolist()
    fresh = next(i for i in range(len(art.item_emb)) if i not in mine[u] and i not in set(art.unreleased.tolist()))
    users, truths = ev.eval_users(art, np.full(len(early) + 1, u), np.array(early + [fresh]), 2000, 0)
    assert users.tolist() == [u] and truths == [{fresh}]
    wide = dict(params, cap=len(art.item_emb), quotas=dict(params["quotas"], popular=len(art.item_emb)))
    (_, _, lists, merged), = candidates_for(art, np.array([u]), wide, threads=1)
    assert len(merged) and not set(merged.rows.tolist()) & mine[u]
    assert set(early) & set(lists[3][0].tolist()), "the popular list holds some of them before the merge"


def test_verify_catches_a_flipped_byte_in_the_consumed_tables(demo_bundle, tmp_path, capsys):
    import shutil

    from recserve._core.tables import TableReader

    root = tmp_path / "root"
    shutil.copytree(demo_bundle, root)
    p = resolve(root) / "tables.lmdb"
    with TableReader(p) as t:
        raw = np.array(t.array("consumed_items")).tobytes()
    data = bytearray(p.read_bytes())
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0
    data[at + len(raw) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="tables.lmdb: sha256 mismatch"):
        verify(root)
    capsys.readouterr()
    assert main(["verify", str(root)]) == 3
    assert "tables.lmdb: sha256 mismatch" in capsys.readouterr().err
