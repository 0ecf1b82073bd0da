"""The item table as one request sees it: bundle features with the live stock / price overlay.

An :class:`ItemSnapshot` is built once per change of the item state (never per request) and is read-only
afterwards, so a request reads one consistent view and everything a request needs about the whole
catalogue is precomputed here: the in-stock mask, the out-of-stock exclusion bitset and the in-stock
trending list. The default request (in-stock items only, no other filter) then costs nothing that grows
with the catalogue.
"""
from __future__ import annotations

import numpy as np

from recserve._core.cross import Crosser
from recserve._core.merge import exclusion_bitset


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def walk_allowed(rows: np.ndarray, scores: np.ndarray, allowed: np.ndarray, limit: int):
    """The first ``limit`` entries of a ranked list whose rows are allowed, reading only as far as needed."""
    out_r, out_s, have, i, step = [], [], 0, 0, max(4 * limit, 256)
    while have < limit and i < len(rows):
        r, s = rows[i:i + step], scores[i:i + step]
        keep = allowed[r]
        out_r.append(r[keep])
        out_s.append(s[keep])
        have += int(keep.sum())
        i += step
        step *= 2
    if not out_r:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return (np.concatenate(out_r)[:limit].astype(np.int32, copy=False),
            np.concatenate(out_s)[:limit].astype(np.float32, copy=False))


class ItemSnapshot:
    """Item features (with overlay), their :class:`Crosser`, and the catalogue-wide derived structures."""

    def __init__(self, feats: np.ndarray, schema, emb: np.ndarray, columns: dict[str, int],
                 trend_rows: np.ndarray, trend_scores: np.ndarray, price: np.ndarray | None = None):
        self.feats = _frozen(feats)
        self.crosser = Crosser(schema, feats, emb)
        n = len(feats)
        self.n_items = n
        c_stock = columns.get("in_stock")
        if c_stock is None:
            self.in_stock = None                       # no stock column: everything is in stock
            self.n_in_stock = n
            self.out_of_stock_bits = None
            self.trend_in_stock_count = None
        else:
            self.in_stock = _frozen(np.ascontiguousarray(feats[:, c_stock] > 0.5))
            self.n_in_stock = int(self.in_stock.sum())
            self.out_of_stock_bits = _frozen(np.packbits(~self.in_stock, bitorder="little"))
            # in-stock items among the first i + 1 of the trending list: how far to read it for n of them
            self.trend_in_stock_count = _frozen(np.cumsum(self.in_stock[trend_rows], dtype=np.int64))
        c_cat = columns.get("category")
        self.category = None if c_cat is None else _frozen(np.ascontiguousarray(feats[:, c_cat], np.int64))
        # what the price filters compare: the exact (float64) prices with the live overlay, or, for a
        # bundle without them, the float32 feature column
        c_price = columns.get("price")
        if price is None and c_price is not None:
            price = np.ascontiguousarray(feats[:, c_price])
        self.price = None if price is None else _frozen(price)

    def trend_prefix(self, n_in_stock: int) -> int:
        """The length of the trending list's prefix holding ``n_in_stock`` in-stock items (or all of it)."""
        if self.trend_in_stock_count is None:
            return n_in_stock
        return int(np.searchsorted(self.trend_in_stock_count, n_in_stock)) + 1

    def exclusion_bits(self, rows: np.ndarray, allowed: np.ndarray | None) -> np.ndarray | None:
        """The merge's exclusion bitset: ``rows`` plus every item ``allowed`` rules out."""
        if allowed is None:
            return exclusion_bitset(self.n_items, rows) if len(rows) else None
        if allowed is self.in_stock:
            return exclusion_bitset(self.n_items, rows, self.out_of_stock_bits)
        return exclusion_bitset(self.n_items, rows, np.packbits(~allowed, bitorder="little"))
