"""Server test fixtures: real servers (``python -m recserve.cli serve``) over loopback on free ports.

Servers run as subprocesses: the pytest process has used OpenMP (training the demo bundle) and gRPC, and a
server forks its workers, which must happen in a clean process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from recserve._core.tables import TableReader
from recserve.v1 import recommender_pb2_grpc as pbg

ROOT = Path(__file__).resolve().parents[2]


def copy_root(src: Path, dst: Path) -> Path:
    """A private copy of a bundle root (version dirs + CURRENT), without any event store."""
    dst.mkdir(parents=True)
    for p in Path(src).iterdir():
        if p.name == "events":
            continue
        if p.is_dir():
            shutil.copytree(p, dst / p.name)
        else:
            shutil.copy2(p, dst / p.name)
    return dst


def set_current(root: Path, version: str) -> None:
    tmp = root / ".CURRENT.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / "CURRENT")


class Server:
    def __init__(self, root: Path, *args: str, env: dict | None = None, wait_line: bool = True):
        cmd = [sys.executable, "-m", "recserve.cli", "serve", "--bundle", str(root), "--port", "0",
               "--log-level", "WARNING", *args]
        e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                                     cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("server failed to start: " + self.proc.stderr.read()[-3000:])
        self.port = json.loads(line)["port"]
        self.addr = f"127.0.0.1:{self.port}"
        self.channels: list[grpc.Channel] = []

    def channel(self) -> grpc.Channel:
        # a private subchannel pool: every channel is its own connection (spread over the workers)
        ch = grpc.insecure_channel(self.addr, options=[("grpc.use_local_subchannel_pool", 1)])
        self.channels.append(ch)
        return ch

    def stub(self) -> pbg.RecommenderStub:
        return pbg.RecommenderStub(self.channel())

    def terminate(self, timeout: float = 30) -> int:
        for ch in self.channels:
            ch.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


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
            "user_history": set(t.ids_of("item", t.array("hist_items")[indptr[urow]:indptr[urow + 1]])),
            "items": [t.id_of("item", r) for r in range(t.n_ids("item"))],
            "categories": [t.id_of("category", r) for r in range(t.n_ids("category"))],
            "item_cat": feats[:, cols.index("category")].astype(int),
            "item_price": feats[:, cols.index("price")],
            "item_stock": feats[:, cols.index("in_stock")],
            "i2i_rows": t.array("i2i_rows").copy(),
        }
    return f


@pytest.fixture(scope="module")
def shared_root(demo_bundle, tmp_path_factory):
    return copy_root(Path(demo_bundle), tmp_path_factory.mktemp("srv") / "root")


@pytest.fixture(scope="module")
def server(shared_root):
    """One 2-worker server per test module, over a private copy of the demo bundle."""
    s = Server(shared_root, "--workers", "2", "--reload-interval", "0")
    yield s
    s.terminate()


def wait_for(pred, timeout=20.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False
