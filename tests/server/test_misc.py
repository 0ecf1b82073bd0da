"""Generated stubs are current, config precedence, reflection, metrics, TLS and mTLS."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import urllib.request

import grpc
import pytest

from recserve import config as C
from recserve import protogen
from recserve.v1 import recommender_pb2 as pb
from recserve.v1 import recommender_pb2_grpc as pbg
from srvutil import free_port, make_certs, metric, wait_for


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
    with pytest.raises(ValueError, match="RECSERVE_WORKERS: workers: cannot read 'many' as an integer"):
        C.load({}, env={"RECSERVE_WORKERS": "many"})
    assert C.load({}, env={"RECSERVE_LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize("toml, says", [
    ("workers = 1.9", "workers: expected an integer, got 1.9"),
    ("port = true", "port: expected an integer, got True"),
    ("mmr_lambda = true", "mmr_lambda: expected a number, got True"),
    ('tls_cert = false', "tls_cert: expected a string, got False"),
    ('grace = "10"', "grace: expected a number, got '10'"),
    ("port = 1\n[serve]\nworkers = 1", "not both (port outside the table)"),
    ("serve = 3", "serve must be a [serve] table, got 3"),
    ("wokers = 2", "unknown key 'wokers' (did you mean 'workers'?)"),
    ("zzz = 2", "unknown key 'zzz'"),
])
def test_config_file_values_must_have_their_type(tmp_path, toml, says):
    """TOML values are typed: a float where an integer goes, or a boolean where a path goes, is refused
    (before: 1.9 workers ran 1, ``tls_cert = false`` became the path "False"); so are keys beside [serve]."""
    f = tmp_path / "c.toml"
    f.write_text(toml + "\n")
    with pytest.raises(ValueError, match="config file .*" + re.escape(says)):
        C.load({}, env={}, file=f)
    f.write_text("mmr_lambda = 1\nworkers = 3\n")                 # an integer is a number
    assert (C.load({}, env={}, file=f).mmr_lambda, C.load({}, env={}, file=f).workers) == (1.0, 3)


def test_unknown_recserve_variables_are_refused():
    with pytest.raises(ValueError, match=r"RECSERVE_WORKRES is not a recserve setting \(did you mean RECSERVE_WORKERS"):
        C.load({}, env={"RECSERVE_WORKRES": "3"})
    cfg = C.load({}, env={"RECSERVE_ADDR": "h:1", "RECSERVE_TOKEN": "t", "RECSERVE_WORKERS": "3", "OTHER": "x"})
    assert cfg.workers == 3


def test_tokens_file_lines(tmp_path):
    from recserve.service import load_tokens

    def tokens(text: bytes | str):
        path = tmp_path / "t.tokens"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return load_tokens(str(path))

    assert tokens("# readers\n  read r1\nwrite abc#def\n\n   # end\n") == {"r1": "read", "abc#def": "write"}
    with pytest.raises(ValueError, match="no tokens"):
        tokens("# nothing here\n\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        tokens(b"read \xff\xfe\n")
    with pytest.raises(ValueError, match=":2: this token is listed as both"):
        tokens("read t1\nwrite t1\n")
    with pytest.raises(ValueError, match=":1: expected"):
        tokens("write abc # a comment after a token\n")
    for bad in ("tökén", "a\x01b"):             # no gRPC header can carry it: no client could send it
        with pytest.raises(ValueError, match=":2: a token is printable ASCII"):
            tokens(f"read ok\nread {bad}\n")


def test_reflection_lists_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(server.channel())
    services = set(db.get_services())
    assert {"recserve.v1.Recommender", "grpc.health.v1.Health"} <= services


def test_reflection_finds_a_methods_file_as_grpcurl_describe_asks(server):
    """``grpcurl describe recserve.v1.Recommender.Recommend`` asks for the file containing the method's
    name: protobuf's upb pool finds no method by name, and reflection said "not found"."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel())

    def ask(symbol: str):
        (resp,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=symbol)]), timeout=10)
        return resp

    for symbol in ("recserve.v1.Recommender.Recommend", "grpc.health.v1.Health.Check",
                   "recserve.v1.Recommender", "recserve.v1.RecommendRequest"):
        assert ask(symbol).HasField("file_descriptor_response"), symbol
    for symbol in ("recserve.v1.Recommender.Nope", "recserve.v1.Nothing.Recommend"):
        assert ask(symbol).error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], symbol


