"""Writing a bundle atomically: temp dir next to the target, fsync, rename to ``<out>/<version>/``,
then ``<out>/CURRENT`` replaced atomically, last. A crash at any point leaves the previous CURRENT valid."""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import secrets
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

from recserve._core.tables import TableWriter
from recserve.bundle import (FORMAT_VERSION, BundleError, index_header, index_whole, manifest_intact,
                             seal_manifest, sha256_file)
from trainer import features

BIG_MAP = 1 << 34


def fsync_path(p: Path) -> None:
    """fsync a file or a directory (so that a rename in it is on disk)."""
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DISK_ERRORS = {errno.ENOSPC, errno.EIO, errno.EDQUOT}


@contextlib.contextmanager
def writing(path: Path):
    """A write of ``path``: a failure is an OSError naming the file, and for a full or failing disk the
    room left on it (LMDB says "mdb_txn_commit: Input/output error" for a short write, and ``write_text``
    a bare "No space left on device")."""
    import lmdb

    try:
        yield
    except lmdb.MapFullError as exc:        # a size limit of the writer's map, not the disk
        raise OSError(errno.EFBIG, f"{str(exc).splitlines()[0]} (the tables outgrow the writer's "
                      f"{BIG_MAP >> 30} GiB map)", str(path)) from None
    except lmdb.Error as exc:
        raise OSError(errno.EIO, f"{str(exc).splitlines()[0]}{_room(path)}", str(path)) from None
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        raise OSError(exc.errno, f"{exc.strerror or os.strerror(exc.errno)}{_room(path)}",
                      str(exc.filename or path)) from None


def _room(path: Path) -> str:
    """`` (N MiB free on its disk)`` for the directory of ``path``, or "" when it cannot be told."""
    try:
        st = os.statvfs(path if path.is_dir() else path.parent)     # a mount point's own disk
    except OSError:
        return ""
    return f" ({st.f_bavail * st.f_frsize / (1 << 20):.1f} MiB free on its disk)"


def new_version() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def write_tables(path: Path, ds, cat, art) -> None:
    with TableWriter(path, map_size=BIG_MAP) as w:
        w.write_ids("item", [str(x) for x in ds.item_ids])
        w.write_ids("user", [str(x) for x in ds.user_ids])
        w.write_ids("category", [str(x) for x in cat.categories])
        w.write_ids("creator", [str(x) for x in cat.creators])
        w.write_array("item_emb", art.item_emb)
        w.write_array("user_emb", art.user_emb)
        # NaN = missing (an empty cell of an extra input column): the ranker's missing-value branch
        w.write_array("item_feats", art.item_feats, columns=list(art.schema.item_columns), allow_nan=True)
        w.write_array("user_feats", art.user_feats, columns=list(art.schema.user_columns), allow_nan=True)
        # the prices as given, for the price filters (the feature column is float32: 20,000,001 is 2e7 there)
        w.write_array("item_price", np.asarray(ds.item_price, np.float64))
        # the creation times as given (unix seconds): which items the catalogue holds at a request's time
        w.write_array("item_created", np.asarray(ds.item_created, np.float64))
        w.write_array("hist_indptr", art.hist_indptr.astype(np.int64))
        w.write_array("hist_items", art.hist_items.astype(np.int32))
        w.write_array("hist_ts", art.hist_ts.astype(np.float64))
        w.write_array("hist_event", art.hist_event.astype(np.int8))
        # every item a user consumed, for the users whose bounded history misses some (the others': hist_items)
        w.write_array("consumed_users", art.consumed_users.astype(np.int32))
        w.write_array("consumed_indptr", art.consumed_indptr.astype(np.int64))
        w.write_array("consumed_items", art.consumed_items.astype(np.int32))
        w.write_array("i2i_rows", art.i2i_rows.astype(np.int32))
        w.write_array("i2i_scores", art.i2i_scores.astype(np.float32))
        if art.sim_rows is not None:
            w.write_array("sim_rows", art.sim_rows.astype(np.int32))
        w.write_array("pop_rows", art.pop_rows)
        w.write_array("pop_scores", art.pop_scores)
        w.write_array("trend_rows", art.trend_rows)
        w.write_array("trend_scores", art.trend_scores)
        # each category's items by trending (the name is older than that order: by all-time popularity before)
        w.write_array("pop_cat_indptr", art.pop_cat_indptr)
        w.write_array("pop_cat_rows", art.pop_cat_rows)
        cl = art.countries
        if cl.ids:      # the users' countries, and trending per country (trainer/countries.py)
            w.write_ids("country", cl.ids)
            w.write_array("user_country", cl.user_code.astype(np.int32))
            w.write_array("country_indptr", cl.indptr.astype(np.int64))
            w.write_array("country_rows", cl.rows.astype(np.int32))
            w.write_array("country_scores", cl.scores.astype(np.float32))
            w.write_array("country_weight", cl.weight.astype(np.float64))
        w.set_meta("now", art.now)
        w.set_meta("context_columns", features.CONTEXT_COLUMNS)


