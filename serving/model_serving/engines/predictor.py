"""The prediction engine interface, and the check an alternative engine must pass.

Any object with `predict_proba(rows) -> probabilities` can serve: the default
is LightGBM's C API (lgbm_capi.CApiPredictor); compiled trees
(compiled_trees.try_compile) are swapped in only after `same_outputs` finds
them equal to it on rows that hit every split threshold exactly.
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

import numpy as np

_SPLIT_FEATURE = re.compile(r"^split_feature=(.*)$", re.MULTILINE)
_THRESHOLD = re.compile(r"^threshold=(.*)$", re.MULTILINE)


@runtime_checkable
class Predictor(Protocol):
    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """rows: float64, shape (n, n_features), NaN = missing. Returns float64 (n, n_classes)."""
        ...


def engine_name(predictor: object) -> str:
    return str(getattr(predictor, "engine", type(predictor).__name__))


def split_thresholds(model_text: str, n_features: int) -> list[list[float]]:
    """Every split threshold of each feature, read from the text model's trees."""
    found: list[set[float]] = [set() for _ in range(n_features)]
    for features, thresholds in zip(_SPLIT_FEATURE.findall(model_text), _THRESHOLD.findall(model_text), strict=False):
        for f, t in zip(features.split(), thresholds.split(), strict=False):
            index = int(f)
            if 0 <= index < n_features:
                found[index].add(float(t))
    return [sorted(values) for values in found]


def probe_rows(model_text: str, n_features: int, count: int = 256, seed: int = 0) -> np.ndarray:
    """Rows that sit on, just beside, and between the split thresholds, plus zeros and NaNs.

    Equality at a threshold (<= vs <), missing values and zero handling are
    where a re-implementation of the trees goes wrong; random rows alone
    rarely land there.
    """
    rng = np.random.default_rng(seed)
    thresholds = split_thresholds(model_text, n_features)
    rows = rng.normal(size=(count, n_features))
    for j, values in enumerate(thresholds):
        if not values:
            continue
        picks = np.asarray(values)[rng.integers(0, len(values), size=count)]
        nudge = rng.choice([0.0, -1.0, 1.0], size=count)
        rows[:, j] = np.where(nudge == 0, picks, np.nextafter(picks, np.where(nudge < 0, -np.inf, np.inf)))
    rows[rng.random(size=rows.shape) < 0.05] = np.nan
    rows[rng.random(size=rows.shape) < 0.05] = 0.0
    return rows


def same_outputs(reference: Predictor, candidate: Predictor, rows: np.ndarray, atol: float = 1e-9) -> bool:
    """True when both engines give the same probabilities, row by row and in batch."""
    expected = reference.predict_proba(rows)
    batch = np.asarray(candidate.predict_proba(rows))
    if batch.shape != expected.shape or not np.allclose(batch, expected, rtol=0.0, atol=atol, equal_nan=False):
        return False
    for i in range(min(len(rows), 32)):
        single = np.asarray(candidate.predict_proba(rows[i : i + 1]))
        if single.shape != (1, expected.shape[1]) or not np.allclose(single[0], expected[i], rtol=0.0, atol=atol):
            return False
    return True
