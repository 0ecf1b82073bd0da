"""Smoke tests: each bench script runs end to end on tiny inputs (not timed; figures are not checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args, timeout=300, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    p = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def test_load_closed_open_and_ceiling(demo_bundle, tmp_path):
    out = tmp_path / "load.json"
    text = _run(["bench/load.py", "--bundle", str(demo_bundle), "--workers", "1", "--clients", "1",
                 "--concurrency", "2", "--rate", "20", "--duration", "1.5", "--warmup", "0.2",
                 "--pool", "200", "--json", str(out)], env={"RECSERVE_SHARE_WORK": "0"})
    assert "ceiling" in text and "ratio" in text
    rec = _record(out)
    assert rec["server_env"]["RECSERVE_SHARE_WORK"] == "0"          # the servers' settings are recorded
    assert rec["server_workers"] == rec["ceiling_workers"] == 1 and rec["config"]["warmup"] == 0.2
    assert rec["workload"]["filter_applies_to"] == ["Recommend", "SimilarItems"]     # --filter-share's methods
    real = rec["phases"]["closed loop, concurrency 2 [recserve]"]["methods"]["ALL"]
    ceil = rec["phases"]["closed loop, concurrency 2 [ceiling]"]["methods"]["ALL"]
    assert real["ok"] > 0 and ceil["ok"] > 0
    for name in ("closed loop, concurrency 2 [recserve]", "closed loop, concurrency 2 [ceiling]"):
        assert rec["phases"][name]["client_cpu_ms_per_call"] > 0     # the load generator's own CPU
    assert rec["machine_cpu_ms_per_call"]["recserve"] > rec["phases"][
        "closed loop, concurrency 2 [recserve]"]["client_cpu_ms_per_call"]
    assert rec["ceiling_response_bytes_mean"]["Recommend"] > 0


def test_load_sweep(demo_bundle):
    text = _run(["bench/load.py", "--bundle", str(demo_bundle), "--workers", "1", "--clients", "1",
                 "--concurrency", "2", "--duration", "1", "--warmup", "0.2", "--pool", "100", "--sweep",
                 "--sweep-fractions", "0.3,0.6", "--no-ceiling"])
    assert "sweep summary" in text and "nan" not in text     # no ceiling: no ceiling figures printed


def test_load_rejects_non_loopback_target(demo_bundle):
    p = subprocess.run([sys.executable, "bench/load.py", "--bundle", str(demo_bundle), "--target", "10.0.0.1:1"],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode != 0 and "loopback" in p.stderr


def _refused(args, says, code=2, env=None):
    """A bad argument: exit 2 with the reason on the last line; a failure at run time: exit 1, one line."""
    p = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code and says in lines[-1] and (code == 2 or len(lines) == 1), p.stderr[-2000:]
    return p


def test_bad_arguments_are_refused_in_one_line_before_any_server_starts(demo_bundle, tmp_path):
    b = str(demo_bundle)
    for extra, says in ((["--duration", "0"], "argument --duration: must be above 0"),
                        (["--duration", "nan"], "argument --duration: must be a finite number"),
                        (["--rate", "-5"], "argument --rate: must be at least 0"),
                        (["--rate", "inf", "--open-only"], "argument --rate: must be a finite number"),
                        (["--clients", "0"], "argument --clients: must be at least 1"),
                        (["--deadline", "0"], "argument --deadline: must be above 0"),
                        (["--deadline", "-1"], "argument --deadline: must be above 0"),
                        (["--max-inflight", "0"], "argument --max-inflight: must be at least 1"),
                        (["--workers", "-3"], "argument --workers: must be at least 0"),
                        (["--cpu-affinity", "bogus"], "--cpu-affinity: cpu_affinity must be auto, off or"),
                        (["--mix", "recommend=abc"], "--mix: 'recommend=abc' is not METHOD=SHARE"),
                        (["--mix", "recommend=inf"], "--mix: 'recommend=inf': a share is a finite number"),
                        (["--sweep", "--sweep-fractions", "0.5,abc"], "--sweep-fractions"),
                        (["--sweep", "--sweep-fractions", "0.5,inf"], "--sweep-fractions: must be a finite"),
                        (["--json", str(tmp_path / "no" / "x.json")], "--json: directory"),
                        (["--png", str(tmp_path / "no" / "x.png")], "--png: directory"),
                        (["--json", str(tmp_path)], "is a directory")):
        p = _refused(["bench/load.py", "--bundle", b, *extra], says)
        assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, (extra, p.stdout, p.stderr)
    _refused(["bench/load.py", "--bundle", str(tmp_path / "nothing")], "--bundle:")
    _refused(["bench/overhead.py", "--bundle", b, "--rate", "-5"], "argument --rate: must be above 0, not -5")
    _refused(["bench/compare.py", "--bundle", b, "--b", "RECSERVE_BOGUS=7"], "RECSERVE_BOGUS is not a recserve")
    for script in ("load", "compare", "overhead", "gaps", "item_updates"):
        for env, says in (({"RECSERVE_WORKRES": "2"}, "RECSERVE_WORKRES is not a recserve setting (did you mean "
                                                      "RECSERVE_WORKERS?)"),
                          ({"RECSERVE_CANDIDATES": "many"}, "RECSERVE_CANDIDATES: candidates: cannot read 'many'")):
            extra = ["--b", "RECSERVE_SHARE_WORK=0"] if script == "compare" else []
            p = _refused([f"bench/{script}.py", "--bundle", b, *extra], says, env=env)
            assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, (script, env, p.stderr)


def test_a_server_that_cannot_start_is_one_line_and_exit_1(demo_bundle, tmp_path):
    import shutil

    from recserve.bundle import resolve

    root = tmp_path / "bundle"
    shutil.copytree(demo_bundle, root)
    ranker = next(p for p in resolve(str(root)).iterdir() if p.name.startswith("ranker"))
    ranker.write_bytes(ranker.read_bytes()[:-10] + b"0123456789")       # its hash no longer verifies
    logs = tmp_path / "logs"        # the log is kept for the user: here, not in the machine's /tmp
    logs.mkdir()
    p = _refused(["bench/load.py", "--bundle", str(root), "--duration", "1", "--no-ceiling"],
                 "recserve server did not start:", code=1, env={"TMPDIR": str(logs)})
    assert "sha256" in p.stderr and "its log: " in p.stderr and "Traceback" not in p.stderr, p.stderr
    log = Path(p.stderr.rsplit("its log: ", 1)[1].strip().rstrip(")"))
    assert log.parent == logs and "sha256 mismatch" in log.read_text()


def test_load_against_a_running_server(demo_bundle, tmp_path):
    from _servers import start_real

    server = start_real(str(demo_bundle), 1, str(tmp_path / "events"))
    try:
        out = tmp_path / "target.json"
        text = _run(["bench/load.py", "--bundle", str(demo_bundle), "--target", f"127.0.0.1:{server.port}",
                     "--clients", "1", "--concurrency", "2", "--duration", "1", "--warmup", "0.2", "--pool", "100",
                     "--json", str(out)])
    finally:
        server.stop()
    assert "server CPU per call: not measured" in text and "nan" not in text
    rec = _record(out)
    phase = rec["phases"]["closed loop, concurrency 2 [recserve]"]
    assert phase["methods"]["ALL"]["ok"] > 0 and phase["server_cpu_ms_per_call"] is None


def test_the_ceilings_responses_have_the_sizes_recserve_sends_under_the_workload(demo_bundle, tmp_path):
    """The phases send the pool's events over and over: the users' histories grow, and with them recserve's
    answers (a cold answer is smaller). The responses recorded for the ceiling are those of users with the
    pool's events, not of a fresh event store."""
    import grpc
    import numpy as np
    from _servers import record_responses, start_real
    from _workload import build_requests, parse_mix, read_ids

    cfg = {"mix": parse_mix("recommend=0.8,similar=0.15,events=0.05"), "k": 20, "zipf": 1.1, "unknown": 0.0,
           "anon": 0.0, "filter_share": 0.0, "explain_share": 0.0, "events_batch": 3}     # load.py's defaults
    pool = build_requests(read_ids(str(demo_bundle)), cfg, seed=0, n=4000)
    server = start_real(str(demo_bundle), 1, str(tmp_path / "events"))
    try:
        canned = record_responses(f"127.0.0.1:{server.port}", pool)
        recs = [body for m, body in pool if m == "Recommend"][:len(canned["Recommend"])]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            call = ch.unary_unary("/recserve.v1.Recommender/Recommend", request_serializer=None,
                                  response_deserializer=None)
            again = [len(call(body, timeout=10)) for body in recs]
    finally:
        server.stop()
    recorded = np.mean([len(b) for b in canned["Recommend"]])
    assert len(canned["Recommend"]) == 50 and abs(recorded / np.mean(again) - 1) < 0.01, (recorded, np.mean(again))


