"""Serving configuration. One precedence order: flags > RECSERVE_* env vars > TOML file > bundle defaults.

Bundle defaults are the serving ``params`` of the bundle manifest (``mmr_lambda``, ``max_per_creator``,
...); the overrides named in :data:`PIPELINE_KEYS` replace them when set at a higher level.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import socket
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

# settings that name files or directories: ``~`` expanded at every level; relative ones from a config file are
# read against the file's directory, those from flags and the environment against the working directory
PATH_KEYS = ("bundle", "events_dir", "tls_cert", "tls_key", "tls_client_ca", "tokens_file")
PIPELINE_KEYS = ("mmr_lambda", "max_per_creator", "cap", "candidates", "ef", "similar_ef", "ranker_engine",
                 "novelty_boost", "new_item_days", "cold_order", "cold_trending")


@dataclass
class ServeConfig:
    bundle: str = ""
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 2
    threads: int = 4                   # per worker: threads for event-store writes (fsync); bundle loads have their own
    cpu_affinity: str = "auto"         # "auto": worker i on the i-th allowed CPU when workers <= CPUs; "off";
                                       # or a CPU list "0,2,4" (worker i on the (i mod n)-th)
    max_concurrent_rpcs: int = 64      # per worker, reads and writes each; beyond -> RESOURCE_EXHAUSTED
    max_health_watches: int = 256      # open health Watch streams per worker; beyond -> RESOURCE_EXHAUSTED
    share_work: int = 1                # 1: a Recommend that would wait for its worker's busy compute slot
                                       # runs on an idle sibling worker (recserve.sharing); 0: off
    max_message_bytes: int = 4 << 20
    reload_interval: float = 1.0       # seconds between CURRENT polls; 0 disables hot reload
    grace: float = 10.0                # SIGTERM drain, seconds
    drain_delay: float = 0.0           # SIGTERM: seconds still serving while health says NOT_SERVING, so
                                       # that load balancers polling health stop routing here first
    events_dir: str = ""               # default: <bundle root>/events
    events_per_user: int = 1000        # real-time events kept per user (a Recommend reads them all)
    events_map_mb: int = 65536         # the event store's LMDB map size (address space, not disk)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""            # set -> mTLS (client certificates required)
    tokens_file: str = ""
    metrics_port: int = 0              # 0 = no metrics endpoint
    log_level: str = "INFO"
    mmr_lambda: float | None = None
    max_per_creator: int | None = None
    cap: int | None = None             # merged candidates ranked per request, the source quotas unchanged
    candidates: int | None = None      # candidates ranked per request: sets cap, source quotas scaled to it
    ef: int | None = None              # HNSW search breadth of Recommend's ANN source
    similar_ef: int | None = None      # ... and of SimilarItems (default: the bundle's tuned similar_ef)
    ranker_engine: str | None = None   # "forest" (default, the Cython evaluator) or "lightgbm"
    novelty_boost: float | None = None  # added to the [0, 1] relevance of new items (0 = off)
    new_item_days: float | None = None  # an item is new for this many days after created_at (14)
    cold_order: str | None = None      # a cold request's order: "trending" (the bundle's default) or "ranker"
    cold_trending: str | None = None   # its trending list: the request's "country" (default) or "global"

    def pipeline_overrides(self) -> dict:
        return {k: getattr(self, k) for k in PIPELINE_KEYS if getattr(self, k) is not None}


_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(inf|infinity|nan)", re.IGNORECASE)


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` for an error message, cut at ``limit`` characters (a config value may be megabytes)."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit - 4]}... ({len(r)} characters)"


def integer(text) -> int:
    """A decimal integer in ASCII digits, blanks around it allowed: not ``1_0``, ``0x10`` or ``٣`` (int()
    takes the first and the last). The type of the serve flags and environment variables that are integers."""
    s = str(text).strip()
    if not _INTEGER.fullmatch(s):
        raise ValueError(f"not a decimal integer: {text!r}")
    return int(s)


def number(text) -> float:
    """A decimal number in ASCII digits (``1.5``, ``-2``, ``1e-3``; ``inf`` and ``nan`` are read, and refused
    by :func:`validate` where a setting must be finite): not ``1_0`` or ``0x1p3``."""
    s = str(text).strip()
    if not _NUMBER.fullmatch(s):
        raise ValueError(f"not a decimal number: {text!r}")
    return float(s)


def _coerce(f: dataclasses.Field, value, typed: bool = False):
    """``value`` as the field's type. Text (environment, flags) is parsed; a TOML value (``typed``) must
    already have the type: ``workers = 1.9`` or ``tls_cert = false`` is an error, not 1 or "False"."""
    if value is None:
        return None
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    t = t.split(" ")[0]
    if typed:
        ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "str": lambda v: isinstance(v, str)}[t](value)
        if not ok:
            raise ValueError(f"{f.name}: expected {_TYPE_NAMES[t]}, got {shown(value)}")
        try:
            return float(value) if t == "float" else value
        except OverflowError:           # an integer of 400 digits: no float holds it
            raise ValueError(f"{f.name}: {shown(value)} is too large for a number") from None
    try:
        if t == "int":
            return integer(value)
        if t == "float":
            return number(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{f.name}: cannot read {shown(value)} as {_TYPE_NAMES[t]}") from exc


_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string"}

# RECSERVE_* variables that are not `recserve serve` settings but are read elsewhere: the CLI client's
# address and token, the config file, a test hook, the build's debug checks and a bench hook
OTHER_ENV = frozenset({"RECSERVE_CONFIG", "RECSERVE_ADDR", "RECSERVE_TOKEN", "RECSERVE_DEBUG_DELAY_MS",
                       "RECSERVE_DEBUG_CYTHON", "RECSERVE_BENCH_PIPELINE_STATS"})


def env_name(field: str) -> str:
    return "RECSERVE_" + field.upper()


def check_env(env, where: str = "environment") -> None:
    """An unknown RECSERVE_* variable is a typo (``RECSERVE_WORKRES``) that would pass silently: ValueError
    naming it (and the nearest known name)."""
    import difflib

    known = {env_name(f.name) for f in dataclasses.fields(ServeConfig)} | OTHER_ENV
    for name in sorted(env):
        if name.startswith("RECSERVE_") and name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ValueError(f"{where}: {name} is not a recserve setting{hint}")


def _path(name: str, value: str, base: str | None = None) -> str:
    """A path setting as given (``~`` and ``~user`` expanded), joined to ``base`` when relative. Joined, it
    (not an absolute one) is normalised as text (``../events`` beside ``/etc/recserve/serve.toml`` is
    ``/etc/events``, as ``--print-config`` shows it), not through a symlinked directory the file was named by."""
    if not value:
        return value
    if "\0" in value:
        raise ValueError(f"{name}: a path cannot hold a NUL character, got {shown(value)}")
    p = os.path.expanduser(value)
    if p.startswith("~"):
        raise ValueError(f"{name}: cannot expand {shown(value)} (no such user)")
    return os.path.normpath(os.path.join(base, p)) if base is not None and not os.path.isabs(p) else p


MAX_CONFIG_BYTES = 1 << 20


def _file_settings(path: str, label: str) -> dict:
    """The settings a TOML file holds, {setting: value}, or a ValueError naming the file (``label``)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):        # a FIFO would block the open, /dev/zero never end
            kind = "Is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ValueError(f"{label}: cannot read it: {kind}")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{label}: {st.st_size} bytes; a config file holds at most {MAX_CONFIG_BYTES}")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{label}: cannot read it: {exc.strerror or exc}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ValueError(f"{label}: starts with a byte order mark (BOM), which TOML does not allow: save it as "
                         "UTF-8 without one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ValueError(f"{label}: not UTF-8 text (byte {raw[exc.start]:#04x} on line {line})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{label}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ValueError(f"{label}: not valid TOML for recserve: arrays or tables nested too deeply") from None
    except ValueError as exc:           # an integer past Python's limit for int() (4,300 digits)
        why = (f"an integer of more than {sys.get_int_max_str_digits()} digits" if "digits" in str(exc)
               else str(exc).splitlines()[0])
        raise ValueError(f"{label}: not valid TOML for recserve: {why}") from None
    if "serve" in data:
        others = sorted(k for k in data if k != "serve")
        if not isinstance(data["serve"], dict):
            raise ValueError(f"{label}: serve must be a [serve] table, got {shown(data['serve'])}")
        if others:
            raise ValueError(f"{label}: settings go either in a [serve] table or at the top "
                             f"level, not both ({', '.join(others)} outside the table)")
        data = data["serve"]
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    out: dict = {}
    spelled: dict = {}
    for key, v in data.items():
        k = key.replace("-", "_")
        if k not in fields:
            import difflib
            near = difflib.get_close_matches(k, sorted(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"{label}: unknown key {k!r}{hint}")
        if k in spelled:
            raise ValueError(f"{label}: {spelled[k]!r} and {key!r} are one setting: keep one")
        out[k], spelled[k] = v, key
    return out


def env_value(env, name: str) -> str | None:
    """A variable's value without the blanks around it (``RECSERVE_PORT=$'50051\\n'``); None when it is unset,
    empty or only blanks."""
    v = env.get(name)
    v = v.strip() if v is not None else None
    return v or None


def debug_delay(env) -> float:
    """Seconds every Recommend waits first: ``RECSERVE_DEBUG_DELAY_MS``, a testing aid (drain, deadlines, the
    bound on calls in flight); 0 when unset."""
    v = env_value(env, "RECSERVE_DEBUG_DELAY_MS")
    if v is None:
        return 0.0
    try:
        ms = number(v)
    except ValueError:
        ms = float("nan")
    if not 0 <= ms <= 600_000:
        raise ValueError(f"environment RECSERVE_DEBUG_DELAY_MS: milliseconds in [0, 600000], got {shown(v)}")
    return ms / 1000.0


def load(flags: dict | None = None, env: dict | None = None, file: str | os.PathLike | None = None
         ) -> ServeConfig:
    """Merge the levels. Typos and wrong types do not pass silently: unknown keys in the TOML file,
    top-level keys beside a ``[serve]`` table and unknown RECSERVE_* variables are errors. The result's
    :func:`origin` says where each setting came from."""
    env = os.environ if env is None else env
    check_env(env)
    debug_delay(env)
    fields = {f.name: f for f in dataclasses.fields(ServeConfig)}
    values: dict = {}
    level: dict = {}                    # setting -> where its value came from: 1 file, 2 environment, 3 flag
    origin: dict = {}                   # setting -> the same, in words
    path = file or (flags or {}).get("config")
    label = f"config file {path}"
    if not path and (path := env_value(env, "RECSERVE_CONFIG")):
        label = f"config file {path} (from RECSERVE_CONFIG)"
    if path:
        path = os.path.expanduser(os.fspath(path))
        if path.startswith("~"):
            raise ValueError(f"{label}: cannot expand {path!r} (no such user)")
        for k, v in _file_settings(path, label).items():
            try:
                values[k], level[k], origin[k] = _coerce(fields[k], v, typed=True), 1, f"config file {path}"
                if k in PATH_KEYS:
                    values[k] = _path(k, values[k], base=os.path.dirname(os.path.abspath(path)))
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
    for name, f in fields.items():
        v = env_value(env, env_name(name))
        if v is not None:
            try:
                values[name] = _path(name, _coerce(f, v)) if name in PATH_KEYS else _coerce(f, v)
                level[name], origin[name] = 2, env_name(name)
            except ValueError as exc:
                raise ValueError(f"environment {env_name(name)}: {exc}") from None
    for k, v in (flags or {}).items():
        if k in fields and v is not None:
            flag = "--" + k.replace("_", "-")
            try:
                values[k] = _path(k, _coerce(fields[k], v)) if k in PATH_KEYS else _coerce(fields[k], v)
            except ValueError as exc:
                raise ValueError(f"{exc} (from {flag})") from None
            level[k], origin[k] = 3, flag
    _cap_or_candidates(values, level, path)
    cfg = ServeConfig(**values)
    if cfg.log_level.upper() in LOG_LEVELS:
        cfg.log_level = cfg.log_level.upper()
    cfg._origin = {k: origin[k] for k in values}          # not a setting: no dataclass field
    cfg._config_file = path or ""
    return cfg


def origin(cfg: ServeConfig, name: str) -> str:
    """Where ``name``'s value came from: "--port", "RECSERVE_PORT", "config file F", or "default"."""
    return getattr(cfg, "_origin", {}).get(name, "default")


def keep_origin(new: ServeConfig, old: ServeConfig, given=()) -> ServeConfig:
    """``new`` (a ``dataclasses.replace`` of ``old``) with ``old``'s record of where its settings came from,
    but for the settings ``given`` anew (their old origin no longer holds)."""
    new._origin = {k: v for k, v in getattr(old, "_origin", {}).items() if k not in set(given)}
    new._config_file = getattr(old, "_config_file", "")
    return new


def _toml_string(v: str) -> str:
    """A TOML basic string: characters outside the BMP as they are (JSON's surrogate pairs are not TOML),
    control characters and DEL escaped."""
    return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")


def sources(cfg: ServeConfig) -> str:
    """One line saying which settings came from where (the ``settings`` log line at start), e.g. ``config file
    /etc/recserve.toml: port, workers; environment: RECSERVE_CAP; flags: --bundle; the rest defaults``."""
    by: dict = {}
    for f in dataclasses.fields(ServeConfig):
        where = origin(cfg, f.name)
        if where != "default":
            by.setdefault(where, []).append(f.name)
    parts = [f"{where}: {', '.join(names)}" for where, names in by.items() if where.startswith("config file")]
    env = [where for where in by if where.startswith("RECSERVE_")]
    flags = [where for where in by if where.startswith("--")]
    parts += [f"environment: {', '.join(env)}"] * bool(env) + [f"flags: {', '.join(flags)}"] * bool(flags)
    return "; ".join(parts + ["the rest defaults"])


def describe(cfg: ServeConfig) -> str:
    """The settings in effect as a TOML file would give them, each with where it came from (``recserve serve
    --print-config``); settings left to the bundle are comments."""
    out = [f"# config file: {getattr(cfg, '_config_file', '') or 'none'}"]
    for f in dataclasses.fields(ServeConfig):
        v = getattr(cfg, f.name)
        if v is None:
            out.append(f"# {f.name}: the bundle's")
            continue
        if isinstance(v, str) and f.name in PATH_KEYS and v:
            v = os.path.abspath(v)          # read back from the file's directory, a relative one would move
        text = repr(v) if isinstance(v, (int, float)) else _toml_string(v)     # validated: finite
        out.append(f"{f.name} = {text}  # {origin(cfg, f.name)}")
    return "\n".join(out) + "\n"


def _cap_or_candidates(values: dict, level: dict, path) -> None:
    """``candidates`` N sets the cap to N (and scales the source quotas to it), so ``cap`` and ``candidates``
    are one setting for the precedence order: the one given at the higher level is kept, the other dropped;
    both at one level contradict each other."""
    if values.get("cap") is None or values.get("candidates") is None:
        return
    if level["cap"] == level["candidates"]:
        where = {1: f"in config file {path}", 2: "in the environment (RECSERVE_CAP, RECSERVE_CANDIDATES)",
                 3: "as flags (--cap, --candidates)"}[level["cap"]]
        raise ValueError(f"cap and candidates are both set {where}: candidates N sets the cap to N too (with "
                         "the source quotas scaled to it); give one")
    del values["candidates" if level["cap"] > level["candidates"] else "cap"]


# (lowest, highest) allowed for the numeric settings; None = unbounded on that side. The pipeline settings have
# the bounds recserve._core.candidates gives a bundle's parameters of the same names (MAX_PER_CREATOR, ...)
RANGES = {
    "port": (0, 65535), "metrics_port": (0, 65535), "workers": (0, 1024), "threads": (1, 256),
    # gRPC takes the bounds below as C ints: the two bounds on calls plus 64 must stay under 2^31
    "max_concurrent_rpcs": (1, 1 << 24), "max_health_watches": (1, 1 << 24), "share_work": (0, 1),
    "max_message_bytes": (1024, (1 << 31) - 1),
    "reload_interval": (0, 86400), "grace": (0, 86400), "drain_delay": (0, 3600),
    "events_per_user": (1, 1 << 24), "events_map_mb": (1, 1 << 24),
    "mmr_lambda": (0, 1), "max_per_creator": (0, 10_000), "cap": (1, 100_000), "candidates": (1, 100_000),
    "ef": (1, 1 << 20), "similar_ef": (1, 1 << 20), "novelty_boost": (0, 1000), "new_item_days": (0, 1e6),
}
RANKER_ENGINES = ("forest", "lightgbm")
COLD_ORDERS = ("trending", "ranker")
COLD_TRENDINGS = ("country", "global")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def validate(cfg: ServeConfig) -> ServeConfig:
    """Check every setting before anything starts; a bad one raises ``ValueError`` naming it, and where its
    value came from when that was not the default."""
    def bad(name: str, msg: str):
        where = origin(cfg, name)
        raise ValueError(f"{name}: {msg}" + ("" if where == "default" else f" (from {where})"))

    for name, (lo, hi) in RANGES.items():
        v = getattr(cfg, name)
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            bad(name, f"must be a finite number, got {v}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            bad(name, f"must be {span}, got {v}")
    if cfg.ranker_engine is not None and cfg.ranker_engine not in RANKER_ENGINES:
        bad("ranker_engine", f"one of {', '.join(RANKER_ENGINES)}, got {shown(cfg.ranker_engine)}")
    if cfg.cold_order is not None and cfg.cold_order not in COLD_ORDERS:
        bad("cold_order", f"one of {', '.join(COLD_ORDERS)}, got {shown(cfg.cold_order)}")
    if cfg.cold_trending is not None and cfg.cold_trending not in COLD_TRENDINGS:
        bad("cold_trending", f"one of {', '.join(COLD_TRENDINGS)}, got {shown(cfg.cold_trending)}")
    if cfg.log_level.upper() not in LOG_LEVELS:
        bad("log_level", f"one of {', '.join(LOG_LEVELS)}, got {shown(cfg.log_level)}")
    if cfg.metrics_port and cfg.metrics_port == cfg.port:
        bad("metrics_port", f"{cfg.metrics_port} is the gRPC port too; give the metrics another")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ValueError("tls_cert and tls_key go together (--tls-cert and --tls-key)")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise ValueError("tls_client_ca (--client-ca, mutual TLS) needs TLS: set --tls-cert and --tls-key too")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "tokens_file"):
        path = getattr(cfg, name)
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            bad(name, f"cannot read {path}" + (" (a directory)" if os.path.isdir(path) else ""))
    if cfg.tls_cert:
        check_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    host = cfg.host.strip("[]") or "127.0.0.1"       # empty: the default, as create_server reads it
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        bad("host", f"cannot listen on {cfg.host!r}: {getattr(exc, 'strerror', None) or exc}")
    return cfg


def check_tls(cert: str, key: str, client_ca: str = "") -> None:
    """Load the certificate chain, its key and the client CA as a TLS server would, so that a key of
    another certificate or a file that is not PEM is refused with its reason before a worker starts
    (gRPC itself only says that it could not bind the port)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_key_pair(ctx, cert, key, "tls_cert / tls_key")
    if client_ca:
        load_ca(ctx, client_ca, "tls_client_ca")


def load_key_pair(ctx, cert: str, key: str, names: str) -> None:
    """``ctx.load_cert_chain``, a failure a ValueError saying why: a key of another certificate, an
    encrypted key (gRPC takes none) or a file that is not PEM."""
    import ssl

    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")   # an encrypted key fails, never prompts
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            why = "the key does not belong to the certificate"
        elif _encrypted(key):
            why = "the key is encrypted (gRPC takes no passphrase: decrypt it with `openssl pkey -in KEY -out NEW`)"
        else:
            why = f"not a PEM certificate and private key ({exc.reason or exc})"
        raise ValueError(f"{names} ({cert}, {key}): {why}") from None


def load_ca(ctx, ca: str, name: str) -> None:
    """``ctx.load_verify_locations``, a failure a ValueError saying why."""
    import ssl

    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ValueError(f"{name} ({ca}): not a PEM CA certificate ({exc.reason or exc})") from None


def token_fault(token: str) -> str | None:
    """The first character that keeps a bearer token out of a gRPC header (printable ASCII without
    spaces), or None."""
    return next((c for c in token if not (c.isascii() and c.isprintable() and c != " ")), None)


def _encrypted(key: str) -> bool:
    try:
        with open(key, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return b"ENCRYPTED" in head         # PKCS#8 "BEGIN ENCRYPTED PRIVATE KEY", or "Proc-Type: 4,ENCRYPTED"


def bundle_root(bundle: str | os.PathLike) -> Path:
    """The directory holding CURRENT (or the bundle's parent when given one version directly)."""
    p = Path(bundle)
    return p if (p / "CURRENT").exists() or not (p / "manifest.json").exists() else p.parent