def test_reflection_answers_under_its_v1_name_too(server):
    """grpcio-reflection registers only ``grpc.reflection.v1alpha``: a client asking ``v1`` got UNIMPLEMENTED."""
    from grpc_reflection.v1alpha import reflection_pb2

    call = server.channel().stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                          request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                          response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    (resp,) = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    assert {"recserve.v1.Recommender", "grpc.health.v1.Health"} <= {s.name for s in resp.list_services_response.service}


def test_health_list_gives_every_services_status(server):
    """The standard proto's ``List`` was UNIMPLEMENTED (grpcio's servicer leaves it so), with a traceback
    in the worker's log."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    resp = health_pb2_grpc.HealthStub(server.channel()).List(health_pb2.HealthListRequest(), timeout=10)
    assert {k: v.status for k, v in resp.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING, "recserve.v1.Recommender": health_pb2.HealthCheckResponse.SERVING}


def test_streams_outside_the_recommender_are_bounded_too(shared_root, start_server, tmp_path):
    """Reflection streams are neither Recommender calls nor health Watches: gRPC's own bound (the bounds
    on reads and on writes, the one on Watches, plus an allowance of 64) refuses the stream past it, and
    one closed frees a place."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--max-concurrent-rpcs", "1",
                     "--max-health-watches", "1", "--events-dir", str(tmp_path / "ev"))
    ch = grpc.insecure_channel(s.addr)
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    held = []

    def open_stream():
        release = threading.Event()

        def requests():
            yield ask
            release.wait(30)
        call = stub.ServerReflectionInfo(requests(), timeout=30)
        next(call)                                     # answered: the stream is open on the server
        held.append((call, release))

    try:
        for _ in range(1 + 1 + 1 + 64):
            open_stream()
        with pytest.raises(grpc.RpcError) as exc:
            open_stream()
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        call, release = held.pop(0)
        release.set()
        call.cancel()
        assert wait_for(lambda: _opens(open_stream), 10)
    finally:
        for call, release in held:
            release.set()
            call.cancel()
        ch.close()


def _opens(open_stream) -> bool:
    try:
        open_stream()
    except grpc.RpcError:
        return False
    return True


