"""Versions refused at reload: not re-hashed every poll, tried again once their files change (a copy that
finished, a repair in place) or at a SIGHUP, and a CURRENT naming a directory outside the root."""
from __future__ import annotations

import time

from recserve.config import ServeConfig
from recserve.live import BundleHolder
from srvutil import copy_root, new_version, set_current


def _live(shared_root, tmp_path):
    """A copy of the shared root and a holder serving its CURRENT version: (root, that version, holder)."""
    root = copy_root(shared_root, tmp_path / "root")
    good = (root / "CURRENT").read_text().strip()
    holder = BundleHolder(str(root), ServeConfig(reload_interval=0), None)
    assert holder.try_reload() and holder.current.version == good
    return root, good, holder


def test_refused_bundle_is_not_reloaded_every_poll(shared_root, tmp_path):
    """A CURRENT naming a bad bundle is tried once, not re-hashed and re-opened on every poll; a
    rewrite of that version directory is tried again; the live bundle keeps serving throughout."""
    import os

    root, good, holder = _live(shared_root, tmp_path)
    new_version(root, good, "v-bad", corrupt="model")
    set_current(root, "v-bad")
    for _ in range(4):
        assert not holder.try_reload()
    assert holder.attempts == 2 and holder.current.version == good
    m = root / "v-bad" / "manifest.json"
    st = m.stat()
    os.utime(m, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))     # rewritten: try again
    assert not holder.try_reload() and holder.attempts == 3
    holder.current.bundle.close()


def test_a_refused_version_repaired_in_place_with_its_mtime_kept_loads(shared_root, tmp_path):
    """A version refused for a damaged file, then repaired by ``cp -p`` over it: the same inode, size and
    mtime, only the ctime moved. It loads at the next poll (before: the refusal was remembered by name,
    size, mtime and inode, and no poll or SIGHUP tried it again until a restart)."""
    import os

    root, good, holder = _live(shared_root, tmp_path)
    new_version(root, good, "v-fixed")
    ranker = root / "v-fixed" / "ranker.txt"
    sound, st = ranker.read_bytes(), ranker.stat()
    damaged = bytearray(sound)
    damaged[len(damaged) // 2] ^= 0x55
    ranker.write_bytes(bytes(damaged))                              # damaged in transit, its mtime kept
    os.utime(ranker, ns=(st.st_atime_ns, st.st_mtime_ns))
    set_current(root, "v-fixed")
    assert not holder.try_reload() and "sha256" in holder.last_error and holder.attempts == 2
    assert not holder.try_reload() and holder.attempts == 2         # unchanged: not tried again
    time.sleep(0.01)                                                # a ctime the repair visibly moves
    with open(ranker, "r+b") as f:                                  # cp -p: rewritten in place
        f.write(sound)
    os.utime(ranker, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = ranker.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    assert holder.try_reload() and holder.current.version == "v-fixed", holder.last_error
    holder.current.bundle.close()


def test_a_retry_tries_a_refused_version_again_with_its_files_unchanged(shared_root, tmp_path):
    """``try_reload(retry=True)`` (what a SIGHUP asks) tries again a version refused for a cause outside
    its files (memory that ran out while loading, a library fixed on the host)."""
    root, good, holder = _live(shared_root, tmp_path)
    new_version(root, good, "v-bad", corrupt="model")
    set_current(root, "v-bad")
    assert not holder.try_reload() and not holder.try_reload() and holder.attempts == 2
    assert not holder.pending() and holder.pending(retry=True)      # so a worker tells its siblings it loads
    assert not holder.try_reload(retry=True) and holder.attempts == 3
    assert holder.current.version == good
    holder.current.bundle.close()


def test_a_version_refused_while_its_files_were_copied_loads_once_they_are(shared_root, tmp_path):
    """CURRENT moved before the copy of its version finished (the manifest copied first, the index last): the
    version is refused, then loaded at the first poll after the index lands, with the manifest untouched
    (before: the refusal was remembered by the manifest's stat alone, and this worker kept the old bundle
    while a sibling that polled later served the new one)."""
    import shutil

    root, good, holder = _live(shared_root, tmp_path)
    new_version(root, good, "v-copied")
    index = root / "v-copied" / "index.hnsw"
    held = tmp_path / "index.hnsw"
    shutil.move(index, held)
    index.write_bytes(held.read_bytes()[:4096])           # the copy is under way
    set_current(root, "v-copied")
    assert not holder.try_reload() and holder.current.version == good
    assert not holder.try_reload() and holder.attempts == 2         # unchanged: not tried again
    manifest = (root / "v-copied" / "manifest.json").stat()
    shutil.copyfile(held, index)                                     # the copy is done
    assert (root / "v-copied" / "manifest.json").stat().st_mtime_ns == manifest.st_mtime_ns
    assert holder.try_reload() and holder.current.version == "v-copied"
    holder.current.bundle.close()


def test_current_naming_a_directory_outside_the_root_is_refused(shared_root, tmp_path):
    """CURRENT holds a version name, never a path: a relative path out of the root, an absolute path and
    an empty file are each refused (the live bundle stays), as ``recserve-train verify`` refuses them."""
    root, good, holder = _live(shared_root, tmp_path)
    other = copy_root(shared_root, tmp_path / "other")
    for name, why in ((f"../other/{good}", "invalid version name"), (str(other / good), "invalid version name"),
                      ("", "is empty")):
        (root / "CURRENT").write_text(name + "\n")
        assert not holder.try_reload()
        assert holder.current.version == good and why in holder.last_error, holder.last_error
    holder.current.bundle.close()
