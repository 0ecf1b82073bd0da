"""Atomic publication and tamper detection."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from recserve.bundle import Bundle, BundleError, resolve, seal_manifest, verify
from trainer.cli import main

from cliutil import REPO


@pytest.fixture()
def bundle_copy(demo_bundle, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(demo_bundle, root)
    return root


@pytest.mark.parametrize("name", ["ranker.txt", "tables.lmdb", "index.hnsw"])
def test_tampered_file_fails_verify(bundle_copy, name, capsys):
    assert main(["verify", str(bundle_copy)]) == 0
    p = resolve(bundle_copy) / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    rc = main(["verify", str(bundle_copy)])
    err = capsys.readouterr().err.strip()
    assert rc == 3
    assert err == f"recserve-train: error: {name}: sha256 mismatch (file changed since the build)"
    with pytest.raises(BundleError, match="sha256"):
        Bundle.open(bundle_copy)


def test_manifest_problems(bundle_copy):
    d = resolve(bundle_copy)
    m = json.loads((d / "manifest.json").read_text())
    (d / "stray.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="stray.bin: not listed"):
        verify(bundle_copy)
    (d / "stray.bin").unlink()
    bad = dict(m, format_version=99)
    (d / "manifest.json").write_text(json.dumps(seal_manifest(bad)))
    with pytest.raises(BundleError, match="format_version 99"):
        verify(bundle_copy)
    names = dict(m["feature_schema"], feature_names=m["feature_schema"]["feature_names"][::-1])
    (d / "manifest.json").write_text(json.dumps(seal_manifest(dict(m, feature_schema=names))))
    with pytest.raises(BundleError, match="feature_schema"):
        verify(bundle_copy)
    (d / "manifest.json").write_text(json.dumps(seal_manifest(dict(m, dim=m["dim"] + 1))))
    with pytest.raises(BundleError, match="item_emb has shape"):
        verify(bundle_copy)
    for field, value, msg in (("dim", "x", "dim must be an integer, not 'x'"), ("counts", None, "counts None")):
        (d / "manifest.json").write_text(json.dumps(seal_manifest(dict(m, **{field: value}))))
        with pytest.raises(BundleError, match=msg):
            verify(bundle_copy)
    (d / "ranker.txt").unlink()
    (d / "manifest.json").write_text(json.dumps(seal_manifest(m)))
    with pytest.raises(BundleError, match="ranker.txt: missing"):
        verify(bundle_copy)
    (bundle_copy / "CURRENT").write_text("../etc\n")
    with pytest.raises(BundleError, match="invalid version name"):
        resolve(bundle_copy)


@pytest.mark.parametrize("path, value", [(("params", "decay_short"), 1.0), (("training", "cut"), 1.0),
                                         (("feature_schema", "n_categories"), 1), (("evaluation",), {"x": 1})])
def test_an_edited_manifest_value_fails_verify_and_the_load(bundle_copy, path, value, capsys):
    """The manifest's digest covers its content: a changed value (as one flipped digit makes it) is refused by
    verify and by the server's load, with the manifest named; a change of layout only is not a change."""
    d = resolve(bundle_copy)
    text = (d / "manifest.json").read_text()
    m = json.loads(text)
    (d / "manifest.json").write_text(json.dumps(m, indent=4))           # the same content, another layout
    assert verify(bundle_copy)["version"] == m["version"]
    *parents, key = path
    node = m
    for p in parents:
        node = node[p]
    node[key] = value if key not in node or node[key] != value else value + 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest.json: sha256 mismatch"):
        verify(bundle_copy)
    with pytest.raises(BundleError, match="manifest.json: sha256 mismatch"):
        Bundle.open(bundle_copy, verify=False)
    assert main(["verify", str(bundle_copy)]) != 0
    assert "manifest.json: sha256 mismatch" in capsys.readouterr().err


def test_a_manifest_without_its_digest_is_said_to_be_unchecked(bundle_copy, capsys):
    """A manifest written before the digest has none and loads as before; one whose digest key was removed
    reads the same, so verify says its values are not checked (it said only "ok")."""
    d = resolve(bundle_copy)
    m = json.loads((d / "manifest.json").read_text())
    assert main(["verify", str(bundle_copy)]) == 0 and "not sealed" not in capsys.readouterr().out
    m["params"]["ef"] = int(m["params"]["ef"]) + 16
    del m["manifest_sha256"]
    (d / "manifest.json").write_text(json.dumps(m))
    assert main(["verify", str(bundle_copy)]) == 0
    assert "the manifest is not sealed (no manifest_sha256" in capsys.readouterr().out


def test_an_evaluation_seals_the_manifest_again_and_refuses_an_edited_one(bundle_copy):
    from trainer.writer import update_manifest

    d = resolve(bundle_copy)
    update_manifest(d, "evaluation", {"note": 1})
    assert verify(bundle_copy)["evaluation"] == {"note": 1}
    m = json.loads((d / "manifest.json").read_text())
    m["params"]["mmr_lambda"] = 0.1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not updated"):
        update_manifest(d, "evaluation", {"note": 2})
    assert json.loads((d / "manifest.json").read_text())["evaluation"] == {"note": 1}


