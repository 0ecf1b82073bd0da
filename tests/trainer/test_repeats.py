"""Interactions that repeat another in every column (a log appended twice, a second view the same day in
dates without hours) are read as they are, and counted in the data report and a note; before, nothing
said so."""
from __future__ import annotations

import random

from trainer.cli import main
from trainer.io import load_dataset


def _write(d, rows):
    d.mkdir()
    (d / "interactions.csv").write_text("user_id,item_id,timestamp,event,value\n"
                                        + "".join(f"{u},{i},{t},{e},{v}\n" for u, i, t, e, v in rows))
    (d / "items.csv").write_text("item_id,category,price\n" + "".join(f"i{k},c{k % 3},1.5\n" for k in range(30)))


def _rows(n=1500, seed=0):
    rnd = random.Random(seed)
    return [(f"u{k % 100}", f"i{rnd.randrange(30)}", 1_700_000_000 + rnd.randrange(10**6),
             rnd.choice(["view", "click"]), "") for k in range(n)]


def test_repeats_are_read_and_counted(tmp_path):
    rows = _rows()
    assert len(set(rows)) == len(rows)
    again = rows + rows[:300] + rows[:10]             # the first 300 twice more or once more
    random.Random(1).shuffle(again)
    _write(tmp_path / "twice", again)
    ds = load_dataset(tmp_path / "twice")
    assert len(ds.ts) == len(again) and ds.report["repeated_interactions"] == 310


def test_a_different_value_event_time_or_item_is_no_repeat(tmp_path):
    base = ("u1", "i1", 1_700_000_000, "view", "")
    rows = _rows() + [base, ("u1", "i1", 1_700_000_001, "view", ""), ("u1", "i1", 1_700_000_000, "click", ""),
                      ("u1", "i2", 1_700_000_000, "view", ""), ("u1", "i3", 1_700_000_000, "purchase", "4"),
                      ("u1", "i3", 1_700_000_000, "purchase", "2"), base]
    _write(tmp_path / "d", rows)
    assert load_dataset(tmp_path / "d").report["repeated_interactions"] == 1


def test_the_build_notes_the_repeats(tmp_path, capsys):
    rows = _rows()
    _write(tmp_path / "d", rows + rows[:40])
    assert main(["build", "--data", str(tmp_path / "d"), "--holdout", "0", "--no-tune", "--no-progress",
                 str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert "note: 40 of 1540 interactions repeat another in every column" in capsys.readouterr().err