PUBLISHED: list[str] = []       # the versions this process named in CURRENT (an interrupted build's line)


def write_bundle(out_root: str | os.PathLike, ds, cat, art, ranker_text: str, manifest: dict,
                 version: str | None = None, before_publish=None) -> Path:
    """Write the version in a temporary directory, call ``before_publish(tmp)`` on it (it may add reports
    and manifest keys), then rename it into place and point CURRENT at it; any failure before the rename
    leaves the root as it was (the temporary directory is removed)."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    version = version or new_version()
    final = root / version
    if final.exists():
        raise FileExistsError(f"{final} exists already")
    gone = remove_stale_temporaries(root)
    if gone:
        print(f"removed what killed builds left in {root}: {', '.join(sorted(gone))}", file=sys.stderr)
    tmp = root / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        with writing(tmp / "tables.lmdb"):
            write_tables(tmp / "tables.lmdb", ds, cat, art)
        with writing(tmp / "index.hnsw"):
            save_index(art.index, tmp / "index.hnsw")
        for name, text in {"ranker.txt": ranker_text, **manifest.pop("_extra_files", {})}.items():
            with writing(tmp / name):
                (tmp / name).write_text(text)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        m = {"format_version": FORMAT_VERSION, "version": version,
             "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **manifest,
             "files": files}
        with writing(tmp / "manifest.json"):
            (tmp / "manifest.json").write_text(json.dumps(seal_manifest(m), indent=1, sort_keys=False))
        if before_publish is not None:
            before_publish(tmp)
        for p in [*tmp.iterdir(), tmp]:
            with writing(p):
                fsync_path(p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with signals_put_off():     # renamed and named by CURRENT as one step: no complete version left unnamed
        try:
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            with writing(root):
                fsync_path(root)
            set_current(root, version)
        except BaseException:
            _unpublish(root, final)
            raise
        PUBLISHED.append(version)
    return final


def _unpublish(root: Path, final: Path) -> None:
    """After CURRENT could not be pointed at ``final`` (a full disk, CURRENT a directory): ``final`` removed,
    unless CURRENT names it after all or cannot be read, and this process's CURRENT temporary with it."""
    (root / f".CURRENT.{os.getpid()}.tmp").unlink(missing_ok=True)
    try:
        named = (root / "CURRENT").read_text().strip()
    except UnicodeDecodeError:              # cannot tell: kept (a CURRENT naming nothing would be worse)
        return
    except OSError as exc:
        if exc.errno in DISK_ERRORS:        # the same
            return
        named = None                        # none, a directory, a link loop: it names nothing
    if named != final.name:
        gone = root / f".tmp-{final.name}-{os.getpid()}"     # out of the versions first, then deleted
        try:
            os.rename(final, gone)
        except OSError:
            gone = final
        shutil.rmtree(gone, ignore_errors=True)


def save_index(index, path: Path) -> None:
    """``index.save_index(path)``, checked: hnswlib reports no write error (a full disk leaves a short file
    that hashes as any other), so a file whose header does not match its size or the index is an OSError."""
    index.save_index(str(path))
    want = (index.get_current_count(), index.dim)
    try:
        got = index_header(path)
        why = (f"holds {got[0]} x {got[1]}, not {want[0]} x {want[1]}" if got != want else
               None if index_whole(path) else f"{path.stat().st_size} bytes, not the whole index")
    except BundleError as exc:
        why = str(exc).split(": ", 1)[-1]
    if why is not None:
        raise OSError(errno.EIO, f"written short: {why} (hnswlib reports no write error; is the disk full?)",
                      str(path))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):     # no such process (or no such pid at all)
        return False
    except PermissionError:                         # someone else's live process
        return True
    return True


