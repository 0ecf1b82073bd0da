"""Feature crossing: the one function that builds ranker rows, for the trainer and the server alike.

A :class:`FeatureSchema` names the columns and says which item / user columns play which role in the
crossed features; the bundle manifest records it, and the server refuses a bundle whose ranker was trained
on another schema. Layout of a row (see ``_cross.pyx``)::

    user.* | item.* | ctx.* | src.<s>.rrank, src.<s>.score for each source | x.dot, x.price_ratio,
    x.cat_affinity, x.item_age_days

``item.*`` holds the item table's columns but its ``unranked_item_columns`` (read by the crossing only:
the creation time, which enters the row as the item's age). ``x.item_age_days`` is ``now_days`` minus
the creation day, never below 0 (an item created after ``now`` is as old as one created at ``now``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from recserve._core import _cross
from recserve._core._validate import f32_1d, f32_2d, integers, rows_1d, to_int32

CROSSED = ["x.dot", "x.price_ratio", "x.cat_affinity", "x.item_age_days"]


@dataclass(frozen=True)
class FeatureSchema:
    user_columns: list[str]
    item_columns: list[str]
    context_columns: list[str]
    sources: list[str]
    price_column: str | None = None         # item column
    spend_column: str | None = None         # user column: average spend
    category_column: str | None = None      # item column holding the category code 0..n-1
    category_share_prefix: str | None = None  # user columns "<prefix>0".."<prefix>{n-1}"
    n_categories: int = 0                   # n: categories with a share column (codes >= n: affinity NaN)
    created_column: str | None = None       # item column: creation time in days since the epoch
    # item columns that are no ranker feature (a bundle's manifest without this key: none)
    unranked_item_columns: list[str] = field(default_factory=list)
    names: list[str] = field(init=False, default_factory=list)

    def __post_init__(self):
        unknown = [c for c in self.unranked_item_columns if c not in self.item_columns]
        if unknown:
            raise ValueError(f"unranked item column {unknown[0]!r} is not in the schema")
        names = ([f"user.{c}" for c in self.user_columns]
                 + [f"item.{self.item_columns[j]}" for j in self.ranked_item_index()]
                 + [f"ctx.{c}" for c in self.context_columns])
        for s in self.sources:
            names += [f"src.{s}.rrank", f"src.{s}.score"]
        object.__setattr__(self, "names", names + CROSSED)
        self.spec()  # validates the role columns

    @property
    def n_features(self) -> int:
        return len(self.names)

    def ranked_item_index(self) -> np.ndarray:
        """The item table's columns that are ranker features (``item.*``, in this order)."""
        skip = set(self.unranked_item_columns)
        return np.array([j for j, c in enumerate(self.item_columns) if c not in skip], np.int64)

    def spec(self) -> np.ndarray:
        def col(cols, name, what):
            if name is None:
                return -1
            if name not in cols:
                raise ValueError(f"{what} column {name!r} is not in the schema")
            return cols.index(name)

        offset = -1
        if self.category_share_prefix is not None and self.n_categories > 0:
            first = f"{self.category_share_prefix}0"
            offset = col(self.user_columns, first, "category share")
            expected = [f"{self.category_share_prefix}{i}" for i in range(self.n_categories)]
            if self.user_columns[offset:offset + self.n_categories] != expected:
                raise ValueError("category share columns must be consecutive and numbered from 0")
        return np.array([
            col(self.item_columns, self.price_column, "price"),
            col(self.user_columns, self.spend_column, "spend"),
            col(self.item_columns, self.category_column, "category"),
            offset,
            self.n_categories,
            col(self.item_columns, self.created_column, "created"),
        ], np.int64)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("names")
        d["feature_names"] = list(self.names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSchema":
        d = dict(d)
        names = d.pop("feature_names", None)
        schema = cls(**d)
        if names is not None and names != schema.names:
            raise ValueError("the recorded feature names do not match the schema")
        return schema


class Crosser:
    """Builds ranker rows for one schema over one item table and embedding matrix (both read-only)."""

    def __init__(self, schema: FeatureSchema, item_table: np.ndarray, item_emb: np.ndarray):
        self.schema = schema
        self.items = f32_2d(item_table, "item_table")
        self.emb = f32_2d(item_emb, "item_emb")
        if self.items.shape[1] != len(schema.item_columns):
            raise ValueError(f"item table has {self.items.shape[1]} columns, schema {len(schema.item_columns)}")
        if self.items.shape[0] != self.emb.shape[0]:
            raise ValueError("item table and embeddings differ in rows")
        self._spec = schema.spec()
        self._runs = column_runs(schema.ranked_item_index())

    def cross(self, user_row, user_vec, rows, context, rank, score, now_days: float) -> np.ndarray:
        """float32 [len(rows), n_features]. ``rank``/``score`` come from :func:`merge_candidates`."""
        s = self.schema
        user = f32_1d(user_row, "user_row")
        ctx = f32_1d(context, "context")
        if len(user) != len(s.user_columns):
            raise ValueError(f"user row has {len(user)} values, schema {len(s.user_columns)}")
        if len(ctx) != len(s.context_columns):
            raise ValueError(f"context has {len(ctx)} values, schema {len(s.context_columns)}")
        r = rows_1d(rows, "rows")
        shape = (len(r), len(s.sources))
        rk, sc = np.asarray(rank), np.asarray(score)
        if rk.shape != shape or sc.shape != shape:
            raise ValueError(f"rank and score must have shape {shape} (candidates, sources), got {rk.shape} "
                             f"and {sc.shape}")
        rk = rk if rk.dtype == np.int32 else to_int32(integers(rk, "rank"), "rank")
        rk, sc = np.ascontiguousarray(rk), np.ascontiguousarray(sc, np.float32)
        return _cross.cross(user, f32_1d(user_vec, "user_vec"), self.items, self.emb, r, ctx, rk, sc,
                            self._spec, self._runs, float(now_days))


def column_runs(cols) -> np.ndarray:
    """int64 [R, 2]: (first column, length) of each run of consecutive columns in ``cols``, in order: the
    kernel copies each run as a block (no index load per value)."""
    out: list[list[int]] = []
    for c in np.asarray(cols, np.int64).tolist():
        if out and c == out[-1][0] + out[-1][1]:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return np.array(out, np.int64).reshape(len(out), 2)


def cross_reference(schema: FeatureSchema, item_table, item_emb, user_row, user_vec, rows, context,
                    rank, score, now_days) -> np.ndarray:
    """Plain numpy reference of :meth:`Crosser.cross`. It finds each role's column by its name in the
    schema (not through :meth:`FeatureSchema.spec` or :func:`column_runs`, what the kernel is given), and a
    role without its column (or without a known value) gives NaN."""
    items = np.asarray(item_table, np.float32)
    rows = np.asarray(rows, np.int64)
    n = len(rows)
    user = np.asarray(user_row, np.float32)
    it = items[rows]
    ucol, icol = schema.user_columns.index, schema.item_columns.index
    rank = np.asarray(rank).reshape(n, len(schema.sources))
    score = np.asarray(score, np.float32).reshape(n, len(schema.sources))
    ranked = [j for j, c in enumerate(schema.item_columns) if c not in schema.unranked_item_columns]
    parts = [np.broadcast_to(user, (n, len(user))), it[:, ranked],
             np.broadcast_to(np.asarray(context, np.float32), (n, len(schema.context_columns)))]
    for si in range(len(schema.sources)):
        present = rank[:, si] >= 0
        parts.append(np.where(present, 1.0 / (1.0 + np.maximum(rank[:, si], 0)), 0.0)[:, None])
        parts.append(np.where(present, score[:, si], 0.0)[:, None])
    dot = np.asarray(item_emb[rows], np.float64) @ np.asarray(user_vec, np.float64)
    price, aff, age = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    if schema.price_column is not None and schema.spend_column is not None:
        spend = float(user[ucol(schema.spend_column)])
        if spend > 0:                                   # NaN, 0 or a negative spend: no ratio
            price = it[:, icol(schema.price_column)].astype(np.float64) / spend
    if schema.category_column is not None and schema.category_share_prefix is not None:
        shares = user[[ucol(f"{schema.category_share_prefix}{k}") for k in range(schema.n_categories)]]
        code = it[:, icol(schema.category_column)].astype(np.float64)
        ok = (code >= 0) & (code < schema.n_categories)  # NaN or a code without a share column: NaN
        aff[ok] = shares[code[ok].astype(np.int64)]
    if schema.created_column is not None and np.isfinite(now_days):
        age = np.maximum(now_days - it[:, icol(schema.created_column)].astype(np.float64), 0.0)  # NaN stays
    parts += [dot[:, None], price[:, None], aff[:, None], age[:, None]]
    return np.hstack(parts).astype(np.float32)
