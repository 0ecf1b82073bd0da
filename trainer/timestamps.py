"""Times as the input files give them, to unix seconds: numbers since 1970 in any unit, ISO 8601 text with or
without a zone, mixed freely in one column (``trainer.io`` reads the columns and checks the range)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_ZONE = r"\d\d:\d\d.*(Z|[+-]\d\d(:?\d\d)?)$"   # ISO 8601 with a time and a zone: Z, +02, +0200, +02:00
PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def epoch_seconds(a: np.ndarray) -> np.ndarray:
    """Numbers since 1970 in seconds, milliseconds, microseconds or nanoseconds, told apart by size (a
    value above 1e11 s would be after the year 5138): as seconds."""
    a = np.asarray(a, np.float64)
    for _ in range(3):
        a = np.where(np.abs(a) > 1e11, a / 1000.0, a)
    return a


def _parse_iso(part: pa.Array, zoned: bool) -> np.ndarray:
    """ISO 8601 strings (fractions of a second allowed, beyond microseconds cut; with a zone when ``zoned``,
    else read as UTC) as seconds; NaN where a value does not parse."""
    typ = pa.timestamp("us", tz="UTC") if zoned else pa.timestamp("us")
    return _cast_halves(pc.replace_substring_regex(part, r"(\.\d{6})\d+", r"\1"), typ)


def _cast_halves(part: pa.Array, typ: pa.DataType) -> np.ndarray:
    """``part`` cast to ``typ`` as seconds; where the cast fails, the halves are cast apart, down to single
    values (NaN): a few bad values among millions cost a few dozen casts, not a loop over the column."""
    try:
        return pc.cast(pc.cast(part, typ), pa.int64()).to_numpy(zero_copy_only=False) / 1e6
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(part) == 1:
            return np.array([np.nan])
    half = len(part) // 2
    return np.concatenate([_cast_halves(part.slice(0, half), typ), _cast_halves(part.slice(half), typ)])


def text_timestamps(c: pa.Array) -> np.ndarray:
    """Trimmed text (empty cells null) as seconds, value by value: numbers since 1970, or ISO 8601 with or
    without a zone; NaN where a value does not parse."""
    c = pc.utf8_upper(c)                # 't', 'z' read as 'T', 'Z'
    out = np.full(len(c), np.nan)
    present = ~pc.is_null(c).to_numpy(zero_copy_only=False)
    numeric = pc.fill_null(pc.match_substring_regex(c, _NUMBER), False).to_numpy(zero_copy_only=False)
    if numeric.any():
        numbers = pc.cast(pc.filter(c, pa.array(numeric)), pa.float64())
        out[numeric] = epoch_seconds(numbers.to_numpy(zero_copy_only=False))
    zoned = pc.fill_null(pc.match_substring_regex(c, _ZONE), False).to_numpy(zero_copy_only=False) & ~numeric
    for mask, has_zone in ((zoned, True), (present & ~zoned & ~numeric, False)):
        idx = np.flatnonzero(mask)
        if len(idx):
            out[idx] = _parse_iso(c.take(pa.array(idx)), has_zone)
    return out
