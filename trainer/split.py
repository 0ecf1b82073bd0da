"""Time splits: the newest interactions are held out (never a random split)."""
from __future__ import annotations

import numpy as np


def time_cut(ts: np.ndarray, holdout: float) -> float:
    """The timestamp such that about ``holdout`` of the interactions are at or after it."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout}")
    cut = float(np.quantile(ts, 1.0 - holdout))
    if not (ts < cut).any():
        raise ValueError("the time split leaves no training interaction (all timestamps equal?)")
    return cut


def split_masks(ts: np.ndarray, holdout: float):
    cut = time_cut(ts, holdout)
    return ts < cut, ts >= cut, cut
