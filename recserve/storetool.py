"""``recserve store``: maintain the real-time event store from outside the server (stats, prune, forget,
clear-items), whether a server runs or not.

``stats`` opens the store read-only and waits for no writer. The other actions write, and each write
transaction first waits for the store's write lock, which any writer's transaction holds (a server's write,
another store tool between its batches, or one suspended with Ctrl-Z until it resumes). While one waits,
SIGINT is taken by a watcher thread, since the wait is in C and no Python handler could run: Ctrl-C there
exits at once (130), saying what earlier transactions committed; nothing of the waiting one has begun. A
wait longer than a second is said on stderr once. Ctrl-C while a transaction runs lets it commit: a prune
stops after it, and the others say it was completed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

from recserve import config as C
from recserve.pipeline.errors import InvalidArgument
from recserve.pipeline.messages import check_id

NOTICE_AFTER_S = 1.0


class LockWatch:
    """SIGINT, blocked in the calling thread for the ``with`` block, taken by a watcher thread: while
    :meth:`waiting` is entered (a wait for the write lock) it exits the process with ``said()``, otherwise
    it sets :attr:`interrupted` for the caller to stop at its next step. Inactive (SIGINT left as it is)
    when the process ignores SIGINT, as a background job of a script does."""

    def __init__(self, said):
        self.interrupted = False
        self.active = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        self._said = said
        self._since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def waiting(self):
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def __enter__(self) -> LockWatch:
        if self.active:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})   # the watcher inherits the mask
            self._thread = threading.Thread(target=self._watch, name="sigint-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        self._stop.set()
        self._thread.join()
        while signal.sigtimedwait({signal.SIGINT}, 0) is not None:     # one that came as the watcher stopped
            self.interrupted = True
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _watch(self) -> None:
        told = False
        while not self._stop.is_set():
            got = signal.sigtimedwait({signal.SIGINT}, 0.1)
            since = self._since
            if got is not None and since is not None:
                try:
                    _say(f"interrupted while waiting for the store's write lock; {self._said()}")
                finally:
                    os._exit(130)       # blocked in LMDB's lock wait: no transaction of ours has begun
            if got is not None:
                self.interrupted = True
            elif since is not None and not told and time.monotonic() - since > NOTICE_AFTER_S:
                _say("waiting for the store's write lock (a server's write or another store tool holds it; one "
                     "suspended with Ctrl-Z holds it until it resumes); Ctrl-C gives up")
                told = True


def _say(message: str) -> None:
    """One line on stderr; a closed stderr (its reader gone) loses the line, nothing else."""
    try:
        print(f"recserve store: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


def open_store(args, readonly: bool = False, waiting=contextlib.nullcontext):
    """The event store the server of these settings uses (same precedence: flags > RECSERVE_* env > config
    file), or a one-line reason it cannot be opened. An absent store is not created. It is opened with the
    map size the store records (the largest any server gave it): a larger one here could grow the file past
    a running server's map, whose every read would then fail."""
    from recserve.events import EventStore

    flags = {k: getattr(args, k) for k in ("bundle", "events_dir")}
    cfg = C.load({k: v for k, v in flags.items() if v is not None}, file=args.config)
    if not cfg.events_dir and not cfg.bundle:
        raise ValueError("--bundle ROOT or --events-dir DIR is required (or RECSERVE_BUNDLE / the config file)")
    path = Path(cfg.events_dir) if cfg.events_dir else C.bundle_root(cfg.bundle) / "events"
    data = path / "data.mdb"
    if not data.is_file() or data.stat().st_size == 0:      # LMDB would make an empty file a new store
        raise ValueError(f"no event store at {path}" + (" (an empty data.mdb)" if data.is_file() else ""))
    return EventStore(path, map_size=0, readonly=readonly, waiting=waiting)


def _check_ids(args) -> str | None:
    for name in ("users", "items"):
        for v in getattr(args, name, None) or []:
            try:
                check_id(v, name[:-1] + " id")
            except InvalidArgument as exc:
                return str(exc)
    return None


def cmd_store(args) -> int:
    import lmdb

    from recserve.cli import _table

    if args.action == "clear-items" and bool(args.all) == bool(args.items):
        _say("clear-items takes item ids or --all" + (" (not both)" if args.all else ""))
        return 2
    if (bad := _check_ids(args)) is not None:
        _say(f"{bad}; nothing was changed")
        return 2
    done = {"deleted": 0, "emptied": 0, "retired": 0}
    acted = False           # the change was made and said: a later error (the stats) changed nothing more

    def said() -> str:
        if acted:
            return "the change above was committed"
        if args.action != "prune" or not done["deleted"] + done["retired"]:
            return "nothing was changed"
        return _pruned(**done)

    writes = args.action != "stats"
    watch = LockWatch(said)
    try:
        with watch if writes else contextlib.nullcontext():      # stats: Ctrl-C is a KeyboardInterrupt
            try:
                store = open_store(args, readonly=not writes, waiting=watch.waiting)
            except (OSError, ValueError, lmdb.Error) as exc:
                _say(str(exc))
                return 2
            try:
                if watch.interrupted:
                    _say("interrupted; nothing was changed")
                    return 130
                code = _act(args, store, watch, done)
                acted = writes and code == 0
                stats = store.stats()
            finally:
                store.close()
            _out(_table(["store", "events", "users with events", "new users", "item states", "retired items"],
                        [[str(store.path), stats["events"], stats["users_with_events"], stats["users"],
                          stats["items"], stats["retired_items"]]]))
        if code == 0 and watch.interrupted:
            _say("interrupted while its transaction ran: the change above was completed and committed")
            return 130
        return code
    except KeyboardInterrupt:       # stats (a read), or a write's last lines after its commit
        _say("interrupted after the change above was committed" if writes else "interrupted; nothing was changed")
        return 130
    except lmdb.MapFullError:
        _say(f"{store.path} is full, and deleting needs free pages too: restart the server with a larger "
             f"--events-map-mb, then run this again; {said()}")
        return 1
    except lmdb.Error as exc:
        _say(f"{store.path}: {exc}; {said()}")
        return 1


def _out(text: str) -> None:
    """A line on stdout; a reader gone (``| head``) stops the output, not the command or its exit code."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _pruned(deleted: int, emptied: int, retired: int) -> str:
    """What the committed transactions of an interrupted prune deleted."""
    return (f"{deleted} events were deleted, {emptied} users removed and {retired} retired items deleted before "
            f"(committed), the rest is as it was")


def _act(args, store, watch, done) -> int:
    if args.action == "prune":
        before = time.time() - args.older_than_days * 86400.0

        def committed(deleted, emptied, retired) -> bool:
            done.update(deleted=deleted, emptied=emptied, retired=retired)
            return not watch.interrupted            # Ctrl-C: stop after the transaction in hand

        deleted, emptied, retired = store.prune(before, batch=args.batch, committed=committed)
        if watch.interrupted:
            _say(f"interrupted; {_pruned(deleted, emptied, retired)}")
            watch.interrupted = False               # said here, with what was done
            return 130
        _out(f"deleted {deleted} events older than {args.older_than_days:g} days; {emptied} users left "
             f"with none were removed; {retired} retired items as old were deleted")
    elif args.action == "clear-items":
        n = store.clear_items(None if args.all else args.items)
        _out(f"cleared {n} item states: those items take stock and price from the bundle again")
    elif args.action == "forget":
        deleted, users = store.forget(args.users)
        _out(f"forgot {len(set(args.users))} users: {deleted} events deleted ({users} had records in the "
             f"store)")
    return 0