def test_a_slow_server_is_measured(demo_bundle, tmp_path):
    """Each client warmed its connections with 80 calls one after another before a phase: with Recommend at
    1.5 s a call, the run stopped with "client processes were not ready within 60 s"."""
    out = tmp_path / "slow.json"
    _run(["bench/load.py", "--bundle", str(demo_bundle), "--workers", "1", "--clients", "1", "--concurrency", "2",
          "--duration", "3", "--warmup", "0.5", "--pool", "100", "--no-ceiling", "--json", str(out)],
         env={"RECSERVE_DEBUG_DELAY_MS": "1500"})
    phase = _record(out)["phases"]["closed loop, concurrency 2 [recserve]"]["methods"]
    assert phase["Recommend"]["ok"] >= 1 and phase["Recommend"]["p50"] >= 1500, phase["Recommend"]


def test_an_unreachable_target_is_one_line(demo_bundle):
    """With or without the ceiling (whose recording of responses used to be the only check made)."""
    for extra in ([], ["--no-ceiling"]):
        _refused(["bench/load.py", "--bundle", str(demo_bundle), "--target", "127.0.0.1:1", "--duration", "1",
                  *extra], "cannot connect to 127.0.0.1:1 within 10 s", code=1)


def test_quality_quick():
    text = _run(["bench/quality.py", "--quick"])
    for m in ("implicit-als", "item-knn", "full+mmr", "ann+ranker"):
        assert m in text


