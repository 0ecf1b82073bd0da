"""``write_dataset`` (synth, import movielens) is all or nothing: an interrupt while writing leaves the
directory as it was, and one during the final moves waits until they are done."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import trainer.datawrite as dw
from trainer.cli import main
from trainer.datawrite import write_dataset
from trainer.io import load_dataset
from trainer.synth import synth


def _names(d):
    return sorted(p.name for p in d.iterdir())


def _interrupt_on_call(monkeypatch, module, name, call: int):
    """``module.name`` raises KeyboardInterrupt on its ``call``-th call (from 1), as a Ctrl-C would."""
    real, n = getattr(module, name), [0]

    def wrapped(*a, **k):
        n[0] += 1
        if n[0] == call:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("fmt, writer", [("csv", "write_csv"), ("parquet", "write_table")])
def test_an_interrupt_while_writing_leaves_the_directory_as_it_was(tmp_path, monkeypatch, fmt, writer):
    out = tmp_path / "data"
    old, _ = synth(40, 20, seed=1)
    write_dataset(old, out)
    (out / "notes.txt").write_text("mine")
    before = {n: (out / n).read_bytes() for n in _names(out)}
    new, _ = synth(60, 30, seed=2)
    _interrupt_on_call(monkeypatch, dw.pacsv if fmt == "csv" else dw.pq, writer, 2)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(new, out, fmt)
    assert {n: (out / n).read_bytes() for n in _names(out)} == before
    assert _names(tmp_path) == ["data"]                 # no temporary directory left
    fresh = tmp_path / "fresh"
    _interrupt_on_call(monkeypatch, dw.pacsv if fmt == "csv" else dw.pq, writer, 2)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(new, fresh, fmt)
    assert _names(tmp_path) == ["data"]


def test_ctrl_c_during_the_moves_waits_for_them(tmp_path, monkeypatch):
    """A real SIGINT sent while the files are moved in is held until all three are in place."""
    out = tmp_path / "data"
    write_dataset(synth(40, 20, seed=1)[0], out)
    new, _ = synth(60, 30, seed=2)
    real = os.replace
    moved = []

    def replace(src, dst):
        os.kill(os.getpid(), signal.SIGINT)
        real(src, dst)
        moved.append(os.path.basename(dst))

    monkeypatch.setattr(dw.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(new, out)
    assert moved == ["interactions.csv", "items.csv", "users.csv"]
    ds = load_dataset(out)
    assert ds.n_users == new.n_users and len(ds) == len(new)


def test_a_new_format_replaces_the_other_form_of_each_table(tmp_path):
    out = tmp_path / "data"
    write_dataset(synth(40, 20, seed=1)[0], out, "csv")
    new, _ = synth(60, 30, seed=2)
    write_dataset(new, out, "parquet")
    assert _names(out) == ["interactions.parquet", "items.parquet", "users.parquet"]
    ds = load_dataset(out)
    assert len(ds) == len(new) and np.array_equal(ds.item_ids, np.sort(new.item_ids.astype(str)))


def test_ctrl_c_in_synth_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    assert main(["synth", "--users", "40", "--items", "20", str(out)]) == 0
    before = {n: (out / n).read_bytes() for n in _names(out)}
    _interrupt_on_call(monkeypatch, dw.pacsv, "write_csv", 3)
    capsys.readouterr()
    assert main(["synth", "--users", "60", "--items", "30", "--seed", "3", str(out)]) == 130
    assert capsys.readouterr().err == f"recserve-train: error: interrupted; nothing partly written in {out}\n"
    assert {n: (out / n).read_bytes() for n in _names(out)} == before


def test_a_killed_writers_temporary_directory_is_removed_by_the_next_write(tmp_path):
    """A directory of a writer that is gone is removed; one of a writer still running is left alone."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".data.tmp-{int(dead.stdout)}"
    left.mkdir()
    (left / "interactions.csv").write_text("half")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".data.tmp-{running.pid}"
        busy.mkdir()
        write_dataset(synth(40, 20, seed=1)[0], tmp_path / "data")
        assert not left.exists() and busy.exists()
        assert _names(tmp_path) == [busy.name, "data"]
    finally:
        running.kill()
        running.wait()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_fractional_time_is_written_as_it_is(tmp_path, fmt):
    """A MovieLens rating at 881250949.5 was written as 881250949 (cut to its second)."""
    ds, _ = synth(40, 20, seed=1)
    ds.ts[3] += 0.5
    write_dataset(ds, tmp_path / "d", fmt)
    back = load_dataset(tmp_path / "d")
    assert np.array_equal(np.sort(back.ts), np.sort(ds.ts))
    whole, _ = synth(40, 20, seed=1)                       # whole seconds stay integers in the file
    write_dataset(whole, tmp_path / "w", "csv")
    assert "." not in (tmp_path / "w" / "interactions.csv").read_text().splitlines()[1].split(",")[2]
