"""Serving configuration. One precedence order: flags > RECSERVE_* env vars > TOML file > bundle defaults.

Bundle defaults are the serving ``params`` of the bundle manifest (``mmr_lambda``, ``max_per_creator``,
...); the overrides named in :data:`PIPELINE_KEYS` replace them when set at a higher level.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

PIPELINE_KEYS = ("mmr_lambda", "max_per_creator", "cap", "candidates", "ef", "similar_ef", "ranker_engine",
                 "novelty_boost", "new_item_days")


@dataclass
class ServeConfig:
    bundle: str = ""
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 2
    threads: int = 4                   # per worker: threads for event-store writes (fsync) and bundle loads
    cpu_affinity: str = "auto"         # "auto": worker i on the i-th allowed CPU when workers <= CPUs; "off";
                                       # or a CPU list "0,2,4" (worker i on the (i mod n)-th)
    max_concurrent_rpcs: int = 64      # calls in flight per worker; beyond -> RESOURCE_EXHAUSTED
    share_work: int = 1                # 1: a Recommend that would wait for its worker's busy compute slot
                                       # runs on an idle sibling worker (recserve.sharing); 0: off
    max_message_bytes: int = 4 << 20
    reload_interval: float = 1.0       # seconds between CURRENT polls; 0 disables hot reload
    grace: float = 10.0                # SIGTERM drain, seconds
    drain_delay: float = 0.0           # SIGTERM: seconds still serving while health says NOT_SERVING, so
                                       # that load balancers polling health stop routing here first
    events_dir: str = ""               # default: <bundle root>/events
    events_per_user: int = 1000        # real-time events kept per user (a Recommend reads history_len)
    events_map_mb: int = 65536         # the event store's LMDB map size (address space, not disk)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""            # set -> mTLS (client certificates required)
    tokens_file: str = ""
    metrics_port: int = 0              # 0 = no metrics endpoint
    log_level: str = "INFO"
    mmr_lambda: float | None = None
    max_per_creator: int | None = None
    cap: int | None = None
    candidates: int | None = None      # candidates ranked per request: sets cap, source quotas scaled to it
    ef: int | None = None              # HNSW search breadth of Recommend's ANN source
    similar_ef: int | None = None      # ... and of SimilarItems (default: the bundle's tuned similar_ef)
    ranker_engine: str | None = None   # "forest" (default, the Cython evaluator) or "lightgbm"
    novelty_boost: float | None = None  # added to the [0, 1] relevance of new items (0 = off)
    new_item_days: float | None = None  # an item is new for this many days after created_at (14)

    def pipeline_overrides(self) -> dict:
        return {k: getattr(self, k) for k in PIPELINE_KEYS if getattr(self, k) is not None}


def _coerce(f: dataclasses.Field, value):
    if value is None:
        return None
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if t.startswith("int"):
            return int(value)
        if t.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config {f.name}: cannot read {value!r} as {t.split(' ')[0]}") from exc


def load(flags: dict | None = None, env: dict | None = None, file: str | os.PathLike | None = None
         ) -> ServeConfig:
    """Merge the levels; unknown keys in the TOML file are an error (typos should not pass silently)."""
    env = os.environ if env is None else env
    fields = {f.name: f for f in dataclasses.fields(ServeConfig)}
    values: dict = {}
    path = file or (flags or {}).get("config") or env.get("RECSERVE_CONFIG")
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        data = data.get("serve", data)
        for k, v in data.items():
            k = k.replace("-", "_")
            if k not in fields:
                raise ValueError(f"config file {path}: unknown key {k!r}")
            values[k] = _coerce(fields[k], v)
    for name, f in fields.items():
        v = env.get("RECSERVE_" + name.upper())
        if v is not None and v != "":
            values[name] = _coerce(f, v)
    for k, v in (flags or {}).items():
        if k in fields and v is not None:
            values[k] = _coerce(fields[k], v)
    return ServeConfig(**values)


# (lowest, highest) allowed for the numeric settings; None = unbounded on that side
RANGES = {
    "port": (0, 65535), "metrics_port": (0, 65535), "workers": (0, 1024), "threads": (1, 256),
    "max_concurrent_rpcs": (1, None), "share_work": (0, 1), "max_message_bytes": (1024, 1 << 31),
    "reload_interval": (0, None), "grace": (0, None), "drain_delay": (0, 3600), "events_per_user": (1, None),
    "events_map_mb": (1, 1 << 24),
    "mmr_lambda": (0, 1), "max_per_creator": (0, None), "cap": (1, None), "candidates": (1, None),
    "ef": (1, None), "similar_ef": (1, None), "novelty_boost": (0, None), "new_item_days": (0, None),
}
RANKER_ENGINES = ("forest", "lightgbm")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def validate(cfg: ServeConfig) -> ServeConfig:
    """Check every setting before anything starts; a bad one raises ``ValueError`` naming it."""
    for name, (lo, hi) in RANGES.items():
        v = getattr(cfg, name)
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{name}: must be a finite number, got {v}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise ValueError(f"{name}: must be {span}, got {v}")
    if cfg.ranker_engine is not None and cfg.ranker_engine not in RANKER_ENGINES:
        raise ValueError(f"ranker_engine: one of {', '.join(RANKER_ENGINES)}, got {cfg.ranker_engine!r}")
    if cfg.log_level.upper() not in LOG_LEVELS:
        raise ValueError(f"log_level: one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    if cfg.metrics_port and cfg.metrics_port == cfg.port:
        raise ValueError(f"metrics_port: {cfg.metrics_port} is the gRPC port too; give the metrics another")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ValueError("tls_cert and tls_key go together (--tls-cert and --tls-key)")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise ValueError("client_ca (mutual TLS) needs TLS: set --tls-cert and --tls-key too")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "tokens_file"):
        path = getattr(cfg, name)
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"{name}: cannot read {path}")
    return cfg


def bundle_root(bundle: str | os.PathLike) -> Path:
    """The directory holding CURRENT (or the bundle's parent when given one version directly)."""
    p = Path(bundle)
    return p if (p / "CURRENT").exists() or not (p / "manifest.json").exists() else p.parent
