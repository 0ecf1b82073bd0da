"""``recserve-train evaluate`` on the bundle's own data reproduces the recorded evaluation: the build's user
sample, which the record states."""
from __future__ import annotations

import json

from recserve.bundle import resolve
from trainer.cli import main

FAST = ["--factors", "8", "--no-tune", "--label-windows", "1", "--no-progress"]


def test_evaluate_on_the_own_data_reproduces_the_record(small_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", "--data", str(small_data), str(out), "--seed", "3", "--eval-users", "30", *FAST]) == 0
    assert "evaluated users: 30 (at most 30, drawn with seed 3; fewer than 200" in capsys.readouterr().out
    manifest = resolve(out) / "manifest.json"
    built = json.loads(manifest.read_text())["evaluation"]
    assert (built["users"], built["seed"], built["eval_users"]) == (30, 3, 30)

    assert main(["evaluate", str(out), "--data", str(small_data), "--no-progress"]) == 0
    assert "evaluated users: 30 (at most 30, drawn with seed 3; fewer than 200" in capsys.readouterr().out
    assert json.loads(manifest.read_text())["evaluation"] == built
    assert "drawn with seed 3" in (resolve(out) / "report.html").read_text()

    # another sample asked for: another record, which says which sample it is
    assert main(["evaluate", str(out), "--data", str(small_data), "--seed", "4", "--no-progress"]) == 0
    other = json.loads(manifest.read_text())["evaluation"]
    assert (other["users"], other["seed"], other["eval_users"]) == (30, 4, 30)
    assert other["methods"] != built["methods"]
