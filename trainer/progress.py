"""Progress bars (tqdm, on stderr) for the trainer's long steps, behind one switch.

The switch is ``auto`` by default: bars show when stderr is a terminal, so tests, pipes and log files stay
quiet. ``recserve-train build/evaluate --progress`` forces them on, ``--no-progress`` off.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

_forced: bool | None = None       # None: auto (stderr is a terminal)


def configure(enabled: bool | None) -> None:
    """Forces progress bars on (True) or off (False); None restores auto."""
    global _forced
    _forced = enabled


def enabled() -> bool:
    """Whether the long steps show progress now."""
    if _forced is not None:
        return _forced
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(it: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """``it`` with a progress bar named ``desc`` (a plain pass-through when progress is off)."""
    if not enabled():
        return iter(it)
    return iter(tqdm(it, total=total, desc=desc, leave=False, mininterval=0.5, file=sys.stderr))


def labelled(desc: str):
    """A ``progress(it, total=None)`` callable for the functions that take one (ranker rows, evaluate)."""
    return lambda it, total=None: bar(it, desc, total)
