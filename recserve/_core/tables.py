"""LMDB feature tables: a writer for the trainer and a zero-copy reader for the server.

Layout (one LMDB environment, one default database):

- ``arr:<name>:meta`` -> JSON ``{"dtype", "shape", "columns"}``; ``arr:<name>`` -> the raw C-order bytes.
- ``ids:<ns>:offsets`` (int64[n+1]) and ``ids:<ns>:blob`` (UTF-8) -> row -> id; ``id:<ns>:<id>`` -> row
  as little-endian uint32 for id -> row lookups.
- ``meta:<key>`` -> JSON.

Lifetime of views: :meth:`TableReader.array` returns a numpy view straight into LMDB's memory map
(``buffers=True``). Such a view is valid only while the reader's read transaction is open, i.e. until
:meth:`TableReader.close`. The reader holds one read transaction for its whole life: bundle tables are
immutable (written once by the trainer), so the long transaction does not make the file grow. Copy
(``np.array(view)``) anything that must outlive the reader. Open a reader in each worker process after
``fork``: an LMDB environment cannot cross a fork.

One environment per file: LMDB (and py-lmdb) refuse to open a file twice in one process, so readers of the
same file (the same device and inode: one path, a hard link, a symlink) share one environment and its read
transaction, counted, and the last reader to close closes it. A server that rolls back to a version a
request still holds, or loads a version directory whose tables are hard links of the live one's, thus
opens it as any other.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Iterable, Sequence

import lmdb
import numpy as np

__all__ = ["TableError", "TableWriter", "TableReader"]

_ALLOWED_DTYPES = {"float32", "float64", "int8", "int32", "int64", "uint8", "uint32"}


class TableError(ValueError):
    """A table is missing, malformed or does not match what the caller expects."""


def _map_size_for(nbytes: int) -> int:
    return max(1 << 26, int(nbytes * 1.3) + (1 << 24))


class TableWriter:
    """Writes arrays, id maps and metadata into a new LMDB file at ``path`` (a file, not a directory).

    Everything is written in one write transaction, committed by :meth:`close`; float arrays are checked
    for NaN and inf here, once, so that per-request kernels need not re-check whole tables.
    """

    def __init__(self, path: str | os.PathLike, map_size: int = 1 << 34):
        self.path = Path(path)
        if self.path.exists():
            raise TableError(f"{self.path} exists already; tables are written once")
        self._env = lmdb.open(str(self.path), subdir=False, map_size=map_size, max_dbs=0,
                              sync=True, metasync=True, lock=False)
        self._txn = self._env.begin(write=True)

    def write_array(self, name: str, array: np.ndarray, columns: Sequence[str] | None = None,
                    allow_nan: bool = False) -> None:
        arr = np.ascontiguousarray(array)
        if arr.dtype.name not in _ALLOWED_DTYPES:
            raise TableError(f"array {name!r}: dtype {arr.dtype} is not supported")
        if arr.dtype.kind == "f" and arr.size:      # NaN may mean missing (allow_nan); inf never does
            if not allow_nan and not np.isfinite(arr).all():
                raise TableError(f"array {name!r} contains NaN or inf")
            if allow_nan and np.isinf(arr).any():
                raise TableError(f"array {name!r} contains inf")
        if columns is not None:
            if arr.ndim != 2 or len(columns) != arr.shape[1]:
                raise TableError(f"array {name!r}: {len(columns)} column names for shape {arr.shape}")
            columns = list(columns)
        meta = {"dtype": arr.dtype.name, "shape": list(arr.shape), "columns": columns}
        self._txn.put(f"arr:{name}:meta".encode(), json.dumps(meta).encode())
        self._txn.put(f"arr:{name}".encode(), arr.tobytes() if arr.size else b"")

    def write_ids(self, ns: str, ids: Sequence[str]) -> None:
        encoded = [str(i).encode("utf-8") for i in ids]
        if len(set(encoded)) != len(encoded):
            raise TableError(f"id map {ns!r} has duplicate ids")
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        self._txn.put(f"ids:{ns}:offsets".encode(), offsets.tobytes())
        self._txn.put(f"ids:{ns}:blob".encode(), b"".join(encoded))
        prefix = f"id:{ns}:".encode()
        for row, e in enumerate(encoded):
            self._txn.put(prefix + e, int(row).to_bytes(4, "little"))

    def set_meta(self, key: str, value: object) -> None:
        self._txn.put(f"meta:{key}".encode(), json.dumps(value).encode())

    def close(self) -> None:
        if self._txn is not None:
            self._txn.commit()
            self._txn = None
            self._env.sync(True)
            self._env.close()

    def abort(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
            self._env.close()

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _Shared:
    """The environment of one table file and its read transaction, shared by every open reader of it."""

    def __init__(self, key: tuple[int, int], env, txn):
        self.key, self.env, self.txn, self.readers = key, env, txn, 0


_open: dict[tuple[int, int], _Shared] = {}      # (st_dev, st_ino) -> the file's environment, while read
_open_lock = threading.Lock()
_open_pid = os.getpid()


def _acquire(path: Path) -> _Shared:
    global _open_pid
    with _open_lock:
        if _open_pid != os.getpid():        # inherited across a fork: the parent's, not to be used here
            _open.clear()
            _open_pid = os.getpid()
        try:
            st = os.stat(path)
        except OSError as exc:
            raise TableError(f"cannot open table file {path}: {exc}") from exc
        shared = _open.get((st.st_dev, st.st_ino))
        if shared is None:
            try:
                env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, max_dbs=0, readahead=False)
            except lmdb.Error as exc:
                raise TableError(f"cannot open table file {path}: {exc}") from exc
            try:
                txn = env.begin(buffers=True)
            except BaseException:
                env.close()
                raise
            shared = _open[(st.st_dev, st.st_ino)] = _Shared((st.st_dev, st.st_ino), env, txn)
        shared.readers += 1
        return shared


def _release(shared: _Shared) -> None:
    with _open_lock:
        shared.readers -= 1
        if shared.readers:
            return
        if _open.get(shared.key) is shared:
            del _open[shared.key]
    shared.txn.abort()
    shared.env.close()


class TableReader:
    """Read-only, zero-copy access to a table file written by :class:`TableWriter`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise TableError(f"table file {self.path} does not exist")
        self._shared: _Shared | None = _acquire(self.path)
        self._txn = self._shared.txn
        self._arrays: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        self._blobs: dict[str, memoryview] = {}

    def _get(self, key: str):
        if self._txn is None:
            raise TableError("the table reader is closed")
        return self._txn.get(key.encode())

    def has_array(self, name: str) -> bool:
        return self._get(f"arr:{name}:meta") is not None

    def has_ids(self, ns: str) -> bool:
        return self._get(f"ids:{ns}:offsets") is not None

    def array_meta(self, name: str) -> dict:
        raw = self._get(f"arr:{name}:meta")
        if raw is None:
            raise TableError(f"table {self.path.name} has no array {name!r}")
        return json.loads(bytes(raw))

    def array(self, name: str, dtype: str | None = None, width: int | None = None) -> np.ndarray:
        """A read-only numpy view of array ``name`` over the memory map (see the lifetime rule above).

        ``dtype`` / ``width`` (number of columns) are checked when given, so a mismatched table fails here
        with a clear message instead of deep inside a kernel.
        """
        cached = self._arrays.get(name)
        if cached is None:
            meta = self.array_meta(name)
            raw = self._get(f"arr:{name}")
            shape = tuple(meta["shape"])
            dt = np.dtype(meta["dtype"])
            if raw is None or len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
                raise TableError(f"array {name!r} in {self.path.name} is truncated or missing")
            cached = np.frombuffer(raw, dtype=dt).reshape(shape) if len(raw) else np.zeros(shape, dt)
            if not cached.flags.aligned:
                # small values live inside a leaf page, unaligned; large ones (every real table) sit on
                # their own overflow pages and stay zero-copy
                cached = cached.copy()
            self._arrays[name] = cached
        if dtype is not None and cached.dtype != np.dtype(dtype):
            raise TableError(f"array {name!r} has dtype {cached.dtype}, expected {dtype}")
        if width is not None and (cached.ndim != 2 or cached.shape[1] != width):
            raise TableError(f"array {name!r} has shape {cached.shape}, expected width {width}")
        return cached

    def columns(self, name: str) -> list[str] | None:
        return self.array_meta(name)["columns"]

    def meta(self, key: str, default: object = None) -> object:
        raw = self._get(f"meta:{key}")
        return default if raw is None else json.loads(bytes(raw))

    def _id_map(self, ns: str) -> tuple[np.ndarray, memoryview]:
        if ns not in self._offsets:
            off = self._get(f"ids:{ns}:offsets")
            blob = self._get(f"ids:{ns}:blob")
            if off is None or blob is None:
                raise TableError(f"table {self.path.name} has no id map {ns!r}")
            self._offsets[ns] = np.frombuffer(off, dtype=np.int64)
            self._blobs[ns] = blob
        return self._offsets[ns], self._blobs[ns]

    def n_ids(self, ns: str) -> int:
        return len(self._id_map(ns)[0]) - 1

    def row_of(self, ns: str, ident: str) -> int | None:
        """The dense row of ``ident`` in id map ``ns``, or None when unknown."""
        self._id_map(ns)
        raw = self._get(f"id:{ns}:{ident}")
        return None if raw is None else int.from_bytes(bytes(raw), "little")

    def rows_of(self, ns: str, idents: Iterable[str]) -> np.ndarray:
        """int32 rows of ``idents``; -1 where an id is unknown (one lookup each, no per-id overhead)."""
        self._id_map(ns)
        if self._txn is None:
            raise TableError("the table reader is closed")
        get, prefix = self._txn.get, f"id:{ns}:".encode()
        out = [get(prefix + i.encode()) for i in idents]
        return np.array([-1 if r is None else int.from_bytes(r, "little") for r in out], dtype=np.int32)

    def id_of(self, ns: str, row: int) -> str:
        off, blob = self._id_map(ns)
        if not 0 <= row < len(off) - 1:
            raise TableError(f"row {row} is out of range for id map {ns!r}")
        return bytes(blob[off[row]:off[row + 1]]).decode("utf-8")

    def ids_of(self, ns: str, rows: Iterable[int]) -> list[str]:
        off, blob = self._id_map(ns)
        r = np.asarray(rows, np.int64).ravel()
        if r.size and (r.min() < 0 or r.max() >= len(off) - 1):
            bad = r[(r < 0) | (r >= len(off) - 1)][0]
            raise TableError(f"row {bad} is out of range for id map {ns!r}")
        return [str(blob[a:b], "utf-8") for a, b in zip(off[r].tolist(), off[r + 1].tolist())]

    def close(self) -> None:
        """Ends this reader: every view returned by :meth:`array` is invalid afterwards (the read
        transaction ends with the last open reader of the same file)."""
        if self._txn is not None:
            self._arrays.clear()
            self._offsets.clear()
            self._blobs.clear()
            self._txn = None
            shared, self._shared = self._shared, None
            _release(shared)

    def __enter__(self) -> "TableReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
