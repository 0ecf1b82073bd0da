"""Reading a CSV file with pyarrow, serially.

pyarrow's threaded CSV reader cuts the file into blocks at line ends; a quote that opens a value and does
not close on its line puts the parser out of step with those blocks, and the threaded reader then drops
the rest of the block without an error (apache/arrow#39857): one stray ``"`` in a 100,000-row file lost
34,102 rows, and the build went on. The serial reader notices and fails; the line is found here, since
pyarrow's message names none. Measured on 995,162 rows (37 MB), the serial read costs about 12 ms more.
The serial reader does not always notice: where a later line holds a stray quote that closes the value,
it reads the two lines as one row, and the next row is lost without an error. So a file holding a quote
at all is scanned for such a line after it reads (a regular expression per line that holds one).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv


def read_csv(path: Path, read_options: pacsv.ReadOptions | None = None,
             parse_options: pacsv.ParseOptions | None = None, **options) -> pa.Table:
    """``pyarrow.csv.read_csv`` with ``use_threads=False``; a value opened by a quote that does not close on
    its line (a value may not span lines) is an ``ArrowInvalid`` naming the line."""
    ro = read_options or pacsv.ReadOptions()
    ro.use_threads = False
    delimiter = parse_options.delimiter if parse_options is not None else ","
    try:
        table = pacsv.read_csv(path, read_options=ro, parse_options=parse_options, **options)
    except pa.ArrowInvalid as exc:
        if "out of sync with chunker" not in str(exc) or (n := _unclosed_quote(path, delimiter)) is None:
            raise
        raise _refusal(n) from None
    if _has_quote(path) and (n := _unclosed_quote(path, delimiter)) is not None:
        raise _refusal(n)
    return table


def _refusal(line: int) -> pa.ArrowInvalid:
    return pa.ArrowInvalid(f'line {line} opens a quoted value (") that does not close on its line (a value may '
                           f'not span lines)')


def _opener(path: Path):
    return gzip.open if path.name.endswith(".gz") else open


def _has_quote(path: Path) -> bool:
    """Whether the (decompressed) file holds a ``"`` anywhere."""
    with _opener(path)(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            if b'"' in chunk:
                return True
    return False


def _unclosed_quote(path: Path, delimiter: str) -> int | None:
    """The first line holding a quoted value that does not close on it, lines counted as pyarrow counts
    them (``\\n``, ``\\r\\n`` or ``\\r`` ends one), a ``.gz`` file decompressed."""
    closed = _closed_line(delimiter)
    with _opener(path)(path, "rt", encoding="latin-1", newline=None) as fh:  # latin-1: each byte one character
        for n, line in enumerate(fh, 1):
            if '"' in line and closed.fullmatch(line.rstrip("\n")) is None:
                return n
    return None


def _closed_line(delimiter: str) -> re.Pattern:
    """A line whose every quoted value closes on it (a quote opens one only as the first
    character of a value, elsewhere it is a character of the value; inside one a doubled quote is a quote)."""
    d = re.escape(delimiter)
    value = f'(?:"(?:[^"]|"")*"(?!")[^{d}]*|[^"{d}][^{d}]*|)'
    return re.compile(f"{value}(?:{d}{value})*", re.DOTALL)
