"""``synth``, ``import`` and ``build`` check their output the same way before any work: an output that cannot
be created, or is a file, is one line naming it and exit 2 (``synth`` and ``import`` failed on the write
with the errno text of a temporary path, exit 1 or 2)."""
from __future__ import annotations

import os

import pytest

from trainer.cli import main
from test_movielens_import import MOVIES, RATINGS, _dir


@pytest.fixture
def commands(small_data, tmp_path):
    ml = _dir(tmp_path / "src", {"ratings.csv": RATINGS, "movies.csv": MOVIES})
    return {"synth": ["synth", "--users", "10", "--items", "10"], "import": ["import", "movielens", str(ml)],
            "build": ["build", "--data", str(small_data), "--no-tune", "--factors", "8"]}


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("recserve-train: error: "), err
    return err.strip()[len("recserve-train: error: "):]


@pytest.mark.parametrize("cmd", ["synth", "import", "build"])
def test_an_output_under_a_file_is_refused(commands, tmp_path, capsys, cmd):
    afile = tmp_path / "afile"
    afile.write_text("keep\n")
    assert _refused(commands[cmd] + [str(afile / "sub")], capsys) == f"{afile / 'sub'}: {afile} is not a directory"
    what = "bundle root" if cmd == "build" else "data directory"
    assert _refused(commands[cmd] + [str(afile)], capsys) == (f"{afile}: exists and is not a directory "
                                                              f"(a {what} is one)")
    assert afile.read_text() == "keep\n" and sorted(os.listdir(tmp_path)) == ["afile", "src"]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
@pytest.mark.parametrize("cmd", ["synth", "import", "build"])
def test_an_output_that_cannot_be_created_is_refused(commands, capsys, cmd):
    assert _refused(commands[cmd] + ["/proc/x"], capsys) == "/proc/x: cannot create it in /proc (not writable)"


def test_a_new_output_directory_is_still_made(commands, tmp_path, capsys):
    assert main(commands["synth"] + [str(tmp_path / "a" / "b")]) == 0
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["interactions.csv", "items.csv", "users.csv"]
    assert main(commands["import"] + [str(tmp_path / "a" / "b")]) == 0
