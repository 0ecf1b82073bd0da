"""``recserve store`` beside a writer holding the store's write lock: ``stats`` reads without waiting, a
writing action says that it waits and Ctrl-C gives up at once; ids and stores it cannot use are refused
before anything is written."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from recserve.events import Event, EventStore

HOLD = """
import sys
from recserve.events import EventStore
store = EventStore(sys.argv[1], map_size=0)
txn = store.env.begin(write=True)          # the write lock, until stdin closes
print("held", flush=True)
sys.stdin.read()
txn.abort()
"""


def _line_within(stream, seconds: float = 30) -> str:
    """The next line of a child's pipe, or '' when none comes in time (the test fails, it does not hang)."""
    import select

    ready, _, _ = select.select([stream], [], [], seconds)
    return stream.readline() if ready else ""


def _start(ev, *action, **kw):
    """``recserve store ACTION --events-dir EV`` started, its stdout and stderr pipes unless ``kw`` says."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.Popen([sys.executable, "-m", "recserve.cli", "store", *action, "--events-dir", str(ev)],
                            text=True, **pipes)


def _release(holder) -> None:
    holder.stdin.close()
    holder.wait(60)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "recserve.cli", "store", *args], capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.fixture
def held(tmp_path):
    """A store of 3 users' events, and a process holding its write lock for the test."""
    ev = tmp_path / "ev"
    store = EventStore(ev, map_size=1 << 26)
    store.record([Event(f"u{k % 3}", f"i{k}", 0, 1.0 + k) for k in range(30)], lambda u: True)
    store.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ev)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    yield ev, holder
    _release(holder)


def test_stats_answers_while_a_writer_holds_the_lock(held):
    ev, holder = held
    r = _cli("stats", "--events-dir", str(ev))
    assert holder.poll() is None                    # still held: stats did not wait for it
    assert r.returncode == 0 and r.stdout.splitlines()[-1].split()[1:3] == ["30", "3"], r.stdout + r.stderr


@pytest.mark.parametrize("action", [["forget", "u1"], ["prune", "--older-than-days", "0", "--batch", "1"],
                                    ["clear-items", "--all"]])
def test_ctrl_c_while_waiting_for_the_lock_exits_at_once_having_changed_nothing(held, action):
    ev, holder = held
    p = _start(ev, *action)
    notice = _line_within(p.stderr)                 # said once the wait passes a second
    if not notice:
        p.kill()
    assert "waiting for the store's write lock" in notice and "Ctrl-C gives up" in notice, notice
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert time.monotonic() - sent < 10 and holder.poll() is None       # gave up while the lock was held
    assert p.returncode == 130 and err.strip() == (
        "recserve store: interrupted while waiting for the store's write lock; nothing was changed"), err
    _release(holder)
    store = EventStore(ev, map_size=0)
    assert store.stats()["events"] == 30 and store.recent_columns("u1", 100)[0]
    store.close()


def test_a_writing_action_goes_on_once_the_lock_is_free(held):
    ev, holder = held
    p = _start(ev, "forget", "u1")
    assert "waiting for the store's write lock" in _line_within(p.stderr)
    _release(holder)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "forgot 1 users: 10 events deleted" in out, out + err


def test_bad_ids_are_refused_and_nothing_is_written(tmp_path):
    ev = tmp_path / "ev"
    store = EventStore(ev, map_size=1 << 26)
    store.record([Event("u1", "i1", 0, 1.0)], lambda u: True)
    store.update_items([("i1", False, None)])
    for args, says in ((["forget", "u1", ""], "user id: must not be empty"),
                       (["forget", "u1", "x" * 600], "user id: longer than"),
                       (["clear-items", "i1", ""], "item id: must not be empty")):
        r = _cli(*args, "--events-dir", str(ev))
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"recserve store: {r.stderr.split(': ', 1)[1].strip()}"] and says in r.stderr, r.stderr
        assert r.stderr.strip().endswith("; nothing was changed")
    assert store.recent_columns("u1", 5)[0] == ["i1"] and store.item_changes(0)[1] == {"i1": {"in_stock": False}}
    r = _cli("clear-items", "--events-dir", str(ev))
    assert r.returncode == 2 and r.stderr.strip() == "recserve store: clear-items takes item ids or --all", r.stderr
    store.close()


def test_an_empty_data_file_is_no_store_and_stays_as_it_was(tmp_path):
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "data.mdb").write_bytes(b"")
    for action in (["stats"], ["forget", "u1"]):
        r = _cli(*action, "--events-dir", str(ev))
        assert r.returncode == 2 and r.stderr.strip() == f"recserve store: no event store at {ev} (an empty data.mdb)"
    assert sorted(p.name for p in ev.iterdir()) == ["data.mdb"] and (ev / "data.mdb").stat().st_size == 0


def test_a_tool_started_with_sigint_ignored_keeps_ignoring_it(held):
    """A background job of a script inherits SIGINT ignored: the tool does not take it up (blocking it
    would queue the signal instead of discarding it)."""
    ev, holder = held
    p = _start(ev, "forget", "u1", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(1.5)                                 # waiting (nothing said: Ctrl-C would not give up)
    p.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert p.poll() is None                         # still waiting
    _release(holder)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "forgot 1 users: 10 events deleted" in out, out + err


def test_ctrl_c_while_waiting_exits_even_when_stderr_is_gone(held):
    """The reader of stderr gone (a pipe closed by the same Ctrl-C): the line is lost, the exit is not."""
    ev, holder = held
    p = _start(ev, "forget", "u1", stdout=subprocess.DEVNULL)
    assert "waiting for the store's write lock" in _line_within(p.stderr)
    p.stderr.close()
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 130 and holder.poll() is None
    _release(holder)
    store = EventStore(ev, map_size=0)
    assert store.stats()["events"] == 30
    store.close()


def test_stats_on_a_store_of_an_older_layout_says_so_and_writes_nothing(held):
    """A store whose retired items are in the first layout is converted by writers only: stats, which must
    neither wait nor write, says so (before: it waited for the lock, then converted the store)."""
    import lmdb

    ev, holder = held
    _release(holder)
    env = lmdb.open(str(ev), max_dbs=10, map_size=0)
    with env.begin(write=True) as txn:
        txn.delete(b"retired_keys", db=env.open_db(b"meta", txn=txn))
    env.close()
    r = _cli("stats", "--events-dir", str(ev))
    assert r.returncode == 2 and "is in an older layout" in r.stderr, r.stderr
    env = lmdb.open(str(ev), max_dbs=10, map_size=0, readonly=True)
    with env.begin() as txn:
        assert txn.get(b"retired_keys", db=env.open_db(b"meta", txn=txn, create=False)) is None
    env.close()
