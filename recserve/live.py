"""The live bundle of one worker: loaded, verified and warmed up off the request path, swapped in
atomically between requests, and closed only once the last request that leased it lets go."""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from pathlib import Path

from recserve.bundle import MANIFEST_DIGEST, BundleError, read_current
from recserve.config import ServeConfig, bundle_root

log = logging.getLogger("recserve.server")


class BundleHolder:
    """Holds the live :class:`Recommender`; loads, verifies, warms up and swaps new versions."""

    def __init__(self, bundle_path: str, cfg: ServeConfig, store, metrics=None, report=None,
                 inherit: tuple | None = None):
        """``report(outcome, key, stamp)`` is told of every load ("loaded") and refusal ("refused").
        ``inherit`` is ``(key, refused)`` from the workers a replacement joins: the version they serve,
        loaded when CURRENT's cannot be, and the (key, stamp) they refused, not tried again here either,
        so a replacement serves what its siblings serve."""
        self.path = Path(bundle_path)
        self.root = bundle_root(bundle_path)
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.current = None
        self.current_key: str | None = None
        self.last_error: str | None = None
        self.attempts = 0                       # bundle loads tried (for tests and logs)
        self._refused: tuple | None = None      # (key, stamp) of the last refused bundle
        self._current_error: str | None = None  # why CURRENT itself could not be read, at the last poll
        self.fallback: str | None = None        # a replacement's siblings' version, tried once
        if inherit is not None:
            self.fallback, self._refused = inherit     # (key, stamp as a tuple) or None
        self.report = report
        # leases: a retired pipeline is closed only once no request holds it any more
        self._lease_lock = threading.Lock()
        self._leases: dict[int, int] = {}
        self._retired: dict[int, object] = {}

    @contextlib.contextmanager
    def lease(self):
        """The live pipeline for the length of one request (None before a bundle is loaded)."""
        with self._lease_lock:
            rec = self.current
            if rec is not None:
                self._leases[id(rec)] = self._leases.get(id(rec), 0) + 1
        try:
            yield rec
        finally:
            if rec is not None:
                self._release(rec)

    def _release(self, rec) -> None:
        with self._lease_lock:
            left = self._leases[id(rec)] - 1
            if left:
                self._leases[id(rec)] = left
                return
            del self._leases[id(rec)]
            retired = self._retired.pop(id(rec), None)
        if retired is not None:
            retired.bundle.close()

    def _retire(self, rec) -> None:
        """Close ``rec`` now if no request holds it, else when the last one lets go."""
        with self._lease_lock:
            if self._leases.get(id(rec)):
                self._retired[id(rec)] = rec
                return
        rec.bundle.close()

    def _key(self) -> str | None:
        """The version CURRENT names ("" when CURRENT is empty), or the fixed bundle directory; None when
        there is none yet (``BundleError`` when CURRENT cannot be read: :func:`recserve.bundle.read_current`)."""
        if (self.path / "manifest.json").exists() and not (self.path / "CURRENT").exists():
            return str(self.path)
        return read_current(self.root)

    def _refuse_current(self, reason: str) -> None:
        """CURRENT itself is unreadable: logged (once per distinct reason), the live bundle kept."""
        if self._current_error == reason:
            return
        self._current_error = reason
        self.last_error = reason
        log.error("bundle refused, keeping %s", self.current.version if self.current else "none",
                  extra={"event": "reload_refused", "version": None, "error": reason})
        if self.metrics:
            self.metrics.reloads.labels("refused").inc()

    def directory(self, key: str) -> Path:
        """The version directory of ``key``: the fixed bundle directory, or a plain name under the root
        (``BundleError`` for a name that is empty or leads outside it)."""
        from recserve import bundle as B

        return self.path if key == str(self.path) else B.version_dir(self.root, key)

    def _stamp(self, key: str) -> tuple:
        """What changes when a refused version directory is rewritten, repaired or still being written: the
        name, size, mtime, ctime, inode and mode of every file in it (a flat tuple, as it travels to the
        supervisor as JSON). A version refused while its files were being copied is tried again once the
        copy changed them, whichever file the copy wrote last; so is one repaired in place with its mtime
        kept (``cp -p`` over a damaged file: the ctime moves) or made readable (``chmod``)."""
        try:
            out = []
            with os.scandir(self.directory(key)) as it:
                for e in sorted(it, key=lambda e: e.name):
                    st = e.stat(follow_symlinks=True)
                    out += [e.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode]
            return tuple(out)
        except (OSError, ValueError):
            return ()

    def load(self, key: str):
        from recserve import bundle as B
        from recserve.pipeline.recommender import Recommender

        b = B.Bundle.open(self.directory(key), verify=True)
        try:
            rec = Recommender(b, self.store, self.cfg.pipeline_overrides())
            rec.warmup()
        except Exception:
            b.close()
            raise
        if MANIFEST_DIGEST not in b.manifest:
            log.warning("bundle %s: its manifest is not sealed (no %s: written before manifests carried a digest, "
                        "or the key removed), so its values are not checked", rec.version, MANIFEST_DIGEST,
                        extra={"event": "manifest_not_sealed", "version": rec.version})
        return rec

    def pending(self, retry: bool = False) -> bool:
        """Whether :meth:`try_reload` (with ``retry``) would load a bundle now (cheap: CURRENT and the
        version's stats)."""
        try:
            key = self._key()
        except BundleError:
            key = None
        if key is not None and key != self.current_key and (retry or self._refused != (key, self._stamp(key))):
            return True
        return self.current is None and self.fallback is not None

    def try_reload(self, retry: bool = False) -> bool:
        """Load the version CURRENT names if it differs from the live one. True when swapped.

        A version refused before is tried again only once its files changed (:meth:`_stamp`), or when
        ``retry`` (an operator's SIGHUP: a refusal whose cause lay outside the files, such as memory
        that ran out while loading, is not remembered past it). With nothing live yet and CURRENT's
        version refused (now or by the siblings), a replacement loads its siblings' version
        (``fallback``) instead, once."""
        tried = None
        try:
            key = self._key()
            self._current_error = None
        except BundleError as exc:
            self._refuse_current(str(exc))
            key = None
        if key is not None and key != self.current_key:
            stamp = self._stamp(key)
            # refused before and unchanged: not re-hashed every poll
            if retry or self._refused != (key, stamp):
                tried = key
                if self._swap(key, stamp):
                    return True
        fallback, self.fallback = self.fallback, None
        if self.current is None and fallback is not None and fallback != tried:
            return self._swap(fallback, self._stamp(fallback))
        return False

    def _swap(self, key: str, stamp: tuple) -> bool:
        """Load ``key`` and make it the live pipeline; False (logged, remembered) when it is refused."""
        self.attempts += 1
        try:
            rec = self.load(key)
        except Exception as exc:  # noqa: BLE001 -- any failure refuses the bundle
            log.error("bundle refused, keeping %s", self.current.version if self.current else "none",
                      extra={"event": "reload_refused", "version": key, "error": str(exc)})
            self.last_error = f"{key}: {exc}"
            self._refused = (key, stamp)
            if self.metrics:
                self.metrics.reloads.labels("refused").inc()
            if self.report:
                self.report("refused", key, stamp)
            return False
        with self._lease_lock:
            old = self.current
            self.current, self.current_key, self.last_error = rec, key, None  # the atomic swap
        if self.metrics:   # a worker's first bundle (start or respawn) is not a reload
            self.metrics.reloads.labels("loaded" if old is not None else "started").inc()
            if old is not None:
                self.metrics.version.labels(old.version).set(0)
            self.metrics.version.labels(rec.version).set(1)
        log.info("bundle loaded", extra={"event": "bundle_loaded", "version": rec.version})
        if self.report:
            self.report("loaded", key, stamp)
        if old is not None:  # in-flight requests may still hold it: closed when the last lets go
            self._retire(old)
        # the long-lived objects of the new bundle leave the collector's generations, so the full
        # collections that requests trigger stay short. What an earlier load froze stays frozen: a full
        # collection over it holds the GIL, pausing the worker's loop, for 20-40 ms, while this one
        # scans only what is new. A retired pipeline holds no reference cycle: it goes when its last
        # reference does, frozen or not (tests/server/test_rollback.py).
        gc.collect()
        gc.freeze()
        return True
