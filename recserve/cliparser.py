"""The argument parser of every recserve command line: a bad argument is one line on stderr (the command,
``error:`` and the reason) and exit code 2; the full usage is what ``--help`` is for."""
from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse's parser with its errors in one line. Sub-commands (``add_subparsers``) get this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")
