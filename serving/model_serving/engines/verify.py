"""The compiled trees' self-check: compare them with LightGBM on rows chosen to hit every rule.

Random rows rarely land where a re-implementation goes wrong, so the rows here
sit exactly on split thresholds and one ulp either side, and carry NaN, 0.0,
-0.0, values LightGBM reads as zero (|v| <= float32(1e-35)) and infinities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from model_serving.engines.codegen.c_literals import K_ZERO_THRESHOLD
from model_serving.engines.lgbm_text import Forest

if TYPE_CHECKING:
    from model_serving.engines.compiled_trees import CompiledPredictor

RELATIVE_TOLERANCE = 1e-12
CHECK_ROWS = 300

Reference = Callable[[np.ndarray], np.ndarray]  # rows -> probabilities (n, n_outputs)


def default_reference(model_text: str) -> Reference:
    """LightGBM itself: its C API through lgbm_capi (no 2 s `import lightgbm`), else the package."""
    try:
        from model_serving.engines.lgbm_capi import CApiPredictor
    except ImportError:
        pass
    else:
        return CApiPredictor(model_text).predict_proba

    import lightgbm

    booster = lightgbm.Booster(model_str=model_text)

    def predict(rows: np.ndarray) -> np.ndarray:
        probs = np.asarray(booster.predict(rows), dtype=np.float64)
        return np.column_stack([1.0 - probs, probs]) if probs.ndim == 1 else probs

    return predict


def check_rows(forest: Forest, count: int = CHECK_ROWS, seed: int = 20240601) -> np.ndarray:
    """Rows that probe every decision rule: thresholds exactly and one ulp away, NaN, 0, -0,
    values LightGBM reads as zero (|v| <= 1e-35f), infinities, and ordinary values."""
    rng = np.random.default_rng(seed)
    nf = forest.num_features
    collected: list[list[float]] = [[] for _ in range(nf)]
    for tree in forest.trees:
        for split in tree.splits:
            collected[split.feature].append(split.threshold)
    per_feature = [np.array(values, dtype=np.float64) for values in collected]
    kzero = float(K_ZERO_THRESHOLD)
    specials = np.array(
        [
            np.nan,
            0.0,
            -0.0,
            kzero,
            -kzero,
            np.nextafter(kzero, 1),
            -np.nextafter(kzero, 1),
            5e-36,
            -5e-36,
            1e-300,
            np.inf,
            -np.inf,
        ]
    )
    rows = rng.normal(size=(count, nf))
    for f in range(nf):
        thresholds = per_feature[f][np.isfinite(per_feature[f])]
        if thresholds.size:
            lo, hi = thresholds.min(), thresholds.max()
            rows[:, f] = rng.uniform(lo - 0.1 * (hi - lo) - 1e-9, hi + 0.1 * (hi - lo) + 1e-9, size=count)
        pick = rng.random(count)
        if thresholds.size:
            exact = rng.choice(thresholds, size=count)
            rows[:, f] = np.where(pick < 0.30, exact, rows[:, f])
            rows[:, f] = np.where((pick >= 0.30) & (pick < 0.36), np.nextafter(exact, np.inf), rows[:, f])
            rows[:, f] = np.where((pick >= 0.36) & (pick < 0.42), np.nextafter(exact, -np.inf), rows[:, f])
        special = rng.choice(specials, size=count)
        rows[:, f] = np.where(pick > 0.82, special, rows[:, f])
    for i, value in enumerate((np.nan, 0.0, kzero, -kzero)):
        if i < count:
            rows[i, :] = value
    return rows


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest |ours - ref| / |ref| (0 where both are equal, inf where NaN-ness or shape differs)."""
    if ours.shape != reference.shape:
        return float("inf")
    if not np.array_equal(np.isnan(ours), np.isnan(reference)):
        return float("inf")
    a, b = np.nan_to_num(ours), np.nan_to_num(reference)
    diff = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(b))
    return float(rel.max(initial=0.0))


def self_check(predictor: CompiledPredictor, forest: Forest, reference: Reference) -> float:
    """Worst relative error of the batch and single-row entries against the reference."""
    rows = check_rows(forest)
    expected = reference(rows)
    worst = relative_error(predictor.predict_proba(rows), expected)
    session = predictor.row_session()
    singles = np.empty((min(len(rows), 40), predictor.num_outputs))
    for i in range(len(singles)):
        session.row[:] = rows[i]
        singles[i] = session.run()
    return max(worst, relative_error(singles, expected[: len(singles)]))
