"""``recserve serve`` refuses what it cannot serve with one line and an exit code, before it listens."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from srvutil import ROOT, make_certs

SERVE = [sys.executable, "-m", "recserve.cli", "serve"]


def serve(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``recserve serve`` expecting it to exit by itself (a started server would hit the timeout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([*SERVE, "--port", "0", "--log-level", "ERROR", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def reason(p: subprocess.CompletedProcess) -> str:
    """The one line ``recserve serve:`` printed last (before it, JSON log lines only, no bare traceback)."""
    lines = p.stderr.splitlines()
    assert lines and lines[-1].startswith("recserve serve:"), p.stderr
    assert all(ln.startswith("{") for ln in lines[:-1]), p.stderr
    return lines[-1]


@pytest.mark.parametrize("args, says", [
    (["--client-ca", "CA"], "tls_client_ca (--client-ca, mutual TLS) needs TLS"),
    (["--tls-key", "CA"], "tls_cert and tls_key go together"),
    (["--tls-cert", "/no/such.crt", "--tls-key", "/no/such.key"], "tls_cert: cannot read"),
    (["--mmr-lambda", "3"], "mmr_lambda: must be in [0, 1]"),
    (["--port", "56123", "--metrics-port", "56123"], "metrics_port: 56123 is the gRPC port too"),
    (["--max-per-creator", "-1"], "max_per_creator: must be in [0, 10000]"),
    (["--novelty-boost", "nan"], "novelty_boost: must be a finite number"),
    (["--candidates", "-5"], "candidates: must be in [1, 100000]"),
    (["--ef", "-1"], "ef: must be in [1, 1048576]"),
    (["--max-concurrent-rpcs", "0"], "max_concurrent_rpcs: must be in [1, 16777216]"),
    (["--workers", "-1"], "workers: must be in [0, 1024]"),
    (["--port", "99999"], "port: must be in [0, 65535]"),
    (["--tokens-file", "/no/such/tokens"], "tokens_file: cannot read"),
    (["--events-per-user", "0"], "events_per_user: must be in [1, 16777216]"),
    (["--tokens-file", "DIR"], "tokens_file: cannot read"),
    (["--log-level", "verbose"], "log_level: one of DEBUG"),
    (["--log-level", "debug", "--ef", "0"], "ef: must be in [1, 1048576]"),      # a lowercase level is a level
    # values gRPC takes as C ints, or that no worker could load with, fail here, not in every worker
    (["--max-message-bytes", "2147483648"], "max_message_bytes: must be in [1024, 2147483647]"),
    (["--max-concurrent-rpcs", "3000000000"], "max_concurrent_rpcs: must be in [1, 16777216]"),
    (["--max-health-watches", "2147483600"], "max_health_watches: must be in [1, 16777216]"),
    (["--novelty-boost", "1e39"], "novelty_boost: must be in [0, 1000]"),
    (["--candidates", "1000000000000"], "candidates: must be in [1, 100000]"),
    (["--host", "nosuchhost.invalid"], "host: cannot listen on 'nosuchhost.invalid'"),
    (["--events-dir", "CA/events"], "events_dir: cannot create"),     # under a regular file
])
def test_bad_settings_are_refused_in_one_line(shared_root, args, says):
    args = [a.replace("CA", str(shared_root / "CURRENT")) if a.startswith("CA") else str(shared_root)
            if a == "DIR" else a for a in args]      # any readable file; a directory
    p = serve("--bundle", str(shared_root), *args)
    assert p.returncode == 2 and says in reason(p), p.stderr


def test_bad_tokens_file_and_missing_bundle_directory(shared_root, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("admin s3cret\n")
    p = serve("--bundle", str(shared_root), "--tokens-file", str(tokens))
    assert p.returncode == 2 and "expected 'read TOKEN' or 'write TOKEN'" in reason(p)
    p = serve("--bundle", str(tmp_path / "no" / "such" / "root"))
    assert p.returncode == 2 and "is not a directory" in reason(p)
    assert not (tmp_path / "no").exists()       # nothing created on the way


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_files_are_loaded_and_matched_before_a_worker_starts(shared_root, tmp_path):
    """A key of another certificate, or a file that is no certificate, is refused with that reason
    (before: a worker failed to bind the port, and the line named the port)."""
    make_certs(tmp_path)
    d = tmp_path
    p = serve("--bundle", str(shared_root), "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "client.key"))
    assert p.returncode == 2 and "the key does not belong to the certificate" in reason(p)
    p = serve("--bundle", str(shared_root), "--tls-cert", str(shared_root / "CURRENT"), "--tls-key",
              str(d / "server.key"))
    assert p.returncode == 2 and "not a PEM certificate and private key" in reason(p)
    p = serve("--bundle", str(shared_root), "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key"),
              "--client-ca", str(shared_root / "CURRENT"))
    assert p.returncode == 2 and "tls_client_ca" in reason(p) and "not a PEM CA certificate" in reason(p)
    subprocess.run(["openssl", "pkey", "-in", "server.key", "-aes256", "-passout", "pass:x", "-out", "enc.key"],
                   cwd=d, check=True, capture_output=True)
    p = serve("--bundle", str(shared_root), "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "enc.key"))
    assert p.returncode == 2 and "the key is encrypted (gRPC takes no passphrase" in reason(p), reason(p)


def test_bad_environment_and_config_file(shared_root, tmp_path):
    p = serve("--bundle", str(shared_root), env={"RECSERVE_WORKRES": "3"})
    assert p.returncode == 2 and "RECSERVE_WORKRES is not a recserve setting" in reason(p)
    f = tmp_path / "c.toml"
    f.write_text("workers = 1.9\n")
    p = serve("--bundle", str(shared_root), "--config", str(f))
    assert p.returncode == 2 and "workers: expected an integer, got 1.9" in reason(p)
    f.write_text("workers = [\n")
    p = serve("--bundle", str(shared_root), "--config", str(f))
    assert p.returncode == 2 and f"config file {f}: not valid TOML" in reason(p)
    empty = tmp_path / "tokens"
    empty.write_text("# no tokens yet\n")
    p = serve("--bundle", str(shared_root), "--tokens-file", str(empty))
    assert p.returncode == 2 and "no tokens (every call would be refused)" in reason(p)


def test_a_port_in_use_is_an_error_even_for_a_second_server(shared_root, start_server, tmp_path):
    """SO_REUSEPORT lets the workers of one server share the port; a second server must not join them."""
    s = start_server(shared_root, "--workers", "1", "--events-dir", str(tmp_path / "ev"))
    for workers in ("1", "0"):                  # 0: the in-process worker
        p = serve("--bundle", str(shared_root), "--port", str(s.port), "--workers", workers,
                  "--events-dir", str(tmp_path / "ev2"))
        assert p.returncode == 1 and "Address already in use" in reason(p), workers
    assert s.proc.poll() is None


def test_a_metrics_port_in_use_fails_before_any_worker_starts(shared_root, tmp_path):
    """A taken --metrics-port is one line naming it, exit 1, and no worker is left serving the gRPC port."""
    import socket

    from srvutil import free_port

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mport = taken.getsockname()[1]
        p = serve("--bundle", str(shared_root), "--port", str(port), "--workers", "2", "--metrics-port", str(mport),
                  "--events-dir", str(tmp_path / "ev"))
    assert p.returncode == 1
    assert reason(p) == f"recserve serve: cannot serve metrics on 127.0.0.1:{mport}: Address already in use"
    with socket.socket() as s:       # nothing holds the gRPC port
        s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_one_readable_line(shared_root, tmp_path):
    """The gRPC port taken: the reason, exit 1 (before: Python's "[Errno 98]" in front of it)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = serve("--bundle", str(shared_root), "--port", str(port), "--workers", "2",
                  "--events-dir", str(tmp_path / "ev"))
    assert p.returncode == 1
    assert reason(p) == f"recserve serve: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_worker_that_cannot_start_says_why(shared_root, tmp_path):
    events = tmp_path / "events"                    # a directory the store cannot open: not LMDB
    events.mkdir()
    (events / "data.mdb").write_bytes(b"not an lmdb file" * 512)
    p = serve("--bundle", str(shared_root), "--workers", "1", "--events-dir", str(events))
    assert p.returncode == 1
    line = reason(p)
    assert "a worker failed to start" in line, line


