"""Where each serve setting came from: errors that name it, ``--print-config``, the client's environment,
blanks around variables, and settings checked before they cost anything."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recserve import config as C
from srvutil import ROOT


def _recserve(*args, cwd, env=None, timeout=120) -> subprocess.CompletedProcess:
    """``python -m recserve.cli ARGS`` run from ``cwd`` with only the RECSERVE_* variables given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECSERVE_")}
    return subprocess.run([sys.executable, "-m", "recserve.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("how, says", [
    ("file", "port: must be in [0, 65535], got 70000 (from config file {f})"),
    ("env", "port: must be in [0, 65535], got 70000 (from RECSERVE_PORT)"),
    ("flag", "port: must be in [0, 65535], got 70000 (from --port)"),
])
def test_a_bad_value_names_the_level_it_came_from(tmp_path, how, says):
    """With three levels, "port: must be in [0, 65535]" did not say which one to mend."""
    f = tmp_path / "serve.toml"
    f.write_text("port = 70000\n" if how == "file" else "workers = 1\n")
    env = {"RECSERVE_PORT": "70000"} if how == "env" else {}
    flags = {"port": "70000"} if how == "flag" else {}
    with pytest.raises(ValueError) as exc:
        C.validate(C.load(flags, env=env, file=f))
    assert str(exc.value) == says.format(f=f)
    with pytest.raises(ValueError, match=r"^port: must be in \[0, 65535\], got 70000$"):
        C.validate(C.ServeConfig(port=70000))           # no record of a level: nothing to add
    if how == "file":       # a port given to create_server anew is no longer the file's
        from recserve.server import create_server

        with pytest.raises(ValueError, match=r"^port: must be in \[0, 65535\], got 70001$"):
            create_server("127.0.0.1:70001", bundle=str(tmp_path), cfg=C.load({}, env={}, file=f))


