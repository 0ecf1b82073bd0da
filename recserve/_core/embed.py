"""The user vector: an L2-normalised, recency-weighted average of the user's recent item embeddings.

For a history of L items (oldest first) the position weights are ``w_t = exp(decay * (t - (L - 1)))``
(newest largest), multiplied by an optional per-event weight (view < click < cart < purchase) and an
optional half-life term ``0.5 ** (age / half_life)``, then normalised to sum 1. Two such averages, with a
short- and a long-term decay, are mixed: ``normalize(alpha * avg(decay_long) + (1 - alpha) * avg(decay_short))``.
An empty history, or a mix whose norm is 0, gives the zero vector (callers treat the user as cold).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recserve._core import _embed
from recserve._core._validate import f32_1d, f32_2d, i64_1d, rows_1d


@dataclass(frozen=True)
class UserVectorParams:
    decay_short: float = 0.5
    decay_long: float = 0.02
    alpha: float = 0.5          # weight of the long-term average
    half_life: float = 0.0      # in the unit of the ages; 0 switches the time term off

    def __post_init__(self):
        for name in ("decay_short", "decay_long", "half_life"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


def user_vector(item_emb: np.ndarray, rows, params: UserVectorParams,
                event_weights=None, ages=None) -> np.ndarray:
    """One user's vector, float32[d]. ``rows`` are item rows, oldest first."""
    emb = f32_2d(item_emb, "item_emb")
    r = rows_1d(rows, "rows")
    w = None if event_weights is None else f32_1d(event_weights, "event_weights")
    a = None if ages is None else f32_1d(ages, "ages")
    return _embed.user_vector(emb, r, w, a, params.decay_short, params.decay_long, params.alpha,
                              params.half_life)


def user_vectors(item_emb: np.ndarray, indptr, rows, params: UserVectorParams,
                 event_weights=None, ages=None) -> np.ndarray:
    """Batch form over CSR histories: user u is ``rows[indptr[u]:indptr[u+1]]``. Returns float32[U, d]."""
    emb = f32_2d(item_emb, "item_emb")
    r = rows_1d(rows, "rows")
    w = None if event_weights is None else f32_1d(event_weights, "event_weights")
    a = None if ages is None else f32_1d(ages, "ages")
    return _embed.user_vectors_csr(emb, i64_1d(indptr, "indptr"), r, w, a, params.decay_short,
                                   params.decay_long, params.alpha, params.half_life)


def user_vector_reference(item_emb, rows, params: UserVectorParams, event_weights=None, ages=None):
    """Plain numpy reference of :func:`user_vector` (for tests and benchmarks)."""
    rows = np.asarray(rows, np.int64)
    d = item_emb.shape[1]
    if len(rows) == 0:
        return np.zeros(d, np.float32)
    if rows.min() < 0 or rows.max() >= len(item_emb):
        raise ValueError("history row out of range")
    hist = np.asarray(item_emb[rows], np.float64)
    t = np.arange(len(rows), dtype=np.float64)

    def avg(decay):
        w = np.exp(decay * (t - (len(rows) - 1)))
        if event_weights is not None:
            w = w * np.asarray(event_weights, np.float64)
        if ages is not None and params.half_life > 0:
            w = w * 0.5 ** (np.asarray(ages, np.float64) / params.half_life)
        s = w.sum()
        return np.zeros(d) if s <= 0 else (w @ hist) / s

    with np.errstate(over="ignore", under="ignore"):
        v = params.alpha * avg(params.decay_long) + (1 - params.alpha) * avg(params.decay_short)
    n = np.linalg.norm(v)
    return (v / n if n > 0 else np.zeros(d)).astype(np.float32)


def user_vectors_reference(item_emb, indptr, rows, params: UserVectorParams, event_weights=None, ages=None):
    """Plain numpy reference of :func:`user_vectors`: user u is :func:`user_vector_reference` of
    ``rows[indptr[u]:indptr[u+1]]`` with that slice of ``event_weights`` and ``ages``. float32[U, d]."""
    indptr = np.asarray(indptr, np.int64)
    rows = np.asarray(rows, np.int64)
    if len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(rows) or (np.diff(indptr) < 0).any():
        raise ValueError("indptr must start at 0, not decrease and end at len(rows)")
    out = np.zeros((len(indptr) - 1, item_emb.shape[1]), np.float32)
    for u, (s, e) in enumerate(zip(indptr[:-1], indptr[1:])):
        out[u] = user_vector_reference(item_emb, rows[s:e], params,
                                       None if event_weights is None else np.asarray(event_weights)[s:e],
                                       None if ages is None else np.asarray(ages)[s:e])
    return out