def _record(path: Path) -> dict:
    """A JSON record: standard JSON (no NaN), with the machine, the versions and every argument."""
    rec = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path.name}"))
    # the CPUs the script was started with (as `nproc` prints them), before it pinned itself
    assert rec["nproc"] == len(os.sched_getaffinity(0)) and "kernel=" in rec["machine"]
    assert {"python", "grpcio", "numpy", "lightgbm", "hnswlib", "uvloop", "git"} <= set(rec["versions"])
    assert rec["versions"]["git_dirty"] in (True, False)
    assert rec["versions"]["git_dirty"] == bool(rec["versions"]["git_changed"])     # and which files
    assert rec["versions"]["hnswlib"][0].isdigit()
    return rec


def test_scaling_quick(tmp_path):
    cache = tmp_path / "cache"
    assert "median ms" in _run(["bench/scaling.py", "--quick", "--json", str(tmp_path / "s.json"),
                                "--cache", str(cache)])
    rec = _record(tmp_path / "s.json")
    assert rec["config"]["quick"] is True and rec["config"]["repeats"] == 20
    # the sizes and caps it ran, not the defaults it did not (the record said 10000,100000 and 100,500,2000)
    assert rec["config"]["sizes"] == [300, 600] and rec["config"]["cands"] == [50, 100]
    assert rec["results"]["300"]["50"]["median_ms"] > 0
    # the candidates ranked: a request's budget is at least 4k = 80 whatever N (a mean over every merge,
    # the short ones a top-up followed included, said 70)
    assert rec["results"]["300"]["50"]["candidates"] >= 76, rec["results"]["300"]
    # a cached bundle of other settings (the quick run's 16 factors) is built again, not timed as it is
    text = _run(["bench/scaling.py", "--sizes", "300", "--cands", "100", "--repeats", "3", "--cache", str(cache)])
    assert "built with other settings" in text and "built 300 items" in text, text


