"""Bad command-line arguments: exit code 2 and a one-line reason, before any data is read or written."""
from __future__ import annotations

import argparse
import re

import pytest

from trainer.cli import main


def test_arguments_and_the_output_root_are_checked_before_any_work(small_data, tmp_path, capsys):
    assert main(["build", "--data", str(tmp_path / "no-data"), "--evaluate", "--no-evaluate",
                 str(tmp_path / "out")]) == 2          # refused before the (missing) data is read
    assert "contradict each other" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "a-file").write_text("")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "sub"):
        assert main(["build", "--data", str(tmp_path / "no-data"), str(out)]) == 2
        assert "directory" in capsys.readouterr().err
    # a directory no one can create in, root included (mode bits would say root may write to /proc)
    assert main(["build", "--data", str(tmp_path / "no-data"), "/proc/recserve-bundles"]) == 2
    assert "cannot create it in /proc" in capsys.readouterr().err
    assert not any(tmp_path.glob("**/.recserve-probe-*"))


@pytest.mark.parametrize("args, says", [
    (["--threads", "-1"], "argument --threads: must be at least 1, not -1"),
    (["--eval-users", "0"], "argument --eval-users: must be at least 1, not 0"),
    (["--seed", "99999999999999999999"], "argument --seed: must be at most 2147483647, not 99999999999999999999"),
    (["--seed", "2147483648"], "argument --seed: must be at most 2147483647, not 2147483648"),
    (["--als-reg", "nan"], "argument --als-reg: must be a finite number, not nan"),
    (["--als-reg", "-1"], "argument --als-reg: must be at least 0, not -1"),
    (["--label-windows", "0"], "argument --label-windows: must be at least 1, not 0"),
    (["--factors", "16,0"], "argument --factors: must be at least 1, not 0"),
    (["--ranker-trees", "x"], "argument --ranker-trees: an integer, not 'x'"),
])
def test_bad_arguments_are_refused_before_the_data_is_read(args, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["build", "--data", str(tmp_path / "no-data"), str(tmp_path / "out"), *args])
    assert exc.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, low, high, text, says", [
    (int, -10**7, None, "-10000001", "must be at least -10000000, not -10000001"),
    (float, 0, 1234567.5, "2e6", "must be at most 1234567.5, not 2e6"),
    (float, 0, 1e12, "2e12", "must be at most 1e+12, not 2e12"),
])
def test_argument_limits_are_shown_exactly(kind, low, high, text, says):
    from trainer.argtypes import number

    with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(says)}$"):
        number(kind, low, high)(text)


@pytest.mark.parametrize("flag, value", [("--threads", "1_0"), ("--seed", "\u0663"), ("--holdout", "0.0_5"),
                                         ("--factors", "1_6")])
def test_numeric_arguments_are_decimal(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["build", "--data", str(tmp_path), flag, value, str(tmp_path / "out")])
    assert exc.value.code == 2 and f"argument {flag}: " in capsys.readouterr().err


def test_a_bad_argument_is_one_line_not_the_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["build"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "recserve-train build: error: the following arguments are required: out, --data (--help for usage)"]


def test_every_option_with_a_default_says_it_in_its_help():
    """``--seed``, ``--factors``, ``--holdout``, ``synth --users`` ... printed no default."""
    from trainer.cli import _parser

    parser = _parser()
    subs = parser._subparsers._group_actions[0].choices
    for name in ("synth", "import", "build", "evaluate"):
        for a in subs[name]._actions:
            if a.option_strings and not any(a.default is v for v in (None, False, argparse.SUPPRESS)):
                assert "default" in (a.help or ""), (name, a.option_strings)