def test_a_bundle_that_verifies_but_cannot_load_fails_the_start(shared_root, tmp_path):
    """An index whose header and checksum are right but whose body hnswlib cannot load passes verify (it
    reads the header only): the first worker's refusal fails the start, exit 2 with the reason, instead
    of a server that listens NOT_SERVING."""
    import json

    from recserve.bundle import seal_manifest, sha256_file

    root = tmp_path / "root"
    shutil.copytree(shared_root, root)
    d = root / (root / "CURRENT").read_text().strip()
    raw = (d / "index.hnsw").read_bytes()
    (d / "index.hnsw").write_bytes(raw[:96] + bytes([0xFF]) * (len(raw) - 96))
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["index.hnsw"] = sha256_file(d / "index.hnsw")
    (d / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    p = serve("--bundle", str(root), "--workers", "1")
    assert p.returncode == 2, p.stderr
    line = reason(p)
    assert "bundle refused" in line and "index.hnsw" in line, line
    from recserve.server import create_server          # workers=0: the same refusal, in this process

    with pytest.raises(ValueError, match="bundle refused: .*index.hnsw"):
        create_server("127.0.0.1:0", bundle=str(root), workers=0, reload_interval=0, grace=1)


def test_an_ipv6_host_is_served(shared_root, facts, start_server):
    """``--host ::1`` (bare or in brackets) listens on IPv6 loopback; skipped where the machine has none."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    import grpc

    from recserve.v1 import recommender_pb2 as pb
    from recserve.v1 import recommender_pb2_grpc as pbg

    for host in ("::1", "[::1]"):
        s = start_server(shared_root, "--workers", "1", "--host", host)
        s.addr = f"[::1]:{s.port}"
        r = pbg.RecommenderStub(s.channel()).Recommend(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=10)
        assert len(r.items) == 3
        with pytest.raises(grpc.RpcError):      # and not on IPv4 loopback
            with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
                pbg.RecommenderStub(ch).Recommend(pb.RecommendRequest(k=1), timeout=2)
        s.terminate()


def test_an_empty_host_is_the_default():
    from recserve.config import ServeConfig, validate

    assert validate(ServeConfig(host="")).host == ""            # listened on as 127.0.0.1 by create_server


def test_a_map_smaller_than_the_event_store_is_refused_at_start(shared_root, tmp_path):
    """LMDB stretches a map below the pages in use to exactly those pages: every write would then fail as
    "the event store is full". A store of about 3 MiB and --events-map-mb 2: refused, naming both."""
    from recserve.events import Event, EventStore

    store = EventStore(tmp_path / "events", map_size=64 << 20)
    for b in range(12):
        store.record([Event(f"u{b}-{k}", "i1", 1, 1.7e9 + k) for k in range(1000)], lambda u: False)
    used = (tmp_path / "events" / "data.mdb").stat().st_size
    store.env.close()
    assert used > 2 << 20, used
    p = serve("--bundle", str(shared_root), "--events-dir", str(tmp_path / "events"), "--events-map-mb", "2")
    assert p.returncode == 2 and (f"events_map_mb: 2 MiB cannot hold the event store in {tmp_path / 'events'}, "
                                  f"which already takes {used / (1 << 20):.0f} MiB") in reason(p), p.stderr


def test_reasons_are_one_line_without_the_errno():
    from recserve.cliparser import reason as _reason

    assert _reason(OSError(98, "cannot listen on 127.0.0.1:1: Address already in use")) == \
        "cannot listen on 127.0.0.1:1: Address already in use"
    assert _reason(OSError(18, "Invalid cross-device link", "/a", None, "/b")) == "/a -> /b: Invalid cross-device link"
    assert _reason(OSError(2, "No such file or directory", b"/x")) == "/x: No such file or directory"
    assert _reason(OSError(28, "")) == "No space left on device"
    assert _reason(RuntimeError("worker 1 exited\ntraceback...")) == "worker 1 exited"
    assert _reason(RuntimeError()) == "RuntimeError"
