"""Request filters as a mask over the item rows: categories, prices, excluded ids, in stock."""
from __future__ import annotations

import math

import numpy as np

from recserve.pipeline.errors import InvalidArgument
from recserve.pipeline.items import ItemSnapshot
from recserve.pipeline.messages import MAX_LIST, Filters, check_count, check_id


def in_codes(codes: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(codes, wanted)``: for a few wanted codes one comparison each, ten times faster over a
    large catalogue than ``isin``'s general method."""
    if len(wanted) > 4:
        return np.isin(codes, wanted)
    out = codes == wanted[0]
    for c in wanted[1:]:
        out |= codes == c
    return out


def category_codes(tables, names: list[str], field_name: str) -> np.ndarray:
    check_count(len(names), MAX_LIST, field_name, "categories")
    codes = []
    for n in names:
        r = tables.row_of("category", n)
        if r is None:
            raise InvalidArgument(field_name, f"unknown category {n!r}")
        codes.append(r)
    return np.array(list(dict.fromkeys(codes)), np.int64)      # a category named twice counts once


def allowed_items(tables, n_items: int, f: Filters, snap: ItemSnapshot, field_prefix: str = "filters"):
    """(mask of allowed item rows or None for everything, include category codes, number allowed).

    The in-stock-only default returns the snapshot's shared read-only mask: no per-request work.
    """
    include = category_codes(tables, f.include_categories, f"{field_prefix}.include_categories")
    exclude = category_codes(tables, f.exclude_categories, f"{field_prefix}.exclude_categories")
    for name, v in (("min_price", f.min_price), ("max_price", f.max_price)):
        if v is not None and (not math.isfinite(v) or v < 0):
            raise InvalidArgument(f"{field_prefix}.{name}", f"must be a finite price >= 0, got {v}")
    if f.min_price is not None and f.max_price is not None and f.min_price > f.max_price:
        raise InvalidArgument(f"{field_prefix}.min_price", "is greater than max_price")
    check_count(len(f.exclude_item_ids), MAX_LIST, f"{field_prefix}.exclude_item_ids", "ids")
    for i in f.exclude_item_ids:
        check_id(i, f"{field_prefix}.exclude_item_ids")
    base = snap.in_stock if f.in_stock_only else None
    cat = snap.category if (len(include) or len(exclude)) else None
    price = snap.price if (f.min_price is not None or f.max_price is not None) else None
    if cat is None and price is None and not f.exclude_item_ids:
        return base, include, (n_items if base is None else snap.n_in_stock)
    mask = np.ones(n_items, bool) if base is None else base.copy()
    if cat is not None and len(include):
        mask &= in_codes(cat, include)
    if cat is not None and len(exclude):
        mask &= ~in_codes(cat, exclude)
    if price is not None and f.min_price is not None:
        mask &= price >= f.min_price
    if price is not None and f.max_price is not None:
        mask &= price <= f.max_price
    if f.exclude_item_ids:
        rows = tables.rows_of("item", f.exclude_item_ids)
        mask[rows[rows >= 0]] = False
    return mask, include, int(np.count_nonzero(mask))