def test_build_time_interactions_and_cli_defaults(tmp_path):
    """A size with an interaction count gets about that many, and --cli-defaults builds with no options."""
    text = _run(["bench/build_time.py", "--sizes", "150x80x6000", "--cli-defaults", "--json", str(tmp_path / "b.json")])
    assert "build options: none (the CLI's defaults)" in text
    rec = _record(tmp_path / "b.json")
    (row,) = rec["rows"]
    assert row["size"] == "150x80x6000" and 5000 <= row["interactions"] <= 7000     # 20 per user would be 3,000
    assert rec["config"]["cli_defaults"] is True
    # the options it did not pass are not in its record (it said factors 64, ranker_users 3000, tune False)
    assert rec["config"]["factors"] is None and rec["config"]["ranker_users"] is None


def test_build_time_quick(tmp_path):
    text = _run(["bench/build_time.py", "--quick", "--json", str(tmp_path / "b.json")])
    assert "peak MB" in text and "start-up, evaluation and bundle write included" in text
    rec = _record(tmp_path / "b.json")
    for r in rec["rows"]:       # the wall time not in the manifest's stages, as its own figure
        assert 0 < r["stages_s"] < r["wall_s"] and abs(r["other_s"] - (r["wall_s"] - r["stages_s"])) < 1e-9
    assert [r["size"] for r in rec["rows"]] == ["200x100", "400x200"] and rec["config"]["factors"] == 16
    assert rec["config"]["ranker_users"] == 300 and rec["config"]["sizes"] == [[200, 100, None], [400, 200, None]]


@pytest.mark.parametrize("args, says", [
    (["bench/core.py", "--repeats", "0"], "argument --repeats: must be at least 1, not 0"),
    (["bench/core.py", "--items", "abc"], "argument --items: an integer, not 'abc'"),
    (["bench/scaling.py", "--sizes", "10000,abc"], "argument --sizes: an integer, not 'abc'"),
    (["bench/scaling.py", "--cands", ","], "argument --cands: at least one value, comma separated"),
    (["bench/quality.py", "--synth", "2000"], "argument --synth: USERSxITEMS like 2000x1000"),
    (["bench/build_time.py", "--sizes", "0x10"], "argument --sizes: USERSxITEMS like 2000x1000"),
    (["bench/build_time.py", "--sizes", "20x10x0"], "or USERSxITEMSxINTERACTIONS, not '20x10x0'"),
    (["bench/build_time.py", "--sizes", "20x10x5x1"], "or USERSxITEMSxINTERACTIONS, not '20x10x5x1'"),
    (["bench/ranker.py", "--budget", "-1"], "argument --budget: must be above 0, not -1"),
    (["bench/protocols.py", "--protocols", "c"], "argument --protocols: a, b or a,b, not 'c'"),
    (["bench/gaps.py", "--bundle", "x", "--block", "0"], "argument --block: must be at least 1, not 0"),
    (["bench/overhead.py", "--bundle", "x", "--repeats", "0"], "argument --repeats: must be at least 1, not 0"),
    (["bench/compare.py", "--bundle", "x", "--rounds", "0", "--b", "RECSERVE_SHARE_WORK=0"],
     "argument --rounds: must be at least 1"),
])
def test_bad_numbers_are_refused_by_every_script(args, says):
    p = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and says in p.stderr.strip().splitlines()[-1], p.stderr[-2000:]


def test_overhead_quick(demo_bundle, tmp_path):
    out = tmp_path / "overhead.json"
    text = _run(["bench/overhead.py", "--bundle", str(demo_bundle), "--rate", "40", "--duration", "1",
                 "--warmup", "0.3", "--repeats", "1", "--json", str(out)])
    assert "= recserve" in text and "tight loop" in text
    rec = _record(out)
    for mode in ("ceiling", "service", "recserve"):
        r = rec["runs"][mode][0]
        assert r["calls"] > 20 and r["errors"] == 0 and r["server_cpu_ms"] > 0, (mode, r)
    real = rec["runs"]["recserve"][0]
    # the worker counted the pipeline CPU of every Recommend answered in the measured window
    assert real["pipeline_calls"] >= real["calls"] and real["pipeline_cpu_ms"] > 0
    assert rec["pipeline_tight_loop_ms"] > 0