def test_print_config_shows_each_setting_and_its_level(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('workers = 3\nport = 6000\ncap = 40\nevents_dir = "ev"\n')
    r = _recserve("serve", "--config", str(f), "--port", "7000", "--bundle", "b", "--print-config", cwd=tmp_path,
                  env={"RECSERVE_WORKERS": " 1\n", "RECSERVE_LOG_LEVEL": "debug"})
    assert r.returncode == 0, r.stderr
    lines = set(r.stdout.splitlines())
    for line in (f"# config file: {f}", f'bundle = "{tmp_path / "b"}"  # --bundle', "port = 7000  # --port",
                 "workers = 1  # RECSERVE_WORKERS", f"cap = 40  # config file {f}",
                 f'events_dir = "{tmp_path / "ev"}"  # config file {f}', 'log_level = "DEBUG"  # RECSERVE_LOG_LEVEL',
                 "threads = 4  # default", "# mmr_lambda: the bundle's"):
        assert line in lines, (line, r.stdout)
    import tomllib

    assert tomllib.loads(r.stdout)["port"] == 7000      # the output reads back as a config file
    # ... with the same values: a relative path (read against the file's directory), a character outside
    # the BMP (JSON's surrogate pair is no TOML) and DEL (TOML wants it escaped)
    sub = tmp_path / "sub"
    sub.mkdir()
    r = _recserve("serve", "--bundle", "b", "--events-dir", "ev\U0001F600\x7fx", "--print-config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (sub / "again.toml").write_text(r.stdout)
    back = C.load({}, env={}, file=sub / "again.toml")
    assert back.bundle == str(tmp_path / "b") and back.events_dir == str(tmp_path / "ev\U0001F600\x7fx")
    r = _recserve("serve", "--print-config", "--mmr-lambda", "3", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "" and "mmr_lambda: must be in [0, 1], got 3.0 (from --mmr-lambda)" \
        in r.stderr, r.stderr


def test_blanks_around_a_variable_are_dropped_and_blanks_alone_are_unset(tmp_path):
    """Numbers were stripped and text was not: RECSERVE_LOG_LEVEL=" debug" was refused, and
    RECSERVE_HOST=$'127.0.0.1\\n' could not be listened on."""
    f = tmp_path / "serve.toml"
    f.write_text("workers = 3\n")
    cfg = C.load({}, env={"RECSERVE_LOG_LEVEL": " debug", "RECSERVE_HOST": "127.0.0.1\n", "RECSERVE_WORKERS": " ",
                          "RECSERVE_RANKER_ENGINE": "lightgbm "}, file=f)
    assert (cfg.log_level, cfg.host, cfg.workers, cfg.ranker_engine) == ("DEBUG", "127.0.0.1", 3, "lightgbm")
    assert C.load({}, env={"RECSERVE_CONFIG": f" {f} "}).workers == 3
    with pytest.raises(ValueError, match=r"log_level: one of .*, got 'loud' \(from RECSERVE_LOG_LEVEL\)"):
        C.validate(C.load({}, env={"RECSERVE_LOG_LEVEL": "loud"}))     # as given, not upper-cased


def test_workers_are_bounded_before_the_cpu_list_is_built(tmp_path):
    """--workers 1000000000 --cpu-affinity 0 built a list that long first: a MemoryError traceback (or 8 GB)
    instead of the bound's one line."""
    r = _recserve("serve", "--bundle", "b", "--workers", "1000000000", "--cpu-affinity", "0", cwd=tmp_path,
                  timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == \
        "recserve serve: workers: must be in [0, 1024], got 1000000000 (from --workers)", r.stderr


def test_the_debug_delay_is_checked_and_named(tmp_path):
    """RECSERVE_DEBUG_DELAY_MS=abc said "could not convert string to float: 'abc'", naming nothing."""
    r = _recserve("serve", "--bundle", "b", cwd=tmp_path, env={"RECSERVE_DEBUG_DELAY_MS": "abc"})
    assert r.returncode == 2 and r.stderr.strip() == \
        "recserve serve: environment RECSERVE_DEBUG_DELAY_MS: milliseconds in [0, 600000], got 'abc'", r.stderr
    assert C.debug_delay({"RECSERVE_DEBUG_DELAY_MS": " 250 "}) == 0.25 and C.debug_delay({}) == 0.0


@pytest.mark.parametrize("env, says", [
    ({"RECSERVE_ADRR": "127.0.0.1:1"},
     "recserve health: environment: RECSERVE_ADRR is not a recserve setting (did you mean RECSERVE_ADDR?)"),
    ({"RECSERVE_ADDR": "bogus"},
     "recserve health: environment RECSERVE_ADDR: expected HOST:PORT with a port in 1..65535, got 'bogus'"),
])
def test_the_client_refuses_a_bad_environment(tmp_path, env, says):
    """The client took RECSERVE_ADRR silently (then called the default address) and blamed --addr, which
    was not given, for a bad RECSERVE_ADDR."""
    r = _recserve("health", "--timeout", "2", cwd=tmp_path, env=env)
    assert r.returncode == 2 and r.stderr.strip() == says, r.stderr


def test_the_client_reads_an_empty_address_as_unset_and_drops_blanks(server):
    """RECSERVE_ADDR= was refused as "--addr ... got ''"; a leading blank failed as a call error."""
    from recserve import cli

    def parsed(env):
        args = cli.build_parser().parse_args(["health"])
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("RECSERVE_")}
        os.environ.update(env)
        try:
            return cli._client_env(args), args
        finally:
            for k in env:
                os.environ.pop(k)
            os.environ.update(saved)

    bad, args = parsed({"RECSERVE_ADDR": "", "RECSERVE_TOKEN": "  "})
    assert bad is None and (args.addr, args.token) == ("127.0.0.1:50051", None)
    r = _recserve("health", "--timeout", "10", cwd=ROOT, env={"RECSERVE_ADDR": f" {server.addr}\n"})
    assert r.returncode == 0 and "SERVING" in r.stdout, r.stderr


def test_a_long_value_is_cut_in_its_error(tmp_path):
    """A value nested 300 deep printed a 600-character line; a megabyte string would print a megabyte."""
    f = tmp_path / "serve.toml"
    f.write_text("workers = " + "[" * 300 + "]" * 300 + "\n")
    with pytest.raises(ValueError) as exc:
        C.load({}, env={}, file=f)
    assert str(exc.value).endswith("... (600 characters)") and len(str(exc.value)) < 160 + len(str(f))
    with pytest.raises(ValueError, match=r"got 'xxx+\.\.\. \(100002 characters\) \(from RECSERVE_LOG_LEVEL\)$"):
        C.validate(C.load({}, env={"RECSERVE_LOG_LEVEL": "x" * 100_000}))
