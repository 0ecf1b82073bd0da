"""``python -m recserve.demo`` (``make demo``): synth data -> trainer bundle -> server -> real answers.

Generates synthetic data with the trainer's ``synth``, writes it in the input format, builds a bundle
with the trainer, starts the server (2 worker processes) on a free localhost port, prints Recommend for a
known user, an unknown user (cold start), an anonymous visitor from SE (cold start from SE's trending
list: the demo data give each country favourites of its own) and SimilarItems for an item, records an
event and shows the user's next answer, then shuts the server down cleanly (SIGTERM drain).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recserve.demo")
    ap.add_argument("--dir", default="demo-data", help="working directory (data and bundles)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)

    from trainer.build import build
    from trainer.datawrite import write_dataset
    from trainer.io import load_dataset
    from trainer.synth import synth

    work = Path(a.dir)
    if work.exists():
        shutil.rmtree(work)
    data, bundles = work / "data", work / "bundles"
    t0 = time.perf_counter()
    ds, _ = synth(a.users, a.items, seed=0, country_effect=1.0)     # favourites per country: cold answers by country
    write_dataset(ds, data)
    ds = load_dataset(data)
    print(f"[demo] synthetic data: {ds.n_users} users, {ds.n_items} items, {len(ds)} interactions -> {data}")
    path = build(ds, bundles, {"seed": 0, "factors": 32, "ranker_users": 1000, "ranker_rounds": 100})
    print(f"[demo] bundle {path.name} built in {time.perf_counter() - t0:.1f}s -> {bundles}")

    # the server runs in its own process: this one has used OpenMP thread pools (training), and forking
    # workers from such a process can deadlock them
    import json
    import signal
    import subprocess

    cmd = [sys.executable, "-m", "recserve.cli", "serve", "--bundle", str(bundles), "--port", "0",
           "--workers", str(a.workers), "--reload-interval", "0", "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            print("[demo] the server failed to start", file=sys.stderr)
            return 1
        port = json.loads(line)["port"]
        print(f"[demo] serving on 127.0.0.1:{port} with {a.workers} worker processes (pid {proc.pid})")
        return _talk(port, path)
    finally:
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        print(f"[demo] server stopped (exit code {rc}) in {time.perf_counter() - t:.2f}s")


def _talk(port: int, bundle_dir: Path) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from recserve._core.tables import TableReader
    from recserve.cli import print_items
    from recserve.v1 import recommender_pb2 as pb
    from recserve.v1 import recommender_pb2_grpc as pbg

    with TableReader(bundle_dir / "tables.lmdb") as t:
        indptr = t.array("hist_indptr")
        counts = indptr[1:] - indptr[:-1]
        user = t.id_of("user", int(counts.argmax()))
        n_hist = int(counts.max())
        item = t.id_of("item", int(t.array("pop_rows")[0]))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        print(f"[demo] health: {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}")
        stub = pbg.RecommenderStub(ch)

        r = stub.Recommend(pb.RecommendRequest(user_id=user, k=10, explain=True, timings=True), timeout=10)
        print(f"\nRecommend(user={user!r}, k=10)  known user with {n_hist} history events; "
              f"bundle {r.bundle_version}")
        print_items(r.items, explain=True)
        print("stage timings: " + "  ".join(f"{x.stage}={x.ms:.2f}ms" for x in r.timings))

        r = stub.Recommend(pb.RecommendRequest(user_id="someone-new", k=5), timeout=10)
        print(f"\nRecommend(user='someone-new', k=5)  unknown user -> cold start={r.cold_start}")
        print_items(r.items)

        r = stub.Recommend(pb.RecommendRequest(k=5, context=pb.Context(country="SE")), timeout=10)
        print(f"\nRecommend(anonymous, k=5, context.country='SE') -> cold start={r.cold_start}, trending list: "
              f"{r.trending_country or 'global (the bundle has none for SE)'}")
        print_items(r.items)

        s = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=5), timeout=10)
        print(f"\nSimilarItems(item={item!r}, k=5)")
        print_items(s.items)

        e = stub.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(
            user_id="someone-new", item_id=item, type=pb.EVENT_TYPE_PURCHASE)]), timeout=10)
        r = stub.Recommend(pb.RecommendRequest(user_id="someone-new", k=5), timeout=10)
        print(f"\nRecordEvents(someone-new purchased {item!r}) -> accepted={e.accepted} new_users={e.new_users};"
              f" next Recommend: cold start={r.cold_start}, {item!r} excluded="
              f"{item not in [i.item_id for i in r.items]}")
        print_items(r.items)

        try:
            stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-item"), timeout=10)
        except grpc.RpcError as exc:
            print(f"\nSimilarItems('no-such-item') -> {exc.code().name}: {exc.details()}")

        n = 200
        lat = []
        for i in range(n):
            t1 = time.perf_counter()
            stub.Recommend(pb.RecommendRequest(user_id=user, k=20), timeout=10)
            lat.append((time.perf_counter() - t1) * 1000)
        lat.sort()
        print(f"\n[demo] {n} sequential Recommend(k=20) over loopback: p50 {lat[n // 2]:.2f}ms, "
              f"p99 {lat[int(n * 0.99)]:.2f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
