"""Input conversion shared by the Python layers: dtype, contiguity and shape, with the GIL held."""
from __future__ import annotations

import operator

import numpy as np


def f32_1d(x, name: str) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def f32_2d(x, name: str) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {a.shape}")
    return a


def to_int32(a: np.ndarray, name: str) -> np.ndarray:
    """Cast integer rows to int32, refusing values that would wrap around (they are out of any range)."""
    if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{name}: row {a.max() if a.max() > 0 else a.min()} is out of range")
    return a.astype(np.int32)


def rows_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer rows, got dtype {a.dtype}")
    if a.dtype != np.int32:
        a = to_int32(a, name)
    a = np.ascontiguousarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def i64_1d(x, name: str) -> np.ndarray:
    """Integers as a contiguous 1-D int64 array (a float array is refused, not truncated)."""
    a = np.ascontiguousarray(integers(x, name))
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def integer(x, name: str, lo: int | None = None) -> int:
    """A Python or numpy integer (a float such as 2.9 is refused, not truncated), at least ``lo``."""
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {x!r}") from None
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def integers(x, name: str) -> np.ndarray:
    """An array of integers as int64 (of any shape; floats refused, not truncated; unsigned values above
    int64's range refused, not wrapped to negative ones)."""
    a = np.asarray(x)
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.size and a.dtype.kind == "u" and a.dtype.itemsize == 8 and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: {a.max()} does not fit int64")
    return a.astype(np.int64, copy=False)
