"""The serving ranker's two engines give the same scores on a real bundle's model."""
from __future__ import annotations

import numpy as np
import pytest

from recserve.pipeline.ranking import Ranker


def test_forest_and_lightgbm_engines_agree(bundle):
    names = list(bundle.schema.names)
    fast = Ranker(bundle.ranker_text, names)
    slow = Ranker(bundle.ranker_text, names, engine="lightgbm")
    assert fast.forest is not None and slow.forest is None
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, len(names))).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan
    np.testing.assert_allclose(fast.predict(X), slow.predict(X), rtol=1e-6, atol=1e-6)


def test_unknown_engine_rejected(bundle):
    with pytest.raises(ValueError, match="engine"):
        Ranker(bundle.ranker_text, list(bundle.schema.names), engine="xgboost")