def remove_stale_temporaries(root: Path) -> list[str]:
    """Delete what builds that were killed left behind in ``root``: ``.tmp-<version>-<pid>`` bundle
    directories and ``.CURRENT.<pid>.tmp`` files whose process is gone. Returns their names."""
    gone = []
    for p in root.iterdir():
        name = p.name
        if name.startswith(".tmp-") and p.is_dir():
            pid = name.rsplit("-", 1)[-1]
        elif name.startswith(".CURRENT.") and name.endswith(".tmp") and p.is_file():
            pid = name[len(".CURRENT."):-len(".tmp")]
        else:
            continue
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(name)
    return gone


def replace_file(path: Path, text: str, tmp: Path) -> None:
    """``path`` replaced by ``text`` whole: written to ``tmp`` beside it and on disk before the rename, and the
    rename on disk too (fsync of the directory)."""
    _write_synced(tmp, text)
    os.replace(tmp, path)
    with writing(path.parent):
        fsync_path(path.parent)


def _write_synced(path: Path, text: str) -> None:
    """``text`` written to ``path`` and on disk."""
    with writing(path), open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def set_current(root: Path, version: str) -> None:
    replace_file(root / "CURRENT", version + "\n", root / f".CURRENT.{os.getpid()}.tmp")


def update_manifest(bundle_dir: Path, key: str, value) -> None:
    """Add a key to a written bundle's manifest, atomically, and seal it again with its new digest; a
    manifest whose digest does not match its content is refused, not sealed."""
    replace_file(bundle_dir / "manifest.json", sealed_manifest_text(bundle_dir, key, value),
                 bundle_dir / ".manifest.json.tmp")


def sealed_manifest_text(bundle_dir: Path, key: str, value) -> str:
    """The text of the bundle's manifest with ``key`` set, sealed again with its new digest; a manifest whose
    digest does not match its content is refused, not sealed."""
    p = bundle_dir / "manifest.json"
    m = json.loads(p.read_text())
    if not manifest_intact(m):
        raise BundleError(f"{p}: sha256 mismatch (its content changed since the build); not updated")
    return json.dumps(seal_manifest({**m, key: value}), indent=1)


@contextlib.contextmanager
def signals_put_off():
    """SIGINT, SIGTERM and SIGHUP put off until the block ends, then raised again for the handlers in place
    before: a signal may reach any thread, but Python runs its handlers in the main thread, so there they
    are held (elsewhere nothing is changed)."""
    import signal

    pending: list[int] = []
    held = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            held[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in held.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


@contextlib.contextmanager
def bundle_lock(bundle_dir: Path):
    """An exclusive lock on the bundle directory (flock on its own descriptor: no file is added to the
    bundle), held by each ``evaluate`` from reading the manifest to the last rename: two at once wrote the
    same temporary files, and a record could be left beside the other run's reports."""
    import fcntl

    fd = os.open(bundle_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def replace_together(bundle_dir: Path, texts: dict[str, str]) -> None:
    """Files of ``bundle_dir`` replaced by ``texts`` ({name: text}) as one step: every text written to a
    temporary file and on disk first, then the renames with SIGINT, SIGTERM and SIGHUP put off, so that an
    interrupt leaves either all of them old or all new (a manifest's evaluation and its reports agree)."""
    tmps = {}
    try:
        for name, text in texts.items():
            tmps[name] = bundle_dir / f".{name}.tmp"
            _write_synced(tmps[name], text)
        # a signal may reach any thread, but Python runs its handlers in the main thread: there they are
        # put off until the renames are done, then raised again for the handlers in place before
        with signals_put_off():
            for name, tmp in tmps.items():
                os.replace(tmp, bundle_dir / name)
            fsync_path(bundle_dir)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)

