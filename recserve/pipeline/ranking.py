"""Ranking: crossed features -> ranker raw scores (and, on request, per-feature contributions).

The model is evaluated behind :class:`Ranker`: by default with ``recserve._core.forest.Forest`` (the
Cython evaluator, same raw scores as LightGBM), or with ``engine="lightgbm"`` by
``lightgbm.Booster(...).predict(raw_score=True, num_threads=1)``. Contributions always come from
LightGBM's ``pred_contrib``.
"""
from __future__ import annotations

import numpy as np

from recserve._core.cross import Crosser, FeatureSchema
from recserve.pipeline.errors import InvalidArgument


class Ranker:
    ENGINES = ("forest", "lightgbm")

    def __init__(self, model_text: str, names: list[str], engine: str = "forest"):
        import lightgbm

        if engine not in self.ENGINES:
            raise ValueError(f"ranker engine must be one of {self.ENGINES}, got {engine!r}")

        self.booster = lightgbm.Booster(model_str=model_text)
        n = self.booster.num_feature()
        if n != len(names):
            raise ValueError(f"ranker has {n} features, the schema {len(names)}")
        self.names = names
        self.engine = engine
        self.forest = None
        if engine == "forest":
            from recserve._core.forest import Forest

            self.forest = Forest.from_model_string(model_text)   # a model it cannot read refuses the bundle

    def predict(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0, np.float64)
        if self.forest is not None:
            return np.asarray(self.forest.predict(np.ascontiguousarray(X, np.float32)), np.float64)
        return np.asarray(self.booster.predict(X, raw_score=True, num_threads=1), np.float64)

    def contributions(self, X: np.ndarray, top: int = 5) -> list[list[tuple[str, float]]]:
        """Per row, the ``top`` features by absolute contribution (bias excluded)."""
        if len(X) == 0:
            return []
        c = np.asarray(self.booster.predict(X, pred_contrib=True, num_threads=1))[:, :-1]
        out = []
        for row in c:
            idx = np.argsort(-np.abs(row), kind="stable")[:top]
            out.append([(self.names[i], float(row[i])) for i in idx if row[i] != 0.0])
        return out


REQUEST_CONTEXT = ("hour", "weekday", "device")    # context columns the request's own fields give


def context_vector(schema: FeatureSchema, hour: float, weekday: float, device: float,
                   extra: dict | None = None) -> np.ndarray:
    """The ``ctx.*`` values in schema order; unknown context columns are NaN (missing for the ranker), and so
    are ``extra`` values that are not numbers (:func:`check_context_extra` refuses non-finite ones first)."""
    vals = dict(zip(REQUEST_CONTEXT, (hour, weekday, device)))
    if extra:
        for k, v in extra.items():
            try:
                vals.setdefault(k, float(v))
            except ValueError:
                pass
    return np.array([vals.get(c, np.nan) for c in schema.context_columns], np.float32)


def check_context_extra(schema: FeatureSchema, extra: dict) -> None:
    """Refuse an ``extra`` value that the ranker reads (its key is one of the schema's context columns, other
    than those of ``REQUEST_CONTEXT``) and that is a number but not a finite float32 one: inf, NaN, or a
    number beyond float32's range (inf once converted). ``InvalidArgument`` names ``context.extra[key]``."""
    for key, value in extra.items():
        if key not in schema.context_columns or key in REQUEST_CONTEXT:
            continue
        try:
            v = float(value)
        except ValueError:
            continue                                # not a number: missing for the ranker
        with np.errstate(over="ignore"):
            finite = bool(np.isfinite(np.float32(v)))
        if not finite:
            raise InvalidArgument(f"context.extra[{key!r}]", f"must be a finite float32 number, got {value!r}")


def features(crosser: Crosser, user_row, user_vec, merged, context, now_days: float) -> np.ndarray:
    """The ranker's input rows of the merged candidates: the crossed user x item x context features."""
    return crosser.cross(user_row, user_vec, merged.rows, context, merged.rank, merged.score, now_days)
