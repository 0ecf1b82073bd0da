"""Input conversion shared by the Python layers: dtype, contiguity and shape, with the GIL held."""
from __future__ import annotations

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


def rows_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer rows, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int32)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def i64_1d(x, name: str) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.int64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a
