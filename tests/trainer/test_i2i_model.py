"""``recserve-train build --i2i-model / --ease-max-items``: which item-to-item model a build tries and keeps,
and EASE refused (forced) or passed over (auto) before any training when its dense matrices would not fit
in the memory available."""
from __future__ import annotations

import json

import pytest

from cliutil import run_cli
from recserve.bundle import resolve
from trainer import artifacts


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("i2i") / "data"
    run_cli("synth", "--users", 200, "--items", 120, "--seed", 5, d, check=True)
    return d


def _build(data, out, *flags):
    p = run_cli("build", "--data", data, out, "--factors", 8, "--ranker-users", 200, "--no-evaluate",
                "--ranker-trees", 5, *flags, check=True)
    m = json.loads((resolve(out) / "manifest.json").read_text())
    return p, m["training"]["config"], m["training"]["tuning"].get("i2i")


@pytest.mark.parametrize("flags, tried, kept", [
    ((), {"cosine", "ease"}, None),                                 # auto, 120 items: both tuned, the better kept
    (("--i2i-model", "cosine"), {"cosine"}, "cosine"),
    (("--i2i-model", "ease"), {"ease"}, "ease"),
    (("--ease-max-items", "119"), {"cosine"}, "cosine"),           # auto above the gate: cosine only
])
def test_the_models_a_tuned_build_tries_and_keeps(data, tmp_path, flags, tried, kept):
    _p, cfg, report = _build(data, tmp_path / "b", *flags)
    assert {m["i2i_model"] for m in report["models"]} == tried
    best = max(report["models"], key=lambda r: (r["ndcg@10"], r["recall@50"]))
    assert cfg["i2i_model"] == report["chosen"]["i2i_model"] == best["i2i_model"]
    if kept:
        assert cfg["i2i_model"] == kept


def test_a_size_gate_with_a_forced_model_is_refused(data, tmp_path):
    p = run_cli("build", "--data", data, tmp_path / "b", "--i2i-model", "cosine", "--ease-max-items", 5)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "recserve-train: error: --ease-max-items applies to --i2i-model auto, not cosine"], p.stderr
    assert not (tmp_path / "b").exists()


def test_an_untuned_build_takes_the_forced_model(data, tmp_path):
    _p, cfg, _ = _build(data, tmp_path / "b", "--no-tune", "--i2i-model", "cosine")
    assert cfg["i2i_model"] == "cosine"


def test_the_memory_ease_needs_is_said():
    need = artifacts.ease_bytes(10_000)
    assert artifacts.ease_memory_shortfall(10_000, available=need) is None
    assert artifacts.ease_memory_shortfall(10_000, available=need - 1) is not None
    assert artifacts.ease_memory_shortfall(10_000, available=2 ** 30) == (
        "EASE on 10,000 items needs about 2.3 GiB of memory (3 dense 10,000 x 10,000 matrices) and 1.0 GiB is "
        "available")
    assert artifacts.ease_memory_shortfall(300, available=1000).endswith("and 0 MiB is available")
    assert artifacts.available_memory() > 0           # read from /proc/meminfo (and a cgroup limit) on Linux


def test_help_says_the_builds_default_size_gate():
    from trainer.build import DEFAULT_CFG

    p = run_cli("build", "--help", check=True)
    assert f"(default {DEFAULT_CFG['ease_max_items']:,})" in " ".join(p.stdout.split())
    assert DEFAULT_CFG["i2i_model"] == "auto"


@pytest.mark.parametrize("tune", [False, True])
def test_ease_that_does_not_fit_is_refused_when_forced_and_passed_over_by_auto(data, tmp_path, monkeypatch,
                                                                               capsys, tune):
    from trainer.build import build
    from trainer.io import DataError, load_dataset
    from trainer.timing import Timer

    ds = load_dataset(data)
    monkeypatch.setattr(artifacts, "available_memory", lambda: 1000)
    cfg = {"factors": 8, "ranker_users": 200, "ranker_trees": 5, "tune": tune}
    with pytest.raises(DataError, match=r"^EASE on 120 items needs about 1 MiB .* build with --i2i-model "
                                        r"cosine$"):
        build(ds, tmp_path / "forced", {**cfg, "i2i_model": "ease"}, timer=Timer(verbose=False))
    assert not (tmp_path / "forced").exists() or not any((tmp_path / "forced").iterdir())   # nothing written
    path = build(ds, tmp_path / "auto", cfg, timer=Timer(verbose=False))
    note = "EASE on 120 items needs about 1 MiB of memory (3 dense 120 x 120 matrices) and 0 MiB is available"
    assert f"note: {note}: the item-to-item model is co-occurrence cosine" in capsys.readouterr().err
    m = json.loads((resolve(path.parent) / "manifest.json").read_text())
    assert m["training"]["config"]["i2i_model"] == "cosine"
    assert m["training"]["config"]["ease_max_items"] == 10_000             # the setting, as it was
    assert m["training"]["tuning"]["i2i_note"] == note
    if tune:
        assert {r["i2i_model"] for r in m["training"]["tuning"]["i2i"]["models"]} == {"cosine"}