def test_killed_build_keeps_previous_current(bundle_copy, tmp_path):
    """SIGKILL a build at several points: CURRENT still names the old, complete, loadable version."""
    from trainer.datawrite import write_dataset
    from trainer.synth import synth

    old = (bundle_copy / "CURRENT").read_text()
    data = tmp_path / "data"
    ds, _ = synth(1500, 600, seed=5)
    write_dataset(ds, data)
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    for marker in ("[fit@label_cut[f=16]/index]", "[ranker_train] ...", "[fit@test_cut/features]"):
        proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "build", "--data", str(data), str(bundle_copy),
                                 "--factors", "16", "--no-tune"], stderr=subprocess.PIPE, text=True, env=env,
                                cwd=REPO)
        seen, reached = [], False
        watchdog = threading.Timer(120, proc.kill)      # a build stuck before the marker ends too (and fails)
        watchdog.start()
        try:
            for line in proc.stderr:
                seen.append(line)
                if line.startswith(marker):
                    reached = True
                    proc.send_signal(signal.SIGKILL)
                    break
        finally:
            watchdog.cancel()
        proc.wait()
        proc.stderr.close()
        if not reached:
            # the build ended, or was stopped, before the marker: nothing was interrupted there
            pytest.fail(f"build never reached {marker} (exit {proc.returncode}): {''.join(seen)[-500:]}")
        assert proc.returncode == -signal.SIGKILL
        assert (bundle_copy / "CURRENT").read_text() == old, marker
        verify(bundle_copy)
        with Bundle.open(bundle_copy) as b:
            assert b.version == old.strip()
    # the leftovers are temp dirs only, never a published version without a manifest
    for p in bundle_copy.iterdir():
        if p.is_dir() and not p.name.startswith("."):
            assert (p / "manifest.json").is_file(), p


@pytest.mark.parametrize("crash_at", ["tables", "rename", "current"])
def test_crash_inside_write_keeps_previous_current(bundle_copy, monkeypatch, crash_at):
    """Deterministic crashes inside the writer itself (a SIGKILL cannot be aimed that precisely)."""
    from trainer import writer
    from trainer.build import artifacts_from_bundle
    from trainer.artifacts import catalogue
    from trainer.synth import synth

    old = (bundle_copy / "CURRENT").read_text()
    ds, _ = synth(300, 200, seed=0)
    with Bundle.open(bundle_copy) as b:
        art = artifacts_from_bundle(b)
        manifest = {k: b.manifest[k] for k in ("counts", "dim", "feature_schema", "index", "params",
                                               "training", "evaluation")}
        text = b.ranker_text

        class Crash(Exception):
            pass

        def boom(*a, **k):
            raise Crash(crash_at)

        if crash_at == "tables":
            monkeypatch.setattr(writer, "write_tables", boom)
        elif crash_at == "rename":
            monkeypatch.setattr(writer.os, "rename", boom)
        else:
            monkeypatch.setattr(writer, "set_current", boom)
        with pytest.raises(Crash):
            writer.write_bundle(bundle_copy, ds, catalogue(ds), art, text, dict(manifest))
    monkeypatch.undo()
    assert (bundle_copy / "CURRENT").read_text() == old
    verify(bundle_copy)
    with Bundle.open(bundle_copy) as b:
        assert b.version == old.strip()


@pytest.mark.parametrize("what", ["i2i_range", "sim_range", "sim_shape", "hist_len", "index_size", "index_dim",
                                  "ranker_text", "ranker_width", "consumed_range", "consumed_order",
                                  "consumed_indptr", "consumed_users", "country_range", "country_users",
                                  "country_indptr", "country_weight", "country_order", "country_twice"])
