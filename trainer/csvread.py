"""Reading a CSV file with pyarrow, serially.

pyarrow's threaded CSV reader cuts the file into blocks at line ends; a quote that opens a value and does
not close on its line puts the parser out of step with those blocks, and the threaded reader then drops
the rest of the block without an error (apache/arrow#39857): one stray ``"`` in a 100,000-row file lost
34,102 rows, and the build went on. The serial reader notices and fails; the line is found here, since
pyarrow's message names none. Measured on 995,162 rows (37 MB), the serial read costs about 12 ms more.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv


def read_csv(path: Path, read_options: pacsv.ReadOptions | None = None, **options) -> pa.Table:
    """``pyarrow.csv.read_csv`` with ``use_threads=False``; a value opened by a quote that does not close on
    its line (a value may not span lines) is an ``ArrowInvalid`` naming the line."""
    ro = read_options or pacsv.ReadOptions()
    ro.use_threads = False
    try:
        return pacsv.read_csv(path, read_options=ro, **options)
    except pa.ArrowInvalid as exc:
        if "out of sync with chunker" not in str(exc) or (n := _unclosed_quote(path)) is None:
            raise
        raise pa.ArrowInvalid(f'line {n} opens a quoted value (") that does not close on its line (a value may '
                              f'not span lines)') from None


def _unclosed_quote(path: Path) -> int | None:
    """The first line with an odd number of quotes (a quote inside a quoted value is written twice)."""
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if line.count(b'"') % 2:
                return n
    return None
