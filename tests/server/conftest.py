"""Server test fixtures: real servers (``python -m recserve.cli serve``) over loopback on free ports.

Servers run as subprocesses: the pytest process has used OpenMP (training the demo bundle) and gRPC, and a
server forks its workers, which must happen in a clean process.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from recserve._core.tables import TableReader

sys.path.insert(0, str(Path(__file__).parent))
from srvutil import RELEASE, Server, copy_root  # noqa: E402


@pytest.fixture
def start_server():
    servers: list[Server] = []

    def start(root, *args, **kw) -> Server:
        s = Server(root, *args, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.terminate()


@pytest.fixture(scope="session")
def facts(demo_bundle):
    """Ids from the demo bundle: a user with history, items, categories, the version."""
    root = Path(demo_bundle)
    version = (root / "CURRENT").read_text().strip()
    with TableReader(root / version / "tables.lmdb") as t:
        indptr = t.array("hist_indptr")
        counts = indptr[1:] - indptr[:-1]
        urow = int(counts.argmax())
        cols = t.columns("item_feats")
        feats = t.array("item_feats").copy()
        f = {
            "version": version,
            "user": t.id_of("user", urow),
            # a user of the bundle without any interaction before its cut (all of hers were held out)
            "user_without_history": t.id_of("user", int((counts == 0).argmax())) if (counts == 0).any() else None,
            "user_history": set(t.ids_of("item", t.array("hist_items")[indptr[urow]:indptr[urow + 1]])),
            "items": [t.id_of("item", r) for r in range(t.n_ids("item"))],
            "categories": [t.id_of("category", r) for r in range(t.n_ids("category"))],
            "item_cat": feats[:, cols.index("category")].astype(int),
            "item_price": feats[:, cols.index("price")],
            "item_stock": feats[:, cols.index("in_stock")],
            "i2i_rows": t.array("i2i_rows").copy(),
        }
    return f


@pytest.fixture(scope="session")
def prelisted(tmp_path_factory):
    """(root, ids) of a bundle built without held-out data (its now: after the last interaction) whose
    catalogue lists 15 items, the ``ids``, to be released at ``RELEASE`` (their interactions kept)."""
    import numpy as np

    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    ds, _ = synth(300, 200, seed=2)
    rows = np.sort(np.random.default_rng(0).choice(ds.n_items, 15, replace=False))
    ds.item_created[rows] = RELEASE
    root = tmp_path_factory.mktemp("prelisted")
    build(ds, root, {"seed": 0, "factors": 16, "ranker_users": 300, "ranker_rounds": 30, "holdout": 0},
          timer=Timer(verbose=False))
    return root, {str(ds.item_ids[r]) for r in rows}


@pytest.fixture(scope="module")
def bundle(demo_bundle):
    """The demo bundle opened in this process, per test module (closed before the next module opens it)."""
    from recserve.bundle import Bundle

    b = Bundle.open(demo_bundle)
    yield b
    b.close()


@pytest.fixture(scope="module")
def shared_root(demo_bundle, tmp_path_factory):
    return copy_root(Path(demo_bundle), tmp_path_factory.mktemp("srv") / "root")


@pytest.fixture(scope="module")
def server(shared_root):
    """One 2-worker server per test module, over a private copy of the demo bundle."""
    s = Server(shared_root, "--workers", "2", "--reload-interval", "0")
    yield s
    s.terminate()
