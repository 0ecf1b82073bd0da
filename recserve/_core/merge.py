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
    """Plain numpy reference of :func:`merge_candidates`, vectorised per source.

    Each source's picks are, in order, its distinct non-excluded entries, one per round. Until the cap
    fills, no source affects another: the picks are each source's first ``quota`` such entries, in (round,
    source) order, and the first appearances of their items give the merged order. The cap fills at the
    pick that adds the cap-th item (never when cap >= sum(quotas)); from then on the items are fixed, and
    each source only takes, up to its quota, its later entries that are among them (adding their rank and
    score)."""
    S = len(lists)
    if S == 0:
        return Merged(np.zeros(0, np.int32), np.zeros(0, np.uint32), np.zeros((0, 0), np.int32),
                      np.zeros((0, 0), np.float32))
    ex = np.zeros(n_items, bool) if excluded is None else np.unpackbits(
        np.asarray(excluded, np.uint8), bitorder="little")[:n_items].astype(bool)
    rows = [np.asarray(r, np.int64) for r, _ in lists]
    quota = [max(int(q), 0) for q in quotas]
    firsts = []                             # per source: positions of its distinct, non-excluded entries
    for r in rows:
        keep = np.flatnonzero(~ex[r])
        firsts.append(np.sort(keep[np.unique(r[keep], return_index=True)[1]]))
    # the picks as if there were no cap, in (round, source) order
    src = np.concatenate([np.full(min(len(f), q), s) for s, (f, q) in enumerate(zip(firsts, quota))])
    rnd = np.concatenate([np.arange(min(len(f), q)) for f, q in zip(firsts, quota)])
    pos = np.concatenate([f[:q] for f, q in zip(firsts, quota)])
    o = np.lexsort((src, rnd))
    src, pos = src[o], pos[o]
    offsets = np.cumsum([0] + [len(r) for r in rows])
    all_rows = np.concatenate(rows)
    item = all_rows[offsets[src] + pos]
    new = np.zeros(len(item), bool)         # the pick that brings in an item
    new[np.unique(item, return_index=True)[1]] = True
    n_new = np.cumsum(new)
    if len(item) and n_new[-1] > cap:       # the cap binds: the picks up to the one adding the cap-th item,
        n_kept = int(np.searchsorted(n_new, cap)) + 1 if cap > 0 else 0
        src, pos, new = src[:n_kept], pos[:n_kept], new[:n_kept]
        fixed = item[:n_kept][new]
        more_src, more_pos = [src], [pos]   # then each source's later entries among the items so far
        for s, (r, f) in enumerate(zip(rows, firsts)):
            done = int((src == s).sum())
            later = f[done:]
            later = later[np.isin(r[later], fixed)][:quota[s] - done]
            more_src.append(np.full(len(later), s))
            more_pos.append(later)
        src, pos = np.concatenate(more_src), np.concatenate(more_pos)
        item = all_rows[offsets[src] + pos]
        new = np.concatenate([new, np.zeros(len(item) - len(new), bool)])
    order = item[new]
    by_item = np.argsort(order)
    slot = by_item[np.searchsorted(order[by_item], item)]
    rank = np.full((len(order), S), -1, np.int32)
    rank[slot, src] = pos
    score = np.zeros((len(order), S), np.float32)
    score[slot, src] = np.concatenate([np.asarray(sc, np.float64) for _, sc in lists])[offsets[src] + pos]
    sources = ((rank >= 0).astype(np.uint32) << np.arange(S, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    return Merged(order.astype(np.int32), sources, rank, score)
