"""Generated stubs are current, config precedence, reflection, metrics, TLS and mTLS."""
from __future__ import annotations

import shutil
import subprocess
import urllib.request

import grpc
import pytest

from recserve import config as C
from recserve import protogen
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pbg
from srvutil import free_port, metric, wait_for


def test_checked_in_stubs_are_current(tmp_path, monkeypatch):
    assert protogen.stale() == []
    # and the check can fail: a copy of the tree with an edited stub is reported
    shutil.copytree(protogen.ROOT / "proto", tmp_path / "proto")
    shutil.copytree(protogen.ROOT / "recserve" / "v1", tmp_path / "recserve" / "v1")
    p = tmp_path / "recserve" / "v1" / "recommender_pb2_grpc.py"
    p.write_text(p.read_text() + "\n# edited\n")
    monkeypatch.setattr(protogen, "ROOT", tmp_path)
    assert protogen.stale() == ["recommender_pb2_grpc.py"]


def test_config_precedence(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[serve]\nport = 1\nworkers = 1\nthreads = 1\nmmr_lambda = 0.1\n')
    env = {"RECSERVE_PORT": "2", "RECSERVE_WORKERS": "2"}
    cfg = C.load({"port": 3}, env=env, file=f)
    assert (cfg.port, cfg.workers, cfg.threads, cfg.grace) == (3, 2, 1, C.ServeConfig.grace)
    assert cfg.pipeline_overrides() == {"mmr_lambda": 0.1}
    f.write_text('[serve]\nprot = 1\n')
    with pytest.raises(ValueError, match="prot"):
        C.load({}, env={}, file=f)
    with pytest.raises(ValueError, match="workers"):
        C.load({}, env={"RECSERVE_WORKERS": "many"})


def test_reflection_lists_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(server.channel())
    services = set(db.get_services())
    assert {"recserve.v1.Recommender", "grpc.health.v1.Health"} <= services


def test_metrics_endpoint_aggregates_workers(shared_root, facts, start_server, tmp_path):
    mport = free_port()
    tokens = tmp_path / "tokens"
    tokens.write_text("write w-secret\n")
    s = start_server(shared_root, "--workers", "2", "--metrics-port", str(mport), "--reload-interval", "0",
                     "--tokens-file", str(tokens), "--events-dir", str(tmp_path / "ev"))
    auth = (("authorization", "Bearer w-secret"),)
    ids = set()
    for _ in range(6):
        r, call = s.stub().Recommend.with_call(pb.RecommendRequest(user_id=facts["user"], k=5), timeout=10,
                                               metadata=auth)
        assert dict(call.trailing_metadata())["recserve-request-id"] == r.request_id
        ids.add(r.request_id)
    assert len(ids) == 6
    with pytest.raises(grpc.RpcError) as e:
        s.stub().Recommend(pb.RecommendRequest(k=900), timeout=10, metadata=auth)
    rid = dict(e.value.trailing_metadata())["recserve-request-id"]
    assert e.value.details().endswith(f"(request {rid})")
    with pytest.raises(grpc.RpcError) as e:
        s.stub().Recommend(pb.RecommendRequest(k=5), timeout=10)              # no token
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    r, call = s.stub().RecordEvents.with_call(pb.RecordEventsRequest(events=[
        pb.Event(user_id="m-user", item_id=facts["items"][0], type=pb.EVENT_TYPE_CLICK)] * 3),
        timeout=10, metadata=auth)
    assert dict(call.trailing_metadata())["recserve-request-id"] == r.request_id not in ids
    r, call = s.stub().UpdateItems.with_call(pb.UpdateItemsRequest(items=[
        pb.ItemUpdate(item_id=facts["items"][0], in_stock=True)]), timeout=10, metadata=auth)
    assert dict(call.trailing_metadata())["recserve-request-id"] == r.request_id not in ids
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    assert metric(text, "recserve_requests_total", method="Recommend", code="OK") == 6.0
    assert metric(text, "recserve_requests_total", method="Recommend", code="INVALID_ARGUMENT") == 1.0
    assert metric(text, "recserve_requests_total", method="Recommend", code="UNAUTHENTICATED") == 1.0
    assert metric(text, "recserve_request_seconds_count", method="Recommend") >= 6.0
    for stage in ("validate", "candidates", "ranking", "rerank"):
        assert metric(text, "recserve_stage_seconds_count", stage=stage) == 6.0, stage
    assert metric(text, "recserve_candidates_count", source="ann") == 6.0
    assert metric(text, "recserve_candidates_sum") > 0
    assert metric(text, "recserve_events_written_total") == 3.0


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_and_mtls(shared_root, facts, tmp_path, start_server):
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=test-ca", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", "san.cnf", cwd=d)
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--tls-cert", str(d / "server.pem"),
                     "--tls-key", str(d / "server.key"), "--client-ca", str(d / "ca.pem"))
    ca = (d / "ca.pem").read_bytes()
    req = pb.RecommendRequest(user_id=facts["user"], k=3)
    opts = [("grpc.use_local_subchannel_pool", 1)]
    # mutual TLS with a client certificate signed by the CA: accepted
    creds = grpc.ssl_channel_credentials(ca, (d / "client.key").read_bytes(), (d / "client.pem").read_bytes())
    with grpc.secure_channel(s.addr, creds, options=opts) as ch:
        assert len(pbg.RecommenderStub(ch).Recommend(req, timeout=10).items) == 3
    # TLS without a client certificate: refused
    with grpc.secure_channel(s.addr, grpc.ssl_channel_credentials(ca), options=opts) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pbg.RecommenderStub(ch).Recommend(req, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # plaintext: refused
    with grpc.insecure_channel(s.addr, options=opts) as ch:
        with pytest.raises(grpc.RpcError):
            pbg.RecommenderStub(ch).Recommend(req, timeout=5)
    # the CLI client with its certificate: accepted; without: refused
    import os
    import sys

    from srvutil import ROOT

    def cli(*extra):
        return subprocess.run([sys.executable, "-m", "recserve.cli", "recommend", facts["user"], "--k", "3",
                               "--addr", f"localhost:{s.port}", "--ca", str(d / "ca.pem"), "--timeout", "5",
                               *extra], capture_output=True, text=True, cwd=ROOT, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    r = cli("--cert", str(d / "client.pem"), "--key", str(d / "client.key"))
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) >= 3 + 2, r.stdout + r.stderr
    assert cli().returncode != 0


def _burst(s, user: str, n: int) -> list[str]:
    """The status codes of ``n`` Recommends sent at once, each on its own connection."""
    import threading

    codes = []

    def call():
        try:
            s.stub().Recommend(pb.RecommendRequest(user_id=user, k=3), timeout=10)
            codes.append("OK")
        except grpc.RpcError as e:
            codes.append(e.code().name)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return codes


def test_maximum_concurrent_rpcs(shared_root, facts, start_server):
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--max-concurrent-rpcs", "2",
                     "--threads", "4", env={"RECSERVE_DEBUG_DELAY_MS": "1500"})
    codes = _burst(s, facts["user"], 5)
    assert codes.count("OK") >= 2 and codes.count("RESOURCE_EXHAUSTED") >= 1, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}


