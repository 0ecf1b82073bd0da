"""Time splits: the newest interactions are held out (never a random split)."""
from __future__ import annotations

import numpy as np


def time_cut(ts: np.ndarray, holdout: float) -> float:
    """The timestamp such that about ``holdout`` of the interactions are at or after it. Where the quantile
    falls on a time that the oldest interactions share (logs backfilled at one time), the next time after
    it: less than ``holdout`` is then at or after the cut, and the oldest time is all before it."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout}")
    cut = float(np.quantile(ts, 1.0 - holdout))
    if not (ts < cut).any() and (later := ts[ts > cut]).size:
        cut = float(later.min())
    if not (ts < cut).any():
        raise ValueError(f"the time split leaves no training interaction: every interaction is at or after "
                         f"{cut:.0f} (unix seconds; build with --holdout 0, or with data over a longer time)")
    return cut


def split_masks(ts: np.ndarray, holdout: float):
    cut = time_cut(ts, holdout)
    return ts < cut, ts >= cut, cut


def per_user_label_mask(user: np.ndarray, ts: np.ndarray, train_mask: np.ndarray, n_users: int,
                        frac: float, seed: int = 0, random: bool = False) -> np.ndarray:
    """Per user, her newest ``frac`` of the training interactions (at least one, for users with two or
    more), or with ``random`` a seeded random share of them: the labels of the ranker's rows when every
    user should be a training group (per-user evaluation protocols), not only the users active last."""
    idx = np.flatnonzero(train_mask)
    u = user[idx]
    if random:
        order = idx[np.lexsort((np.random.default_rng(seed).random(len(idx)), u))]
    else:
        order = idx[np.lexsort((-idx, -ts[idx], u))]           # per user, newest first
    u_o = user[order]
    counts = np.bincount(u_o, minlength=n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(order)) - starts[u_o]
    n_lab = np.where(counts >= 2, np.maximum(1, np.round(counts * frac)), 0).astype(np.int64)
    mask = np.zeros(len(user), bool)
    mask[order[pos < n_lab[u_o]]] = True
    return mask