def test_metrics_endpoint_aggregates_workers(shared_root, facts, start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("write w-secret\n")
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0",
                     "--tokens-file", str(tokens), "--events-dir", str(tmp_path / "ev"), metrics=True)
    mport = s.metrics_port
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
    rid = dict(e.value.trailing_metadata())["recserve-request-id"]          # a request id like any failure
    assert e.value.details() == f"missing or unknown bearer token (request {rid})"
    for two in ((auth[0], ("authorization", "Bearer wrong")), (("authorization", "Bearer wrong"), auth[0])):
        with pytest.raises(grpc.RpcError) as e:             # neither order gets in: no guess at which counts
            s.stub().Recommend(pb.RecommendRequest(k=5), timeout=10, metadata=two)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert e.value.details().startswith("more than one authorization header (request ")
    with grpc.insecure_channel(s.addr) as ch:      # made-up method names: one "other" series, not one each
        for name in ("Made1", "Made2", "Recommend2"):
            call = ch.unary_unary(f"/recserve.v1.Recommender/{name}", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as e:
                call(b"", timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    r, call = s.stub().RecordEvents.with_call(pb.RecordEventsRequest(events=[
        pb.Event(user_id="m-user", item_id=facts["items"][0], type=pb.EVENT_TYPE_CLICK)] * 3),
        timeout=10, metadata=auth)
    assert dict(call.trailing_metadata())["recserve-request-id"] == r.request_id not in ids
    dated = pb.RecordEventsRequest(events=[            # dated 2001: before the bundle's data end
        pb.Event(user_id=facts["user"], item_id=facts["items"][1], type=pb.EVENT_TYPE_VIEW, timestamp=1e9),
        # a user the bundle does not know: none of her events are in it, whatever their date
        pb.Event(user_id="m-user", item_id=facts["items"][1], type=pb.EVENT_TYPE_VIEW, timestamp=1e9)])
    for _ in range(2):                  # the second is a retry: both events repeats, kept and counted once
        s.stub().RecordEvents(dated, timeout=10, metadata=auth)
    r, call = s.stub().UpdateItems.with_call(pb.UpdateItemsRequest(items=[
        pb.ItemUpdate(item_id=facts["items"][0], in_stock=True)]), timeout=10, metadata=auth)
    assert dict(call.trailing_metadata())["recserve-request-id"] == r.request_id not in ids
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    assert metric(text, "recserve_requests_total", method="other", code="UNAUTHENTICATED") == 3
    assert "Made1" not in text and "Recommend2" not in text
    assert metric(text, "recserve_requests_total", method="Recommend", code="OK") == 6.0
    assert metric(text, "recserve_requests_total", method="Recommend", code="INVALID_ARGUMENT") == 1.0
    assert metric(text, "recserve_requests_total", method="Recommend", code="UNAUTHENTICATED") == 3.0
    # latency of the calls that ran (6 OK, 1 INVALID_ARGUMENT), not of the one refused before it ran
    assert metric(text, "recserve_request_seconds_count", method="Recommend") == 7.0
    for stage in ("validate", "candidates", "ranking", "rerank"):
        assert metric(text, "recserve_stage_seconds_count", stage=stage) == 6.0, stage
    assert metric(text, "recserve_candidates_count", source="ann") == 6.0
    assert metric(text, "recserve_candidates_sum") > 0
    assert metric(text, "recserve_events_written_total") == 5.0
    assert metric(text, "recserve_events_before_data_end_total") == 1.0
    used, mapped = metric(text, "recserve_event_store_used_bytes"), metric(text, "recserve_event_store_map_bytes")
    assert mapped == 65536 << 20 and 4096 * 4 <= used < 1 << 20, (used, mapped)


def test_events_counted_are_the_events_kept_when_deadlines_end_writes(shared_root, facts, start_server, tmp_path):
    """Writes whose calls end (deadline) while they run either write nothing or are waited for and counted:
    the events metric and the store agree, whatever each call's outcome (a write refused because earlier
    abandoned ones still run included)."""
    import time

    from recserve.events import EventStore

    ev = tmp_path / "ev"
    s = start_server(shared_root, "--workers", "2", "--reload-interval", "0", "--events-dir", str(ev), metrics=True)
    mport = s.metrics_port
    outcomes = []
    for b in range(60):
        events = [pb.Event(user_id=f"dl-{b}-{k % 50}", item_id=facts["items"][k % 40], type=pb.EVENT_TYPE_VIEW,
                           timestamp=1e9 + k) for k in range(500)]
        try:
            s.stub().RecordEvents(pb.RecordEventsRequest(events=events), timeout=0.002 + 0.001 * (b % 8))
            outcomes.append("OK")
        except grpc.RpcError as e:
            # a worker refuses a write while 4 (--threads) of its abandoned ones still run: before
            # anything is written or counted (test_stuck_writes.py), about one run in 30 here
            stuck = e.code() == grpc.StatusCode.UNAVAILABLE and "earlier writes of this worker" in e.details()
            outcomes.append("STUCK" if stuck else e.code().name)
    assert set(outcomes) <= {"OK", "DEADLINE_EXCEEDED", "STUCK"}, outcomes
    time.sleep(1.0)                 # writes still running when their calls ended finish
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    store = EventStore(ev, map_size=0)
    try:
        kept = store.stats()["events"]
    finally:
        store.close()
    assert metric(text, "recserve_events_written_total") == kept, (outcomes, kept)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_and_mtls(shared_root, facts, tmp_path, start_server):
    d = tmp_path
    make_certs(d)
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
    r = subprocess.run([sys.executable, "-m", "recserve.cli", "health", "--addr", f"localhost:{s.port}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and "if the server uses TLS, pass its CA certificate with --ca" in r.stderr, r.stderr
    assert s.terminate() == 0                       # refused handshakes added no plain-text line to the log
    lines = [ln for ln in s.proc.stderr.read().splitlines() if ln.strip()]
    assert all(ln.startswith("{") for ln in lines), lines


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
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--max-concurrent-rpcs", "2",
                     "--threads", "4", env={"RECSERVE_DEBUG_DELAY_MS": "1500"}, metrics=True)
    mport = s.metrics_port
    codes = _burst(s, facts["user"], 6)
    assert codes.count("RESOURCE_EXHAUSTED") >= 1, codes
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    for code in ("OK", "RESOURCE_EXHAUSTED"):
        assert metric(text, "recserve_requests_total", method="Recommend", code=code) == codes.count(code), code


def test_calls_the_client_gives_up_on_are_counted_by_why(shared_root, facts, start_server):
    """A call whose deadline passes is stopped in the worker and counted as DEADLINE_EXCEEDED; one the
    client cancels, as CANCELLED."""
    # one call in flight at most: a second call refused with RESOURCE_EXHAUSTED shows the first is in its handler
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--max-concurrent-rpcs", "1",
                     env={"RECSERVE_DEBUG_DELAY_MS": "5000"}, metrics=True)
    mport = s.metrics_port
    stub = s.stub()       # connected first: on a busy machine the connection alone could outlast 0.3 s
    probe = pb.SimilarItemsRequest(item_id=facts["items"][0], k=3)
    stub.SimilarItems(probe, timeout=30)

    def counted():
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        return {c: metric(text, "recserve_requests_total", method="Recommend", code=c)
                for c in ("DEADLINE_EXCEEDED", "CANCELLED", "OK")}

    with pytest.raises(grpc.RpcError) as e:
        stub.Recommend(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the worker has let go of it before the next call (which would be refused otherwise)
    assert wait_for(lambda: counted() == {"DEADLINE_EXCEEDED": 1, "CANCELLED": 0, "OK": 0}, timeout=10), counted()

    call = stub.Recommend.future(pb.RecommendRequest(user_id=facts["user"], k=3), timeout=30)

    def in_handler() -> bool:
        assert not call.done(), call.exception()
        try:
            stub.SimilarItems(probe, timeout=10)
        except grpc.RpcError as err:
            return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False

    assert wait_for(in_handler, timeout=10, interval=0.02)
    call.cancel()
    assert wait_for(lambda: counted() == {"DEADLINE_EXCEEDED": 1, "CANCELLED": 1, "OK": 0}, timeout=10), counted()


def test_a_call_cut_off_at_its_deadline_counts_as_out_of_time():
    """The server's deadline starts when the call reaches it, after the client's: the client's cancel at its
    own deadline can find a little time left here, and is counted as the deadline passing all the same."""
    from recserve.service import DEADLINE_SLACK_S, deadline_passed

    assert deadline_passed(0.0) and deadline_passed(0.008) and deadline_passed(DEADLINE_SLACK_S)
    assert not deadline_passed(None) and not deadline_passed(1.0) and not deadline_passed(1e10)


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
    top = [line.split()[1] for line in lines[3:5]]
    rc, out, err = run("recommend", facts["user"], "--k", "4", "--exclude", *top, "--session", ",".join(top))
    assert rc == 0 and not set(top) & {line.split()[1] for line in out.splitlines()[3:7]}, out
    assert f"note: --session '{','.join(top)}' is one id; give several as --session A B" in err, err
    rc, out, _ = run("similar", facts["items"][2], "--k", "3")
    assert rc == 0 and len(out.splitlines()) == 6, out
    rc, out, _ = run("events", "record", "cli-user", facts["items"][2], "--type", "purchase")
    assert rc == 0 and out.split()[-5:-1] == ["1", "0", "0", "1"] and len(out.split()[-1]) > 8, out
    rc, out, _ = run("items", "update", facts["items"][2], "--price", "12.5")
    assert rc == 0 and out.split()[-2] == "1", out
    rc, out, _ = run("health")
    assert rc == 0 and out.strip() == "SERVING"
    rc, _, err = run("similar", "no-such-item")
    assert rc == 1 and "NOT_FOUND" in err
    # the request's context: a device and a time (sent: a time past the year 9999 is the server's refusal)
    rc, out, _ = run("recommend", "", "--k", "4", "--device", "tv", "--at", "1700000000")
    assert rc == 0 and "(cold start)" in out.splitlines()[0] and len(out.splitlines()) == 8, out
    rc, _, err = run("recommend", "", "--at", "1e13")
    assert rc == 1 and "INVALID_ARGUMENT" in err and "context.timestamp" in err, err
    rc, _, err = run("recommend", "", "--device", "phone")
    assert rc == 2 and "--device: invalid choice: 'phone'" in err.strip().splitlines()[-1], err
    # a country: the one the bundle has a trending list of is sent and answers; a control character is the
    # server's INVALID_ARGUMENT naming context.country
    rc, out, _ = run("recommend", "", "--k", "4", "--country", "US")
    assert rc == 0 and "(cold start, trending in US)" in out.splitlines()[0] and len(out.splitlines()) == 8, out
    rc, _, err = run("recommend", "", "--country", "U\x01S")
    assert rc == 1 and "INVALID_ARGUMENT" in err and "context.country" in err, err


def test_cli_client_interrupted_while_it_waits_exits_130_without_a_traceback():
    """Ctrl-C while a client command waits on a server that never answers (a socket that accepts and is
    silent): one line and exit 130, as `recserve store` and `recserve-train` do."""
    import os
    import signal
    import socket
    import sys

    from srvutil import ROOT

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        for cmd in (["recommend", "u1"], ["similar", "i1"], ["health"]):
            p = subprocess.Popen([sys.executable, "-m", "recserve.cli", *cmd, "--addr", addr, "--timeout", "60"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                conn, _ = silent.accept()           # the client has connected and waits for the answer
                with conn:
                    p.send_signal(signal.SIGINT)
                    out, err = p.communicate(timeout=60)
            finally:
                p.kill()
            assert p.returncode == 130 and "Traceback" not in err and "interrupted" in err, (cmd, err)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_cli_client_refuses_tls_files_of_the_wrong_kind_and_unsendable_tokens(tmp_path):
    """PEM files that are not what the flag takes, and a token no gRPC header can carry, are a bad argument
    in one line (before: gRPC core's log lines, then UNAVAILABLE or INTERNAL, exit 1)."""
    import os
    import sys

    from srvutil import ROOT

    d = tmp_path
    make_certs(d)
    subprocess.run(["openssl", "pkey", "-in", "client.key", "-aes256", "-passout", "pass:x", "-out", "enc.key"],
                   cwd=d, check=True, capture_output=True)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "recserve.cli", "recommend", "u1", "--addr",
                               f"localhost:{free_port()}", "--timeout", "5", *args], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)

    for args, says in (
            (("--ca", "ca.pem", "--cert", "client.pem", "--key", "server.key"), "the key does not belong to the "
             "certificate"),
            (("--ca", "ca.pem", "--cert", "client.pem", "--key", "enc.key"), "the key is encrypted"),
            (("--ca", "server.key"), "not a PEM CA certificate"),
            (("--token", "r1\n"), "a gRPC header cannot carry '\\n'"),
            (("--token", "tökén"), "a gRPC header cannot carry 'ö'")):
        r = run(*[str(d / a) if a.endswith((".pem", ".key")) else a for a in args])
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], (args, r.stderr)


def test_cli_client_refuses_bad_addresses_and_files_in_one_line(tmp_path):
    import os
    import sys

    from srvutil import ROOT

    def run(*args):
        return subprocess.run([sys.executable, "-m", "recserve.cli", *args], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)

    r = run("recommend", "u1", "--addr", "127.0.0.1:116587")       # gRPC would wrap it to port 51051
    assert r.returncode == 2 and "expected HOST:PORT with a port in 1..65535" in r.stderr, r.stderr
    r = run("health", "--timeout", "0")
    assert r.returncode == 2 and "--timeout" in r.stderr
    for cmd in ("recommend", "similar"):                             # an int32 field cannot carry it
        r = run(cmd, "x", "--k", "99999999999")
        assert r.returncode == 2 and "argument --k: expected a number below 2^31" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = run("recommend", "u1", "--addr", f"127.0.0.1:{free_port()}", "--ca", str(tmp_path / "nosuch.crt"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --ca {tmp_path / 'nosuch.crt'}: No such file or directory"], r.stderr
    (tmp_path / "ca.txt").write_text("not a certificate\n")
    r = run("recommend", "u1", "--addr", f"127.0.0.1:{free_port()}", "--ca", str(tmp_path / "ca.txt"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --ca {tmp_path / 'ca.txt'}: not a PEM file"], r.stderr
    r = run("health", "--addr", f"127.0.0.1:{free_port()}", "--cert", str(tmp_path / "ca.txt"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --cert and --key go together (the client certificate for mutual TLS)"], r.stderr
    r = run("health", "--addr", "::1:50051")                          # gRPC would say "Misformatted domain name"
    assert r.returncode == 2 and "an IPv6 address goes in brackets: [::1]:50051" in r.stderr, r.stderr
    r = run("health", "--addr", "http://127.0.0.1:50051/")            # was called an IPv6 address without brackets
    assert r.returncode == 2 and "expected HOST:PORT, not a URL: '127.0.0.1:50051'" in r.stderr, r.stderr
    for cmd in ("recommend", "similar"):                             # 0 would be the server's default of 20
        r = run(cmd, "x", "--k", "0")
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [          # one line, not the usage block
            f"recserve {cmd}: error: argument --k: must be >= 1, got 0 (--help for usage)"], r.stderr
    # numbers are decimal in ASCII digits, as serve's settings (float() and int() took 1_0 and ٣ as 10 and 3)
    for args, says in ((("recommend", "u1", "--k", "1_0"), "argument --k: expected a whole number, got '1_0'"),
                       (("similar", "i1", "--k", "٣"), "argument --k: expected a whole number, got '٣'"),
                       (("items", "update", "i1", "--price", "1_0"), "argument --price: expected a decimal number"),
                       (("recommend", "u1", "--min-price", "٣"), "argument --min-price: expected a decimal number"),
                       (("recommend", "u1", "--at", "1_700_000_000"), "argument --at: expected a decimal number"),
                       (("health", "--timeout", "1_0"), "argument --timeout: expected a number of seconds")):
        r = run(*args, "--addr", f"127.0.0.1:{free_port()}")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], (args, r.stderr)
    for args in (["recommend", b"\xff\xfeuser"], ["events", "record", "u1", b"it\xe9m"],
                 ["recommend", "u1", "--session", b"\xc3"], ["recommend", "u1", "--country", b"s\xff"]):
        r = run(*args, "--addr", f"127.0.0.1:{free_port()}")
        assert r.returncode == 2 and "is not valid UTF-8" in r.stderr and "Traceback" not in r.stderr, r.stderr


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


def test_a_response_past_the_message_limit_is_refused_and_counted(shared_root, facts, start_server, tmp_path):
    s = start_server(shared_root, "--workers", "1", "--reload-interval", "0", "--max-message-bytes", "1024",
                     "--events-dir", str(tmp_path / "ev"), metrics=True)
    mport = s.metrics_port
    small = s.stub().Recommend(pb.RecommendRequest(user_id=facts["user"], k=2), timeout=10)
    assert len(small.items) == 2
    with pytest.raises(grpc.RpcError) as e:
        s.stub().Recommend(pb.RecommendRequest(user_id=facts["user"], k=60, explain=True), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the server's message size limit (1024 bytes" in e.value.details(), e.value.details()
    cold = s.stub().Recommend(pb.RecommendRequest(k=2), timeout=10)        # anonymous: a cold answer
    assert cold.cold_start and len(cold.items) == 2
    with pytest.raises(grpc.RpcError) as e:
        s.stub().Recommend(pb.RecommendRequest(k=60), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    def counted() -> bool:      # written by the worker just after the status went out
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
        return (metric(text, "recserve_requests_total", method="Recommend", code="RESOURCE_EXHAUSTED") == 2
                and metric(text, "recserve_requests_total", method="Recommend", code="OK") == 2)

    assert wait_for(counted, timeout=10)
    # the per-answer series count the two answers sent, not the two refused
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    assert metric(text, "recserve_cold_answers_total") == 1
    assert metric(text, "recserve_stage_seconds_count", stage="rerank") == 2
