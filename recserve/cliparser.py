"""The argument parser of every recserve command line: a bad argument is one line on stderr (the command,
``error:`` and the reason) and exit code 2; the full usage is what ``--help`` is for."""
from __future__ import annotations

import argparse
import os


class Parser(argparse.ArgumentParser):
    """argparse's parser with its errors in one line. Sub-commands (``add_subparsers``) get this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def reason(exc: BaseException) -> str:
    """An error as one line for a person: an OSError's file names and reason, without Python's ``[Errno N]``;
    anything else its message's first line (its type when it has none)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        why = exc.strerror or os.strerror(exc.errno)
        names = [os.fsdecode(f) for f in (exc.filename, exc.filename2) if f is not None]
        return f"{' -> '.join(names)}: {why}" if names else why
    return (str(exc) or type(exc).__name__).splitlines()[0]
