"""Helpers for the server tests: a real ``recserve serve`` subprocess, bundle root copies, waiting."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from recserve.bundle import seal_manifest, sha256_file
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pbg

ROOT = Path(__file__).resolve().parents[2]
RELEASE = 4102444800.0          # 2100-01-01T00:00:00Z: a release time after any clock the tests run under


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


def _pending(pipe, limit: int = 3000) -> str:
    """The last ``limit`` characters a pipe holds now, without waiting for its end (a hung server's workers
    may keep it open)."""
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", "replace")[-limit:]


def first_line(proc: subprocess.Popen, timeout: float) -> str:
    """``proc``'s first line of output ("" if it exited first); a process that prints none within
    ``timeout`` seconds is stopped and the caller's test fails, instead of the suite hanging."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if got:
        return got[0]
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    raise RuntimeError(f"server printed no startup line in {timeout:.0f} s: " + _pending(proc.stderr))


class Server:
    def __init__(self, root: Path, *args: str, env: dict | None = None, wait_line: bool = True,
                 metrics: bool = False, start_timeout: float = 120.0):
        """``recserve serve`` on ``root`` with ``args``; ``metrics``: with a metrics endpoint on a free port
        (``metrics_port``), picked again should another process take it before the server binds it."""
        e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.metrics_port: int | None = None
        for attempt in range(3):
            if metrics:
                self.metrics_port = free_port()
            cmd = [sys.executable, "-m", "recserve.cli", "serve", "--bundle", str(root), "--port", "0",
                   "--log-level", "WARNING", *args, *(("--metrics-port", str(self.metrics_port)) if metrics else ())]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                                         cwd=ROOT)
            line = first_line(self.proc, start_timeout)
            if line:
                break
            err = self.proc.stderr.read()
            if not (metrics and attempt < 2 and f":{self.metrics_port}: Address already in use" in err):
                raise RuntimeError("server failed to start: " + err[-3000:])
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` in a Prometheus text page whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.split()[-1])
    return total


def wait_for(pred, timeout=20.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


def new_version(root, src: str, name: str, corrupt: str | None = None):
    """Copy version ``src`` to ``name`` (manifest version renamed); optionally corrupt it."""
    shutil.copytree(root / src, root / name)
    mpath = root / name / "manifest.json"
    m = json.loads(mpath.read_text())
    m["version"] = name
    if corrupt == "sha":  # a flipped byte: checksum mismatch
        p = root / name / "ranker.txt"
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0x55
        p.write_bytes(bytes(b))
    elif corrupt == "model":  # checksums right, but the model is garbage
        p = root / name / "ranker.txt"
        p.write_text("this is not a LightGBM model\n")
        m["files"]["ranker.txt"] = sha256_file(p)
    mpath.write_text(json.dumps(seal_manifest(m)))


def edited_version(shared_root: Path, dst: Path, edit, name: str = "v-edited"):
    """A copy of ``shared_root`` at ``dst`` with a loaded :class:`BundleHolder` and a new version ``name``
    whose manifest ``edit(manifest dict)`` changed (CURRENT not moved yet): (root, holder, good version)."""
    from recserve.config import ServeConfig
    from recserve.live import BundleHolder

    root = copy_root(shared_root, dst)
    good = (root / "CURRENT").read_text().strip()
    holder = BundleHolder(str(root), ServeConfig(reload_interval=0), None)
    assert holder.try_reload()
    new_version(root, good, name)
    mpath = root / name / "manifest.json"
    m = json.loads(mpath.read_text())
    edit(m)
    mpath.write_text(json.dumps(seal_manifest(m)))
    return root, holder, good


def worker_pids(server: Server, user: str, calls: int = 24) -> set[int]:
    """The worker pids that answered ``calls`` Recommends, each on a fresh connection."""
    pids = set()
    for _ in range(calls):
        stub = pbg.RecommenderStub(server.channel())
        _, call = stub.Recommend.with_call(pb.RecommendRequest(user_id=user, k=5), timeout=10)
        pids.update(int(v) for k, v in call.trailing_metadata() if k == "recserve-worker")
    return pids


def replacement(server: Server, user: str, before: set[int], timeout: float = 30.0) -> set[int]:
    """After a worker of ``before`` was killed: the worker pids seen answering once one outside ``before``
    (its replacement) has answered, or an empty set after ``timeout`` seconds."""
    seen: set[int] = set()

    def replaced() -> bool:
        try:
            seen.update(worker_pids(server, user, 12))
        except grpc.RpcError:       # a connection the kernel queued on the dead worker's socket
            return False
        return len(seen - before) >= 1

    return seen if wait_for(replaced, timeout, 0.5) else set()


def make_certs(d) -> None:
    """A CA (``ca.pem``) and a server and a client certificate it signed (``server.pem/.key``,
    ``client.pem/.key``) for localhost / 127.0.0.1, written into ``d`` with the openssl command."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "1", "-subj", "/CN=test-ca")
    (Path(d) / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", "san.cnf")


def index_queries(rec) -> list:
    """(k, ef) of every index query the Recommender ``rec`` makes from now on, recorded around the real
    query."""
    calls, query = [], rec.ann.query

    def recorded(vec, k, allowed, brute, ef=None, hidden=None):
        calls.append((k, ef))
        return query(vec, k, allowed, brute, ef, hidden)

    rec.ann.query = recorded
    return calls
