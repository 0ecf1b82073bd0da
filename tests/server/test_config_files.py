"""Serve settings from a TOML file, the environment and flags: paths, cap and candidates, bounds, errors."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from recserve import config as C
from recserve.events import EventStore
from srvutil import ROOT


def _recserve(*args, cwd, env=None) -> subprocess.CompletedProcess:
    """``python -m recserve.cli ARGS`` run from ``cwd`` with only the RECSERVE_* variables given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECSERVE_")}
    return subprocess.run([sys.executable, "-m", "recserve.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


def test_relative_paths_in_a_config_file_are_read_from_its_directory(tmp_path):
    """``events_dir = "../store"`` in /x/cfg/serve.toml is /x/store whatever the working directory (a
    systemd unit runs in /); relative flags and environment values stay relative to the working directory."""
    (tmp_path / "cfg").mkdir()
    f = tmp_path / "cfg" / "serve.toml"
    f.write_text('bundle = "../root"\nevents_dir = "../store"\ntls_cert = "tls/c.pem"\ntls_key = "/abs/k.pem"\n'
                 'tls_client_ca = ""\ntokens_file = "./tokens"\n')
    cfg = C.load({}, env={}, file=f)
    here = str(tmp_path / "cfg")
    assert cfg.bundle == str(tmp_path / "root") and cfg.events_dir == str(tmp_path / "store")
    assert cfg.tls_cert == os.path.join(here, "tls/c.pem") and cfg.tls_key == "/abs/k.pem"
    assert cfg.tokens_file == os.path.join(here, "tokens") and cfg.tls_client_ca == ""
    cfg = C.load({"events_dir": "ev"}, env={"RECSERVE_BUNDLE": "b"}, file=f)
    assert (cfg.bundle, cfg.events_dir) == ("b", "ev")
    EventStore(tmp_path / "store").close()
    r = _recserve("store", "stats", "--config", str(f), cwd="/")
    assert r.returncode == 0 and str(tmp_path / "store") in r.stdout, r.stderr


def test_a_relative_path_is_read_as_text_not_through_a_symlinked_directory(tmp_path):
    """The file named by a symlink to ``real/a/b``: ``../../bundles`` is the link's grandparent's, as
    ``--print-config`` showed and README says; the server opened ``real/bundles`` (the kernel reads ``..``
    after the link)."""
    (tmp_path / "real" / "a" / "b").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "link").symlink_to(tmp_path / "real" / "a" / "b")
    (tmp_path / "real" / "a" / "b" / "serve.toml").write_text('bundle = "../../bundles"\n')
    cfg = C.load({}, env={}, file=tmp_path / "etc" / "link" / "serve.toml")
    assert cfg.bundle == str(tmp_path / "bundles")
    assert f'bundle = "{tmp_path / "bundles"}"' in C.describe(cfg)
    absolute = f"{tmp_path}/etc/link/../x"                 # an absolute path is the kernel's, as a flag's
    (tmp_path / "real" / "a" / "b" / "serve.toml").write_text(f'bundle = "{absolute}"\n')
    assert C.load({}, env={}, file=tmp_path / "etc" / "link" / "serve.toml").bundle == absolute


@pytest.mark.parametrize("content, says", [
    ("grace = 1" + "0" * 400, r"grace: 1000.* is too large for a number$"),
    ("mmr_lambda = -1" + "0" * 310, r"mmr_lambda: -1000.* is too large for a number$"),
    ("workers = 1" + "0" * 5000, r"not valid TOML for recserve: an integer of more than 4300 digits$"),
    ('events_dir = "ev\\u0000x"', r"events_dir: a path cannot hold a NUL character, got 'ev\\x00x'$"),
])
def test_values_no_setting_can_hold_are_refused_naming_the_file(tmp_path, content, says):
    """Before: a traceback (OverflowError), a message naming no file or setting ("Exceeds the limit...",
    "embedded null byte")."""
    f = tmp_path / "serve.toml"
    f.write_text(content + "\n")
    with pytest.raises(ValueError, match=f"^config file {re.escape(str(f))}: {says}"):
        C.load({}, env={}, file=f)


def test_a_flag_naming_no_such_user_says_it_came_from_the_flag(tmp_path):
    with pytest.raises(ValueError, match=r"^bundle: cannot expand '~nosuchuser-rs/x' \(no such user\) "
                                         r"\(from --bundle\)$"):
        C.load({"bundle": "~nosuchuser-rs/x"}, env={})


def test_a_number_too_large_for_a_float_is_one_line_from_the_command(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text("grace = 1" + "0" * 400 + "\n")
    r = _recserve("serve", "--print-config", "--config", str(f), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "too large for a number" in r.stderr, r.stderr


@pytest.mark.parametrize("how", ["file", "env", "flag"])
def test_a_tilde_is_the_home_directory_not_a_directory_named_tilde(tmp_path, how):
    """``events_dir = "~/ev"`` once opened (or created) ./~/ev in the working directory: the server ran with
    an empty store in the wrong place."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    EventStore(home / "ev").close()
    f = tmp_path / "serve.toml"
    f.write_text('events_dir = "~/ev"\n')
    args = {"file": ["--config", str(f)], "env": [], "flag": ["--events-dir=~/ev"]}[how]
    env = {"HOME": str(home), **({"RECSERVE_EVENTS_DIR": "~/ev"} if how == "env" else {})}
    r = _recserve("store", "stats", *args, cwd=work, env=env)
    assert r.returncode == 0 and str(home / "ev") in r.stdout, r.stderr
    assert not (work / "~").exists()
    f.write_text('events_dir = "~nosuchuser-rs/ev"\n')
    with pytest.raises(ValueError, match="events_dir: cannot expand '~nosuchuser-rs/ev' .no such user."):
        C.load({}, env={}, file=f)


def test_a_config_file_named_with_a_tilde_is_found(tmp_path):
    """RECSERVE_CONFIG=~/serve.toml (no shell expands a tilde inside a variable's value)."""
    (tmp_path / "serve.toml").write_text("workers = 3\n")
    r = subprocess.run([sys.executable, "-c", "from recserve import config as C; print(C.load({}).workers)"],
                       capture_output=True, text=True, cwd="/", timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
                            "RECSERVE_CONFIG": "~/serve.toml"})
    assert r.stdout.strip() == "3", r.stderr


@pytest.mark.parametrize("flags, env, toml, kept", [
    ({"cap": 50}, {}, "candidates = 120", {"cap": 50}),
    ({}, {"RECSERVE_CAP": "50"}, "candidates = 120", {"cap": 50}),
    ({"candidates": 120}, {"RECSERVE_CAP": "50"}, "", {"candidates": 120}),
    ({}, {"RECSERVE_CANDIDATES": "120"}, "cap = 50", {"candidates": 120}),
    ({"cap": 50}, {}, "", {"cap": 50}),
])
def test_cap_and_candidates_follow_the_precedence_order(bundle, tmp_path, flags, env, toml, kept):
    """``candidates`` N sets the cap to N, so the two are one setting for the precedence order (before, a
    ``candidates`` in the file overrode a ``cap`` flag or variable)."""
    from recserve.pipeline.recommender import Recommender

    f = tmp_path / "serve.toml"
    f.write_text(toml + "\n")
    overrides = C.load(flags, env=env, file=f).pipeline_overrides()
    assert overrides == kept
    assert Recommender(bundle, None, overrides).cap == next(iter(kept.values()))


@pytest.mark.parametrize("flags, env, toml, says", [
    ({}, {}, "cap = 50\ncandidates = 120", "both set in config file {f}"),
    ({}, {"RECSERVE_CAP": "50", "RECSERVE_CANDIDATES": "120"}, "", "both set in the environment"),
    ({"cap": 50, "candidates": 120}, {}, "", "both set as flags (--cap, --candidates)"),
])
def test_cap_and_candidates_at_one_level_are_refused(tmp_path, flags, env, toml, says):
    f = tmp_path / "serve.toml"
    f.write_text(toml + "\n")
    with pytest.raises(ValueError, match=re.escape("cap and candidates are " + says.format(f=f))):
        C.load(flags, env=env, file=f)


def test_cap_is_a_serve_flag(shared_root, tmp_path):
    r = _recserve("serve", "--help", cwd=tmp_path)
    assert "RECSERVE_MAX_PER_CREATOR" in r.stdout and "--print-config" in r.stdout    # the three names, said
    assert "--cap CAP" in r.stdout and "(default: the bundle's)" in r.stdout.split("--cap CAP", 1)[1]
    r = _recserve("serve", "--bundle", str(shared_root), "--port", "0", "--cap", "0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == \
        "recserve serve: cap: must be in [1, 100000], got 0 (from --cap)", r.stderr


def test_max_per_creator_has_an_upper_bound(shared_root, tmp_path):
    """A huge --max-per-creator was blamed on the bundle ("bundle refused: ... Python int too large")."""
    r = _recserve("serve", "--bundle", str(shared_root), "--port", "0", "--max-per-creator",
                  "99999999999999999999", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == \
        "recserve serve: max_per_creator: must be in [0, 10000], got 99999999999999999999 (from --max-per-creator)", \
        r.stderr
    assert C.validate(C.load({"max_per_creator": 10_000}, env={})).max_per_creator == 10_000


@pytest.mark.parametrize("content, how, says", [
    (None, "flag", "config file {f}: cannot read it: No such file or directory"),
    (None, "env", "config file {f} (from RECSERVE_CONFIG): cannot read it: No such file or directory"),
    ("dir", "env", "config file {f} (from RECSERVE_CONFIG): cannot read it: Is a directory"),
    (b"workers = 1\n# caf\xe9\n", "flag", "config file {f}: not UTF-8 text (byte 0xe9 on line 2)"),
    (b"\xef\xbb\xbfworkers = 1\n", "env", "config file {f} (from RECSERVE_CONFIG): starts with a byte order mark"),
    (b"cpu-affinity = 'off'\ncpu_affinity = 'auto'\n", "flag",
     "config file {f}: 'cpu-affinity' and 'cpu_affinity' are one setting: keep one"),
    ("fifo", "flag", "config file {f}: cannot read it: not a regular file"),
    (b"workers = " + b"[" * 1000 + b"]" * 1000 + b"\n", "env",
     "config file {f} (from RECSERVE_CONFIG): not valid TOML for recserve: arrays or tables nested too deeply"),
])
def test_config_file_errors_name_the_file(shared_root, tmp_path, content, how, says):
    """Each is one line naming the file and where its name came from (before: a bare "[Errno 2] ...", or a
    codec error naming no file); a key spelled both ways was read, the last one winning."""
    f = tmp_path / "serve.toml"
    if content == "dir":
        f.mkdir()
    elif content == "fifo":            # the open blocked until a writer came; /dev/zero never ended
        os.mkfifo(f)
    elif content is not None:
        f.write_bytes(content)
    args, env = (["--config", str(f)], {}) if how == "flag" else ([], {"RECSERVE_CONFIG": str(f)})
    r = _recserve("serve", "--bundle", str(shared_root), "--port", "0", *args, cwd=tmp_path, env=env)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("recserve serve: " + says.format(f=f)), r.stderr


def test_every_setting_has_a_flag_a_variable_and_a_file_key_named_alike(tmp_path):
    """The naming rule the README gives: setting ``max_per_creator`` is flag ``--max-per-creator``, variable
    ``RECSERVE_MAX_PER_CREATOR`` and key ``max_per_creator`` or ``max-per-creator`` in the file."""
    import dataclasses

    from recserve.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {opt: a.dest for a in serve._actions for opt in a.option_strings}
    for f in dataclasses.fields(C.ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flags.get(flag) == f.name, flag
        assert C.env_name(f.name) == "RECSERVE_" + f.name.upper()
    (tmp_path / "a.toml").write_text("max-per-creator = 2\n")
    (tmp_path / "b.toml").write_text("[serve]\nmax_per_creator = 2\n")
    for name in ("a.toml", "b.toml"):
        assert C.load({}, env={}, file=tmp_path / name).max_per_creator == 2


def test_an_empty_value_is_unset_in_the_environment_but_clears_as_a_flag(tmp_path):
    f = tmp_path / "serve.toml"
    f.write_text('tokens_file = "/etc/tokens"\n')
    assert C.load({}, env={"RECSERVE_TOKENS_FILE": ""}, file=f).tokens_file == "/etc/tokens"
    assert C.load({"tokens_file": ""}, env={}, file=f).tokens_file == ""
    assert C.load({"config": ""}, env={"RECSERVE_CONFIG": str(f)}).tokens_file == "/etc/tokens"


@pytest.mark.parametrize("text", ["1_0", "\u0663", "0x10", "1e1", "+", " 1 2 "])
def test_integer_settings_are_decimal_ascii_digits(text):
    """int() read RECSERVE_WORKERS=1_0 as 10 and an Arabic-Indic 3 as 3."""
    says = f"environment RECSERVE_WORKERS: workers: cannot read {text.strip()!r} as an integer"
    with pytest.raises(ValueError, match=re.escape(says)):
        C.load({}, env={"RECSERVE_WORKERS": text})


def test_number_settings_are_decimal_ascii_digits(tmp_path):
    for good, v in (("3", 3), (" -2 ", -2), ("+7", 7)):
        assert C.load({}, env={"RECSERVE_PORT": good}).port == v
    for good, v in (("1.5", 1.5), (".5", 0.5), ("1e-3", 1e-3), ("2.", 2.0)):
        assert C.load({}, env={"RECSERVE_GRACE": good}).grace == v
    for bad in ("1_0.5", "0x1p3", "\u0663.5", "1,5"):
        with pytest.raises(ValueError, match="RECSERVE_GRACE: grace: cannot read"):
            C.load({}, env={"RECSERVE_GRACE": bad})
    r = _recserve("serve", "--workers", "1_0", cwd=tmp_path)
    assert r.returncode == 2 and "argument --workers: invalid integer value: '1_0'" in r.stderr, r.stderr
