"""The prediction engine interface.

Any object with `predict_proba(rows) -> probabilities` can serve: the default
is LightGBM's C API (lgbm_capi.CApiPredictor); compiled trees
(compiled_trees.CompiledPredictor) replace it only after `verify.verify`
finds them equal to it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Predictor(Protocol):
    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """rows: float64, shape (n, n_features), NaN = missing. Returns float64 (n, n_classes)."""
        ...


def engine_name(predictor: object) -> str:
    return str(getattr(predictor, "engine", type(predictor).__name__))