def test_consistently_hashed_but_wrong_bundle_is_refused(demo_bundle, tmp_path, what, capsys):
    """Checksums only prove the files are the ones written; the structure checks catch a bad writer."""
    import numpy as np

    from trainer import writer
    from trainer.artifacts import catalogue
    from trainer.build import artifacts_from_bundle
    from trainer.index import build_index
    from trainer.synth import synth

    ds, _ = synth(300, 200, seed=0)
    with Bundle.open(demo_bundle) as b:
        art = artifacts_from_bundle(b)
        manifest = {k: b.manifest[k] for k in ("counts", "dim", "feature_schema", "index", "params", "training")}
        text = b.ranker_text
        if what == "i2i_range":
            art.i2i_rows = art.i2i_rows.copy()
            art.i2i_rows[0, 0] = b.n_items + 5
        elif what == "sim_range":
            art.sim_rows = np.array(b.tables.array("sim_rows"))
            art.sim_rows[3, 1] = b.n_items
        elif what == "sim_shape":
            art.sim_rows = np.array(b.tables.array("sim_rows"))[:-1]
        elif what == "hist_len":
            art.hist_ts = art.hist_ts[:-1]
        elif what == "consumed_range":
            art.consumed_items = art.consumed_items.copy()
            art.consumed_items[-1] = b.n_items
        elif what == "consumed_order":
            art.consumed_items = art.consumed_items.copy()
            art.consumed_items[:2] = art.consumed_items[1::-1]
        elif what == "consumed_indptr":
            art.consumed_indptr = art.consumed_indptr[:-1]
        elif what.startswith("consumed"):
            art.consumed_users = np.r_[art.consumed_users, b.n_users].astype(np.int32)
            art.consumed_indptr = np.r_[art.consumed_indptr, art.consumed_indptr[-1]]
        elif what.startswith("country"):
            cl = art.countries
            assert cl.n_lists, "the demo bundle has country lists"
            if what == "country_range":
                cl.rows[-1] = b.n_items
            elif what == "country_users":
                cl.user_code = cl.user_code[:5]
            elif what == "country_indptr":
                cl.indptr[-1] -= 1
            elif what == "country_order":
                cl.scores[:2] = cl.scores[1::-1] if cl.scores[0] > cl.scores[1] else cl.scores[:2] - [1, 0]
            elif what == "country_twice":
                cl.rows[1] = cl.rows[0]
            else:
                cl.weight[0] = -1.0
        elif what == "index_size":
            art.index = build_index(art.item_emb[:-1])
        elif what == "index_dim":
            art.index = build_index(np.ascontiguousarray(art.item_emb[:, :-1]))
        elif what == "ranker_text":
            text = "this is not a LightGBM model\n"
        else:                                  # a model over one column more than the schema
            n = len(b.schema.names)
            assert f"max_feature_idx={n - 1}\n" in text
            text = text.replace(f"max_feature_idx={n - 1}", f"max_feature_idx={n}", 1)
        root = tmp_path / "bad"
        writer.write_bundle(root, ds, catalogue(ds), art, text, manifest)
    reason = {"i2i_range": "tables.lmdb: i2i_rows has item rows outside",
              "sim_range": "tables.lmdb: sim_rows has item rows outside",
              "sim_shape": "tables.lmdb: sim_rows must be int32 with 200 rows",
              "hist_len": "tables.lmdb: hist_ts length",
              "index_size": "index.hnsw holds 199 items, tables 200",
              "index_dim": f"index.hnsw has dim {manifest['dim'] - 1}, manifest {manifest['dim']}",
              "ranker_text": "ranker.txt: not a usable LightGBM model",
              "ranker_width": "ranker.txt: the model reads",
              "consumed_range": "tables.lmdb: consumed_items has item rows outside",
              "consumed_order": "tables.lmdb: consumed_items must hold each user's rows sorted and distinct",
              "consumed_indptr": "tables.lmdb: consumed_indptr must rise from 0 to len(consumed_items)",
              "consumed_users": "tables.lmdb: consumed_users must be increasing user rows in [0, 300)",
              "country_range": "tables.lmdb: country_rows has item rows outside [0, 200)",
              "country_users": "tables.lmdb: user_country must hold a code in [-1, 10) for each of 300 users",
              "country_indptr": "tables.lmdb: country_indptr must rise from 0 to len(country_rows)",
              "country_weight": "tables.lmdb: country_weight must hold a finite weight >= 0",
              "country_order": "tables.lmdb: each country's list in country_rows must be best first",
              "country_twice": "tables.lmdb: each country's list in country_rows must hold distinct rows"}[what]
    with pytest.raises(BundleError, match=re.escape(reason)):
        verify(root)
    with pytest.raises(BundleError, match=re.escape(reason)):
        Bundle.open(root)
    capsys.readouterr()
    assert main(["verify", str(root)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"recserve-train: error: {reason}"), err
    if what == "index_size":               # without verification, opening still refuses the index
        with pytest.raises(BundleError, match=re.escape(reason)):
            Bundle.open(root, verify=False)


def test_stale_temporaries_of_killed_builds_are_removed(tmp_path):
    """A build removes the temporary directories and CURRENT files of builds whose process is gone,
    never those of a live process."""
    import os

    from trainer.writer import remove_stale_temporaries

    dead = 4194305                         # above Linux's largest pid: no such process
    (tmp_path / f".tmp-20260101T000000-abcdef-{dead}").mkdir()
    (tmp_path / f".tmp-20260101T000000-abcdef-{dead}" / "tables.lmdb").write_text("x")
    (tmp_path / f".CURRENT.{dead}.tmp").write_text("v\n")
    live = tmp_path / f".tmp-20260101T000001-abcdef-{os.getpid()}"
    live.mkdir()
    (tmp_path / ".tmp-notes").mkdir()
    gone = remove_stale_temporaries(tmp_path)
    assert sorted(gone) == sorted([f".tmp-20260101T000000-abcdef-{dead}", f".CURRENT.{dead}.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, ".tmp-notes"])
