"""synth -> build -> verify -> evaluate through the console entry point (subprocesses)."""
from __future__ import annotations

import json

from recserve.bundle import Bundle, resolve

from cliutil import run_cli


def test_synth_build_verify_evaluate(tmp_path):
    data, out = tmp_path / "data", tmp_path / "bundles"
    p = run_cli("synth", "--users", 250, "--items", 150, "--seed", 3, data, check=True)
    assert "interactions" in p.stdout
    assert {f.name for f in data.iterdir()} == {"interactions.csv", "items.csv", "users.csv"}
    p = run_cli("build", "--data", data, out, "--factors", 16, "--ranker-users", 250, check=True)  # evaluates
    assert "built" in p.stdout and "full+mmr" in p.stdout
    assert "total (top-level)" in p.stderr            # the timing summary
    bundle = resolve(out)
    m = json.loads((bundle / "manifest.json").read_text())
    held, total = m["counts"]["held_out"], m["counts"]["interactions_total"]
    assert 0.09 <= held / total <= 0.11
    assert f"the newest {100 * held / total:.3g}% ({held} of {total}) of the interactions were held out of this " \
           "bundle for its evaluation; build" in p.stderr
    assert set(m["files"]) == {"tables.lmdb", "index.hnsw", "ranker.txt"}
    assert set(m["inputs"]) == {"interactions.csv", "items.csv", "users.csv"}
    assert m["evaluation"]["methods"]["popularity"]["recall@10"] >= 0
    tuning = m["training"]["tuning"]                   # the served vector params are the best of the grid tried
    assert len(tuning["grid"]) > 1 and tuning["chosen"] in tuning["grid"]
    assert tuning["chosen"]["ann_recall@50"] == max(g["ann_recall@50"] for g in tuning["grid"])
    assert (m["params"]["decay_short"], m["params"]["alpha"]) == (tuning["chosen"]["decay_short"],
                                                                  tuning["chosen"]["alpha"])
    assert 0.8 <= m["index"]["recall_at_k"]["recall"] <= 1.0
    ef = m["training"]["tuning"]["ef"]                 # the serving ef, tuned against brute force
    assert m["params"]["ef"] == m["index"]["ef"] == ef["chosen"]["ef"]
    assert ef["chosen"]["recall"] >= ef["target"] or ef["chosen"]["recall"] == max(r["recall"] for r in ef["grid"])
    assert (bundle / "report.json").is_file()
    assert "full+mmr" in (bundle / "report.html").read_text()
    assert m["training"]["timings"]["ranker_train"] > 0

    p = run_cli("verify", out, check=True)
    assert p.stdout.startswith("ok: " + m["version"])
    p = run_cli("evaluate", out, "--data", data, check=True)
    assert "merged+ranker" in p.stdout
    with Bundle.open(out) as b:
        assert b.version == m["version"]
        assert b.tables.array("sim_rows").shape[0] == 150          # SimilarItems' stored rows

    # a second build (a ranker of exactly 7 trees, no stored SimilarItems rows) switches CURRENT, keeps
    # the first version on disk
    (out / ".tmp-20260101T000000-abcdef-4194305").mkdir()      # a killed build's (no such pid)
    p = run_cli("build", "--data", data, out, "--factors", 16, "--ranker-users", 100, "--no-tune",
                "--ranker-trees", 7, "--no-evaluate", "--no-similar-lists", check=True)
    assert f"removed what killed builds left in {out}: .tmp-20260101T000000-abcdef-4194305" in p.stderr
    assert "full+mmr" not in p.stdout
    assert resolve(out).name != m["version"]
    assert json.loads((resolve(out) / "manifest.json").read_text())["evaluation"] == {}
    assert (resolve(out) / "ranker.txt").read_text().count("\nTree=") == 7
    with Bundle.open(out) as b:
        assert not b.tables.has_array("sim_rows")
    p = run_cli("build", "--data", data, out, "--ranker-trees", 0)
    assert p.returncode == 2 and "--ranker-trees" in p.stderr
    assert (out / m["version"] / "manifest.json").is_file()


def test_import_movielens_100k(tmp_path):
    import pytest
    from cliutil import REPO

    src = REPO / ".." / "shared" / "datasets" / "ml-100k"
    if not (src / "u.data").is_file():
        pytest.skip(f"ml-100k not found at {src} (expected ../shared/datasets/ml-100k relative to the repo)")
    p = run_cli("import", "movielens", src, tmp_path / "ml", check=True)
    assert "100000 interactions, 943 users, 1682 items" in p.stdout
    from trainer.io import load_dataset

    ds = load_dataset(tmp_path / "ml")
    assert len(ds) == 100000 and ds.n_items == 1682
    assert set(ds.event.tolist()) == {4}
    assert "Animation" in set(ds.item_category.tolist())


def test_import_movielens_latest_small(tmp_path):
    import pytest
    from cliutil import REPO

    src = REPO / ".." / "shared" / "datasets" / "ml-latest-small"
    if not (src / "ratings.csv").is_file():
        pytest.skip(f"ml-latest-small not found at {src}")
    p = run_cli("import", "movielens", src, tmp_path / "ml", "--format", "parquet", check=True)
    assert "interactions" in p.stdout
    from trainer.io import load_dataset

    ds = load_dataset(tmp_path / "ml")
    assert ds.n_users == 671 and len(ds) == 100004