def test_gaps_quick(demo_bundle, tmp_path):
    out = tmp_path / "gaps.json"
    text = _run(["bench/gaps.py", "--bundle", str(demo_bundle), "--gaps", "0.05", "--blocks", "2", "--block", "20",
                 "--json", str(out)])
    assert "spin ratio" in text and "kernel=" in text
    g = json.loads(out.read_text())["gaps"]["0.05"]
    assert min(g["back to back"], g["spin"], g["sleep"]) > 0
    assert len(g["spin_ratio"]) == 3 and g["sleep_ratio"][0] <= g["sleep_ratio"][1] <= g["sleep_ratio"][2]


def test_gaps_rejects_bad_gaps(demo_bundle):
    p = subprocess.run([sys.executable, "bench/gaps.py", "--bundle", str(demo_bundle), "--gaps", "fast"],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode != 0 and "--gaps" in p.stderr


def test_compare_quick(demo_bundle, tmp_path):
    out = tmp_path / "compare.json"
    # B's setting must reach B's server only: every Recommend there sleeps 40 ms (the drain tests' hook)
    text = _run(["bench/compare.py", "--bundle", str(demo_bundle), "--b", "RECSERVE_DEBUG_DELAY_MS=40", "--rounds", "2",
                 "--duration", "1", "--warmup", "0.2", "--workers", "1", "--clients", "1", "--concurrency", "2",
                 "--pool", "100", "--json", str(out)])
    assert "B / A per round" in text
    rec = _record(out)
    assert rec["settings"] == {"A": {}, "B": {"RECSERVE_DEBUG_DELAY_MS": "40"}} and len(rec["rounds"]) == 2
    # the shares as used, printed and recorded (the record held only the --mix text)
    assert rec["workload"]["mix"] == {"Recommend": 0.8, "SimilarItems": 0.15, "RecordEvents": 0.05}
    assert "workload: {" in text and rec["trees"] == {"A": str(REPO), "B": str(REPO)}
    for row in rec["rounds"]:
        assert row["A"]["throughput"] > 0 and row["B"]["throughput"] > 0 and row["A"]["errors"] == 0
        assert row["B"]["p99 Recommend"] >= 39.0, row        # B's Recommends each slept 40 ms: the setting reached B
    # the summary is B / A of each round's figures, and counts the rounds in which B did better
    tp = rec["summary"]["throughput"]
    ratios = [row["B"]["throughput"] / row["A"]["throughput"] for row in rec["rounds"]]
    assert tp["ratios"] == pytest.approx(ratios) and tp["rounds"] == 2
    assert tp["b_better_rounds"] == sum(r > 1.0 for r in ratios)
    lat = rec["summary"]["p99 Recommend"]
    ratios = [row["B"]["p99 Recommend"] / row["A"]["p99 Recommend"] for row in rec["rounds"]]
    assert lat["ratios"] == pytest.approx(ratios) and lat["b_better_rounds"] == sum(r < 1.0 for r in ratios)
    assert lat["b_worse_rounds"] == sum(r > 1.0 for r in ratios) and "(sign test p " in text
    from compare import sign_test

    assert lat["sign_test_p"] == sign_test(lat["b_better_rounds"], lat["b_worse_rounds"])


def test_servers_import_the_tree_they_are_given_whatever_the_working_directory(demo_bundle, tmp_path,
                                                                              monkeypatch):
    """``python -m`` puts the working directory first on the path: a ``recserve`` there was imported instead
    of the PYTHONPATH a side set (compare.py then measured that tree under the other's label). The working
    directory stays the caller's: relative paths are hers."""
    from _servers import imported_tree, server_env, start_real

    (tmp_path / "recserve").mkdir()
    (tmp_path / "recserve" / "__init__.py").write_text("raise SystemExit('the working directory was imported')\n")
    monkeypatch.chdir(tmp_path)
    assert imported_tree(server_env()) == REPO
    assert imported_tree(server_env({"PYTHONPATH": os.path.relpath(REPO, tmp_path)})) == REPO
    with pytest.raises(ValueError, match="holds no recserve package"):
        imported_tree(server_env({"PYTHONPATH": str(tmp_path / "nothing")}))
    server = start_real(os.path.relpath(demo_bundle, tmp_path), 1, "events")
    try:
        assert server.port
    finally:
        server.stop()
    assert (tmp_path / "events").is_dir()


def test_build_time_runs_the_trainer_of_its_tree_whatever_the_working_directory(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("raise SystemExit('the working directory was imported')\n")
    p = subprocess.run([sys.executable, str(REPO / "bench" / "build_time.py"), "--sizes", "60x40", "--factors", "8",
                        "--ranker-users", "60"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0 and "60x40" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]


def test_compare_rejects_bad_settings(demo_bundle):
    for bad in (["--b", "RECSERVE_CANDIDATES"], ["--b", "X=1", "--a", "X=1"]):
        p = subprocess.run([sys.executable, "bench/compare.py", "--bundle", str(demo_bundle), *bad],
                           cwd=REPO, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        assert p.returncode != 0 and ("NAME=VALUE" in p.stderr or "same settings" in p.stderr), p.stderr


def test_item_updates(demo_bundle):
    text = _run(["bench/item_updates.py", "--bundle", str(demo_bundle), "--repeats", "3"])
    assert "from the changed items" in text and "from every item state" in text


@pytest.fixture
def refusing_server():
    """A gRPC server on a free loopback port with no service: every call fails with UNIMPLEMENTED."""
    from concurrent import futures

    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_a_sweep_with_no_ok_answer_in_the_closed_loop_is_refused_in_one_line(demo_bundle, refusing_server):
    p = subprocess.run([sys.executable, "bench/load.py", "--bundle", str(demo_bundle), "--target", refusing_server,
                        "--no-ceiling", "--clients", "1", "--channels", "1", "--concurrency", "1", "--duration", "1",
                        "--pool", "50", "--sweep"], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == ["sweep refused: the closed loop had no OK answer (saturation 0/s), "
                                             "so there is no rate to sweep"]
    assert "UNIMPLEMENTED" in p.stdout and "sweep: open loop" not in p.stdout


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
            for c in (t / "children").read_text().split()]


def test_the_ceiling_is_started_as_recserve_is_in_process_with_0_workers(demo_bundle, tmp_path):
    """--workers 0: recserve serves in its own process, and so does the ceiling (it forked one worker)."""
    import pickle

    import grpc

    from _servers import start_ceiling

    from recserve.v1 import recommender_pb2 as pb

    body = pb.RecommendResponse(items=[pb.ScoredItem(item_id="i1", score=1.0)]).SerializeToString()
    rf = tmp_path / "responses.pkl"
    rf.write_bytes(pickle.dumps({"Recommend": [body], "SimilarItems": [], "RecordEvents": []}))
    for workers, forked in ((0, 0), (1, 1)):
        c = start_ceiling(str(rf), workers, "off")
        try:
            assert len(_children(c.proc.pid)) == forked
            with grpc.insecure_channel(f"127.0.0.1:{c.port}") as ch:
                call = ch.unary_unary("/recserve.v1.Recommender/Recommend")
                req = pb.RecommendRequest(user_id="u").SerializeToString()
                assert call(req, timeout=10, wait_for_ready=True) == body     # forked: may not listen yet
        finally:
            c.stop()


def test_the_ceiling_warns_of_what_it_cannot_copy_from_the_target(demo_bundle, refusing_server, tmp_path):
    """No OK answer to record: the ceiling's messages for that method are empty, and said to be; under
    --target the ceiling's worker count is an assumption about the target, and said to be."""
    out = tmp_path / "w.json"
    p = subprocess.run([sys.executable, "bench/load.py", "--bundle", str(demo_bundle), "--target", refusing_server,
                        "--clients", "1", "--channels", "1", "--concurrency", "1", "--duration", "1", "--pool", "50",
                        "--mix", "recommend=1", "--workers", "1", "--warmup", "5", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == [
        "warning: recserve answered no Recommend call OK while its responses were recorded: the ceiling answers "
        "Recommend with an empty message (recserve's message size unknown)",
        "warning: the ceiling runs 1 worker(s) (--workers); its ratios assume the target runs as many"]
    assert "server workers unknown (--target; the ceiling runs 1)" in p.stdout
    assert "warm-up 0.5 s: --warmup 5 capped at half of --duration" in p.stdout
    rec = _record(out)
    assert rec["ceiling_response_bytes_mean"]["Recommend"] is None
    assert rec["server_workers"] is None and rec["ceiling_workers"] == 1       # the target's: not known
    assert rec["config"]["warmup"] == 0.5 and rec["config"]["warmup_given"] == 5     # the warm-up used


def test_scaling_times_every_size_and_candidate_count_in_one_interleaved_pass(tmp_path, monkeypatch):
    """The ratio across catalogue sizes is within one run, as the one across candidate counts is."""
    import scaling

    passes = []

    def interleaved(funcs, repeats, warmup=20):
        passes.append(sorted(funcs))
        return {k: [1000.0] * repeats for k in funcs}

    monkeypatch.setattr(scaling, "interleaved", interleaved)
    assert scaling.main(["--quick", "--cache", str(tmp_path)]) == 0
    assert passes == [[(300, 50), (300, 100), (600, 50), (600, 100)]]
    # one item-item model at every size (EASE, the build's choice for small catalogues, would differ)
    from recserve.bundle import resolve

    for n in (300, 600):
        manifest = json.loads((resolve(str(tmp_path / f"items{n}")) / "manifest.json").read_text())
        assert manifest["training"]["config"]["i2i_model"] == "cosine"
    # a cached bundle of another model (a cache of an earlier version) is built again, not timed
    from trainer.build import build
    from trainer.synth import synth
    from trainer.timing import Timer

    ds, _ = synth(300, 300, seed=0)
    build(ds, tmp_path / "items300", {"seed": 0, "factors": 16, "ranker_users": 300, "ranker_rounds": 20, "tune": False,
                                      "i2i_model": "ease"}, timer=Timer(verbose=False))
    assert scaling.main(["--quick", "--cache", str(tmp_path)]) == 0
    manifest = json.loads((resolve(str(tmp_path / "items300")) / "manifest.json").read_text())
    assert manifest["training"]["config"]["i2i_model"] == "cosine"


def test_item_updates_and_ranker_print_the_samples_behind_each_p99(demo_bundle):
    text = _run(["bench/item_updates.py", "--bundle", str(demo_bundle), "--repeats", "3"])
    assert text.count("n = 3") == 2                 # one sample per round, for either refresh
    text = _run(["bench/ranker.py", "--quick"])
    rows = [ln.split() for ln in text.splitlines() if ln.strip().startswith(("10x7 ", "20x15 "))
            and ln.split()[1].isdigit()]
    assert len(rows) == 4 and all(r[-1].isdigit() and int(r[-1]) >= 5 for r in rows)
    assert "n = samples per median and p99" in text


def test_overhead_times_the_tight_loop_as_the_server_worker_does(demo_bundle, tmp_path, monkeypatch):
    """Both sides: the steps of recommend_steps, this thread's CPU (not the process's) around each one."""
    import time

    import overhead
    from _inproc import RECOMMEND_ONLY
    from _workload import build_requests, read_ids

    requests = build_requests(read_ids(str(demo_bundle)), RECOMMEND_ONLY, 0, 20)
    ticks = []
    real = time.thread_time

    def thread_time():
        ticks.append(1)
        return real()

    monkeypatch.setattr(time, "process_time", lambda: pytest.fail("the tight loop read the process's CPU"))
    monkeypatch.setattr(time, "thread_time", thread_time)
    assert overhead.tight_loop(str(demo_bundle), requests, str(tmp_path / "ev")) > 0
    assert len(ticks) >= 2 * 2 * len(requests)     # around each of at least two steps per Recommend


def test_cold_users_quick(demo_bundle, tmp_path):
    """The demo bundle holds out its newest 10%: the users who arrive after its cut are measured under both
    cold orders (trending also with the country as context), against the trending list, from the data the
    bundle was built from."""
    from trainer.datawrite import write_dataset
    from trainer.synth import synth

    write_dataset(synth(300, 200, seed=0)[0], tmp_path / "data")
    out = _run([str(REPO / "bench" / "cold_users.py"), "--bundle", str(demo_bundle), "--data",
                str(tmp_path / "data"), "--k", "20", "--json", str(tmp_path / "c.json")])
    rec = _record(tmp_path / "c.json")
    assert rec["evaluated_users"] > 0 and rec["cold_start_answers"] == rec["calls"] == 5 * rec["evaluated_users"]
    assert 0 < rec["users_with_country_list"] <= rec["evaluated_users"]
    assert list(rec["methods"]) == ["trending order, own id", "trending order, anonymous",
                                    "trending order, anonymous + country", "ranker order, own id",
                                    "ranker order, anonymous", "trending list"]
    for m, v in rec["methods"].items():
        assert v["mean_len"] == 20 and 0.0 <= v["recall@10"] <= v["recall@20"] <= 1.0, m
        assert "recall@50" not in v, m      # answers of 20 have no recall@50 (it was their recall@20)
        assert m in out
    assert "recall@20" in out and "recall@50" not in out


def test_cold_users_needs_held_out_data(tmp_path):
    """A bundle built on all of its data has no new user to measure: exit 2 and the reason in one line."""
    from trainer.build import build
    from trainer.datawrite import write_dataset
    from trainer.synth import synth
    from trainer.timing import Timer

    ds = synth(200, 100, seed=1)[0]
    write_dataset(ds, tmp_path / "data")
    build(ds, tmp_path / "b", {"seed": 0, "factors": 8, "holdout": 0.0, "ranker_rounds": 10, "tune": False},
          timer=Timer(verbose=False))
    _refused([str(REPO / "bench" / "cold_users.py"), "--bundle", str(tmp_path / "b"), "--data",
              str(tmp_path / "data")], "build the bundle with held-out data (--holdout above 0)")
    _refused([str(REPO / "bench" / "cold_users.py"), "--bundle", str(tmp_path / "b"), "--data",
              str(tmp_path / "none")], "does not exist")


def test_cold_users_refuses_a_bundle_whose_hashes_do_not_verify(demo_bundle, tmp_path):
    """It opened the bundle itself and ended in a traceback of BundleError."""
    import shutil

    from trainer.datawrite import write_dataset
    from trainer.synth import synth

    write_dataset(synth(300, 200, seed=0)[0], tmp_path / "data")
    shutil.copytree(demo_bundle, tmp_path / "b")
    with open(next((tmp_path / "b").glob("*/ranker.txt")), "a") as f:
        f.write("\n")
    p = _refused([str(REPO / "bench" / "cold_users.py"), "--bundle", str(tmp_path / "b"), "--data",
                  str(tmp_path / "data")], "--bundle: ranker.txt: sha256 mismatch (file changed since the build)")
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_visitors_the_backend_does_not_know_carry_a_country(demo_bundle):
    """The load mix's anonymous and unknown users ask with a country of the bundle's users; known users ask
    without one; the requests are otherwise those of a bundle without countries (the country has draws of
    its own)."""
    from _inproc import RECOMMEND_ONLY
    from _workload import build_requests, read_ids

    from recserve.v1 import recommender_pb2 as pb

    ids = read_ids(str(demo_bundle))
    assert ids["country"] and len(ids["country"]) <= len(ids["user"])
    got = [pb.RecommendRequest.FromString(b) for _, b in build_requests(ids, RECOMMEND_ONLY, 0, 400)]
    plain = [pb.RecommendRequest.FromString(b) for _, b in build_requests({**ids, "country": []}, RECOMMEND_ONLY,
                                                                           0, 400)]
    visitors = [r for r in got if r.user_id == "" or r.user_id.startswith("bench-unknown-")]
    assert visitors and all(r.context.country in set(ids["country"]) for r in visitors)
    assert all(r.context.country == "" for r in got if r not in visitors)
    for a, b in zip(got, plain):
        a.ClearField("context")                 # the country is the only context the load mix sends
        assert a == b
