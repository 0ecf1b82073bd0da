"""Row gathers from float32 tables (typically zero-copy views from :class:`TableReader`)."""
from __future__ import annotations

import numpy as np

from recserve._core import _gather
from recserve._core._validate import f32_2d, rows_1d


def gather(table: np.ndarray, rows) -> np.ndarray:
    """``table[rows]`` as a new float32 array; rows are range-checked before the copy."""
    if not (isinstance(table, np.ndarray) and table.dtype == np.float32 and table.ndim == 2
            and table.flags.c_contiguous):
        table = f32_2d(table, "table")
    return _gather.gather(table, rows_1d(rows, "rows"))


def gather_reference(table: np.ndarray, rows) -> np.ndarray:
    return np.asarray(table)[np.asarray(rows, np.int64)]
