"""Ctrl-C during a build: one line, exit 130, nothing published and no temporary directory left; SIGTERM
(exit 143) and SIGHUP (exit 129) alike."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from recserve.bundle import verify

from cliutil import REPO


@pytest.fixture(scope="module")
def build_data(tmp_path_factory):
    """Enough data for a build of several seconds, so that a signal lands inside a step."""
    from trainer.datawrite import write_dataset
    from trainer.synth import synth

    d = tmp_path_factory.mktemp("interrupt_data")
    ds, _ = synth(1000, 500, seed=5)
    write_dataset(ds, d)
    return d


def _interrupt(data, root, marker: str, sig: int = signal.SIGINT):
    """Start a build into ``root``, send ``sig`` once stderr shows ``marker``; (exit code, stderr after
    the signal, whole stderr, names in ``root`` when the signal was sent)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "build", "--data", str(data), str(root),
                             "--factors", "16", "--no-tune", "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))     # not ignored (nohup)
    seen, at_signal = [], None
    deadline = time.time() + 240
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(marker):
                at_signal = sorted(p.name for p in root.iterdir()) if root.exists() else []
                proc.send_signal(sig)
                break
            if time.time() > deadline:
                break
        after = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    if at_signal is None:
        pytest.fail(f"the build never reached {marker} (exit {proc.returncode}): {''.join(seen)[-500:]}")
    return proc.returncode, after, "".join(seen) + after, at_signal


def test_ctrl_c_while_training_publishes_nothing(build_data, tmp_path):
    root = tmp_path / "bundles"
    rc, after, err, _ = _interrupt(build_data, root, "[ranker_train] ...")
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert after.splitlines() == ["recserve-train: error: interrupted; nothing was published"], err
    assert not (root / "CURRENT").exists()
    assert not root.exists() or not list(root.iterdir())


def test_ctrl_c_while_evaluating_the_staged_version_keeps_current(build_data, demo_bundle, tmp_path):
    """The evaluation runs on the staged temporary directory: an interrupt there removes it and leaves
    the published version as it was."""
    root = tmp_path / "bundles"
    shutil.copytree(demo_bundle, root)
    before = sorted(p.name for p in root.iterdir())
    current = (root / "CURRENT").read_text()
    rc, after, err, at_signal = _interrupt(build_data, root, "[evaluate] ...")
    assert any(n.startswith(".tmp-") for n in at_signal), at_signal     # the signal came while staged
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert after.splitlines() == ["recserve-train: error: interrupted; nothing was published"], err
    assert (root / "CURRENT").read_text() == current
    assert sorted(p.name for p in root.iterdir()) == before         # no temporary directory, no new version
    verify(root)


def test_sigterm_while_evaluating_the_staged_version_is_handled_as_ctrl_c(build_data, demo_bundle, tmp_path):
    """What ``timeout``, systemd and Kubernetes send: the staged version is removed, CURRENT kept, one line,
    exit 128 + 15."""
    root = tmp_path / "bundles"
    shutil.copytree(demo_bundle, root)
    before = sorted(p.name for p in root.iterdir())
    current = (root / "CURRENT").read_text()
    rc, after, err, at_signal = _interrupt(build_data, root, "[evaluate] ...", signal.SIGTERM)
    assert any(n.startswith(".tmp-") for n in at_signal), at_signal
    assert rc == 143, err
    assert after.splitlines() == ["recserve-train: error: interrupted by SIGTERM; nothing was published"], err
    assert (root / "CURRENT").read_text() == current
    assert sorted(p.name for p in root.iterdir()) == before
    verify(root)


def test_sighup_while_training_publishes_nothing(build_data, tmp_path):
    root = tmp_path / "bundles"
    rc, after, err, _ = _interrupt(build_data, root, "[ranker_train] ...", signal.SIGHUP)
    assert rc == 129, err
    assert after.splitlines() == ["recserve-train: error: interrupted by SIGHUP; nothing was published"], err
    assert not root.exists() or not list(root.iterdir())


def test_main_leaves_the_signal_handlers_as_it_found_them(tmp_path):
    from trainer.cli import main

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert main(["verify", str(tmp_path)]) == 3
    assert {s: signal.getsignal(s) for s in before} == before


def test_ctrl_c_as_the_version_is_published_names_it(small_data, tmp_path, monkeypatch, capsys):
    """A Ctrl-C between the version directory's rename and CURRENT's replacement left a complete version
    that nothing named (and no later build removes) and said "nothing was published"."""
    from trainer import writer
    from trainer.cli import main

    real = writer.set_current

    def with_a_sigint(root, version):
        os.kill(os.getpid(), signal.SIGINT)
        real(root, version)

    monkeypatch.setattr(writer, "set_current", with_a_sigint)
    out = tmp_path / "out"
    rc = main(["build", "--data", str(small_data), str(out), "--factors", "8", "--no-tune", "--no-evaluate",
               "--label-windows", "1", "--no-progress"])
    assert rc == 130
    current = (out / "CURRENT").read_text().strip()
    versions = [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert versions == [current], versions
    assert f"CURRENT names the new version {current} already" in capsys.readouterr().err


def test_a_stop_signal_while_the_interpreter_exits_leaves_the_commands_exit_code(tmp_path):
    """``recserve-train`` as installed: once the command has returned, a SIGTERM while the interpreter
    shuts down (an atexit hook sends it here, deterministically) no longer kills it with a silent 143
    after a build that published; the exit code is the command's."""
    out = tmp_path / "synth"
    code = ("import atexit, os, signal, sys\n"
            "from importlib.metadata import entry_points\n"
            "ep, = [e for e in entry_points(group='console_scripts') if e.name == 'recserve-train']\n"
            "atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))\n"
            f"sys.argv = ['recserve-train', 'synth', '--users', '60', '--items', '30', {str(out)!r}]\n"
            "sys.exit(ep.load()())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert (out / "interactions.csv").exists()


@pytest.mark.parametrize("closed", [1, 2])
def test_a_closed_stdout_or_stderr_does_not_fail_a_finished_command(tmp_path, closed):
    """The exit's flush skips a stream that is closed (Python's sys.stdout is None then): it raised
    AttributeError, exit 1, after the command had written its data."""
    out = tmp_path / "synth"
    code = ("import sys\nfrom trainer.cli import entry\n"
            f"sys.argv = ['recserve-train', 'synth', '--users', '60', '--items', '30', {str(out)!r}]\n"
            "sys.exit(entry())\n")
    proc = subprocess.run([sys.executable, "-c", code], stderr=subprocess.PIPE if closed == 1 else None,
                          text=True, timeout=120, cwd=tmp_path, preexec_fn=lambda: os.close(closed))
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert (out / "interactions.csv").exists()