def test_shed_calls_are_counted_in_the_metrics(shared_root, facts, start_server):
    """Calls refused at the bound on calls in flight are counted in the metrics like any other."""
    mport = free_port()
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--max-concurrent-rpcs", "2",
                     "--threads", "4", "--metrics-port", str(mport), env={"RECSERVE_DEBUG_DELAY_MS": "1500"})
    codes = _burst(s, facts["user"], 6)
    assert codes.count("RESOURCE_EXHAUSTED") >= 1, codes
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    for code in ("OK", "RESOURCE_EXHAUSTED"):
        assert metric(text, "recserve_requests_total", method="Recommend", code=code) == codes.count(code), code


def test_calls_the_client_gives_up_on_are_counted_by_why(shared_root, facts, start_server):
    """A call whose deadline passes is stopped in the worker and counted as DEADLINE_EXCEEDED; one the
    client cancels, as CANCELLED."""
    import time

    mport = free_port()
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--metrics-port", str(mport),
                     env={"RECSERVE_DEBUG_DELAY_MS": "1500"})
    stub = s.stub()       # connected first: on a busy machine the connection alone could outlast 0.3 s
    stub.SimilarItems(pb.SimilarItemsRequest(item_id=facts["items"][0], k=3), timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call = s.stub().Recommend.future(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=20)
    time.sleep(0.3)
    call.cancel()

    def counted():
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        got = {c: metric(text, "recserve_requests_total", method="Recommend", code=c)
               for c in ("DEADLINE_EXCEEDED", "CANCELLED", "OK")}
        return got == {"DEADLINE_EXCEEDED": 1, "CANCELLED": 1, "OK": 0}

    assert wait_for(counted, timeout=10)


def test_cli_client_commands_print_tables(server, facts):
    import os
    import sys

    from srvutil import ROOT

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "recserve.cli", *args, "--addr", server.addr],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           timeout=60)
        return r.returncode, r.stdout, r.stderr

    rc, out, _ = run("recommend", facts["user"], "--k", "4", "--explain")
    lines = out.splitlines()
    assert rc == 0 and lines[1].split()[:4] == ["#", "item", "score", "sources"] and len(lines) == 8, out
    rc, out, _ = run("similar", facts["items"][2], "--k", "3")
    assert rc == 0 and len(out.splitlines()) == 6, out
    rc, out, _ = run("events", "record", "cli-user", facts["items"][2], "--type", "purchase")
    assert rc == 0 and out.split()[-3:-1] == ["1", "1"] and len(out.split()[-1]) > 8, out
    rc, out, _ = run("items", "update", facts["items"][2], "--price", "12.5")
    assert rc == 0 and out.split()[-2] == "1", out
    rc, out, _ = run("health")
    assert rc == 0 and out.strip() == "SERVING"
    rc, _, err = run("similar", "no-such-item")
    assert rc == 1 and "NOT_FOUND" in err


def test_in_process_worker(shared_root, facts):
    """workers=0: the same Worker inside this process (no fork), with create_server's (server, port)."""
    from recserve.server import Worker, create_server

    w, port = create_server("127.0.0.1:0", bundle=str(shared_root), workers=0, reload_interval=0, grace=1)
    try:
        assert isinstance(w, Worker) and port > 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            r = pbg.RecommenderStub(ch).Recommend(pb.RecommendRequest(user_id=facts["user"], k=7), timeout=10)
        assert len(r.items) == 7 and r.bundle_version == facts["version"]
    finally:
        w.stop(1)
