"""Candidate merging: several ranked source lists into one de-duplicated, filtered, capped list.

Sources are visited round-robin by rank (rank 0 of every source, then rank 1, ...), so a total cap keeps
the best of each source rather than all of the first. Each source contributes at most ``quota`` distinct,
non-excluded items; an item found by several sources appears once and records, per source, its rank
(-1 when absent) and score: these are ranking features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from recserve._core import _merge
from recserve._core._validate import integer, integers, rows_1d, to_int32


@dataclass
class Merged:
    rows: np.ndarray      # int32[m] item rows, in round-robin first-appearance order
    sources: np.ndarray   # uint32[m] bitmask of the sources that found each item
    rank: np.ndarray      # int32[m, S] rank in each source, -1 when absent
    score: np.ndarray     # float32[m, S] score in each source, 0 when absent

    def __len__(self) -> int:
        return len(self.rows)


def exclusion_bitset(n_items: int, rows, base: np.ndarray | None = None) -> np.ndarray:
    """A little-endian uint8 bitset of ``n_items`` bits: ``base`` (copied, never modified) with ``rows`` set.

    Its cost follows the rows (plus one copy of ``base``), not the catalogue's size."""
    r = rows_1d(rows, "excluded rows")
    if r.size and (r.min() < 0 or r.max() >= n_items):
        raise ValueError(f"excluded row out of range [0, {n_items})")
    bits = np.zeros((n_items + 7) // 8, np.uint8) if base is None else np.array(base, np.uint8)
    if r.size:
        r = r.astype(np.int64)
        np.bitwise_or.at(bits, r >> 3, np.left_shift(1, r & 7).astype(np.uint8))
    return bits


def merge_candidates(lists: Sequence[tuple[np.ndarray, np.ndarray]], quotas: Sequence[int], cap: int,
                     n_items: int, excluded: np.ndarray | None = None) -> Merged:
    """Merge ``lists`` (one ``(rows, scores)`` pair per source, best first)."""
    if len(lists) != len(quotas):
        raise ValueError(f"{len(lists)} candidate lists but {len(quotas)} quotas")
    if not lists:
        raise ValueError("at least one candidate list is required")
    rows, scores = [], []
    offsets = np.zeros(len(lists) + 1, np.int64)
    for i, (r, sc) in enumerate(lists):
        r = np.asarray(r)
        sc = np.asarray(sc)
        if r.ndim != 1 or sc.ndim != 1 or len(r) != len(sc):
            raise ValueError(f"source {i}: rows and scores must be 1-D of one length, got {r.shape}, {sc.shape}")
        if r.size and r.dtype.kind not in "iu":
            raise ValueError(f"source {i}: rows must be integers, got dtype {r.dtype}")
        rows.append(r)
        scores.append(sc)
        offsets[i + 1] = offsets[i] + len(r)
    bits = None
    if excluded is not None:                # an exclusion_bitset, not rows or a bool mask
        bits = np.asarray(excluded)
        if bits.dtype != np.uint8 or bits.ndim != 1:
            raise ValueError(f"excluded must be a 1-D uint8 bitset (exclusion_bitset), got {bits.dtype} "
                             f"of shape {bits.shape}")
        bits = np.ascontiguousarray(bits)
    # one conversion each (int32 rows, float32 scores); the kernel range-checks rows before its loop
    all_rows = np.concatenate(rows)
    out = _merge.merge(all_rows if all_rows.dtype == np.int32 else to_int32(all_rows, "candidate rows"),
                       np.concatenate(scores).astype(np.float32, copy=False), offsets,
                       integers(quotas, "quotas"), integer(cap, "cap"), integer(n_items, "n_items"), bits)
    return Merged(*out)


def merge_reference(lists, quotas, cap, n_items, excluded=None) -> Merged:
    """Plain numpy/Python reference of :func:`merge_candidates`."""
    S = len(lists)
    ex = np.zeros(n_items, bool) if excluded is None else np.unpackbits(
        np.asarray(excluded, np.uint8), bitorder="little")[:n_items].astype(bool)
    pos = [0] * S
    taken = [0] * S
    order: list[int] = []
    where: dict[int, int] = {}
    rank: list[list[int]] = []
    score: list[list[float]] = []
    progress = True
    while progress:
        progress = False
        for s, (r, sc) in enumerate(lists):
            while pos[s] < len(r) and taken[s] < quotas[s]:
                i = pos[s]
                pos[s] += 1
                item = int(r[i])
                if ex[item]:
                    continue
                if item in where:
                    j = where[item]
                    if rank[j][s] >= 0:
                        continue
                elif len(order) >= cap:
                    continue
                else:
                    j = where[item] = len(order)
                    order.append(item)
                    rank.append([-1] * S)
                    score.append([0.0] * S)
                rank[j][s] = i
                score[j][s] = float(sc[i])
                taken[s] += 1
                progress = True
                break
    rk = np.array(rank, np.int32).reshape(len(order), S)
    srcs = np.array([sum(1 << s for s in range(S) if rk[j, s] >= 0) for j in range(len(order))], np.uint32)
    return Merged(np.array(order, np.int32), srcs, rk, np.array(score, np.float32).reshape(len(order), S))
