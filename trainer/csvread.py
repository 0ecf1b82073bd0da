"""Reading a CSV file with pyarrow, serially.

pyarrow's threaded CSV reader cuts the file into blocks at line ends; a quote that opens a value and does
not close on its line puts the parser out of step with those blocks, and the threaded reader then drops
the rest of the block without an error (apache/arrow#39857): one stray ``"`` in a 100,000-row file lost
34,102 rows, and the build went on. The serial reader notices and fails; the line is found here, since
pyarrow's message names none. Measured on 995,162 rows (37 MB), the serial read costs about 12 ms more.
Where a later line closes the value, the serial reader reads the lines between as one value, as RFC 4180
has it (a free-text column written by pandas or a spreadsheet); a stray quote reads the same, and joins
rows. :func:`lines_joined` says how many lines were so joined, and where the first such value opens.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv


def read_csv(path: Path, read_options: pacsv.ReadOptions | None = None,
             parse_options: pacsv.ParseOptions | None = None, **options) -> pa.Table:
    """``pyarrow.csv.read_csv`` with ``use_threads=False``, and ``newlines_in_values`` where the file holds
    a quote (else a value spanning lines that a block boundary cuts fails the read, in files past a block
    of about 1 MiB); where the reader loses its place after a quote that does not close on its line (one
    that never closes), an ``ArrowInvalid`` naming that line."""
    ro = read_options or pacsv.ReadOptions()
    ro.use_threads = False
    delimiter = parse_options.delimiter if parse_options is not None else ","
    if _has_quote(path):    # a quoted value may span lines: the reader's blocks must not cut one
        parse_options = parse_options or pacsv.ParseOptions()
        parse_options.newlines_in_values = True
    try:
        return pacsv.read_csv(path, read_options=ro, parse_options=parse_options, **options)
    except pa.ArrowInvalid as exc:
        lost = "out of sync with chunker" in str(exc) or "straddles two block boundaries" in str(exc)
        if not lost or (n := _unclosed_quote(path, delimiter)) is None:
            raise
        raise pa.ArrowInvalid(f'line {n} opens a quoted value (") that does not close on its line') from None


def lines_joined(path: Path, rows: int, header: bool = True) -> tuple[int, int] | None:
    """``(lines, first)`` where a file read as ``rows`` rows holds ``lines`` more non-empty lines than rows
    (and header): lines that quoted values spanning lines joined to the row they began on, the first such
    value opening on line ``first``; None where there is none (only a file holding a quote can have one)."""
    if not _has_quote(path):
        return None
    with _opener(path)(path, "rt", encoding="latin-1", newline=None) as fh:
        lines = sum(1 for line in fh if line != "\n")
    extra = lines - rows - int(header)
    if extra <= 0:
        return None
    first = _unclosed_quote(path, ",")
    return extra, first if first is not None else 0


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
