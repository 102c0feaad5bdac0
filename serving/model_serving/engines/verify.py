"""The one check that decides whether another engine may replace LightGBM's C API.

`verify(reference, candidate, model_text, n_features)` predicts the rows of
`probe_rows` with both engines, in one batch and then the first SINGLE_ROWS
rows one at a time (the server's single-row call), and returns a Verdict:
the candidate may serve only when no probability differs from the
reference's by more than TOLERANCE, relative. Compiled trees sum the leaves
in LightGBM's order and copy its sigmoid and softmax, so on a correct build
the difference is exactly 0; the tolerance only leaves room for rounding in
the last bits, far below what any wrong branch would cost.

Random rows rarely land where a re-implementation of the trees goes wrong, so
the rows sit exactly on split thresholds and one ulp either side, and carry
NaN, 0.0, -0.0, values LightGBM reads as zero (|v| <= float32(1e-35)) and
infinities. The thresholds are read from the model text itself, so any
candidate engine can be checked, whatever it parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from model_serving.engines.codegen.c_literals import K_ZERO_THRESHOLD
from model_serving.engines.predictor import Predictor

TOLERANCE = 1e-12  # the largest relative difference accepted, on any probability of any row
ROWS = 300
SINGLE_ROWS = 40
SEED = 20240601

_SPLIT_FEATURE = re.compile(r"^split_feature=(.*)$", re.MULTILINE)
_THRESHOLD = re.compile(r"^threshold=(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    max_relative_error: float  # 0.0 when every output is identical; inf when shapes or NaNs differ
    rows: int

    @property
    def agrees(self) -> bool:
        return self.max_relative_error <= TOLERANCE


def verify(reference: Predictor, candidate: Predictor, model_text: str, n_features: int) -> Verdict:
    """Compare `candidate` with `reference` (LightGBM) on probe_rows, batched and row by row."""
    rows = probe_rows(model_text, n_features)
    expected = np.asarray(reference.predict_proba(rows))
    worst = relative_error(np.asarray(candidate.predict_proba(rows)), expected)
    for i in range(min(len(rows), SINGLE_ROWS)):
        single = np.asarray(candidate.predict_proba(rows[i : i + 1]))
        worst = max(worst, relative_error(single, expected[i : i + 1]))
    return Verdict(worst, len(rows))


def split_thresholds(model_text: str, n_features: int) -> list[list[float]]:
    """Every split threshold of each feature, read from the text model's trees."""
    found: list[set[float]] = [set() for _ in range(n_features)]
    for features, thresholds in zip(_SPLIT_FEATURE.findall(model_text), _THRESHOLD.findall(model_text), strict=False):
        for f, t in zip(features.split(), thresholds.split(), strict=False):
            index = int(f)
            if 0 <= index < n_features:
                found[index].add(float(t))
    return [sorted(values) for values in found]


def probe_rows(model_text: str, n_features: int, count: int = ROWS, seed: int = SEED) -> np.ndarray:
    """Rows that probe every decision rule: thresholds exactly and one ulp away, NaN, 0, -0,
    values LightGBM reads as zero (|v| <= 1e-35f), infinities, and ordinary values."""
    rng = np.random.default_rng(seed)
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
    rows = rng.normal(size=(count, n_features))
    for f, values in enumerate(split_thresholds(model_text, n_features)):
        thresholds = np.array(values, dtype=np.float64)
        thresholds = thresholds[np.isfinite(thresholds)]
        pick = rng.random(count)
        if thresholds.size:
            lo, hi = thresholds.min(), thresholds.max()
            rows[:, f] = rng.uniform(lo - 0.1 * (hi - lo) - 1e-9, hi + 0.1 * (hi - lo) + 1e-9, size=count)
            exact = rng.choice(thresholds, size=count)
            rows[:, f] = np.where(pick < 0.30, exact, rows[:, f])
            rows[:, f] = np.where((pick >= 0.30) & (pick < 0.36), np.nextafter(exact, np.inf), rows[:, f])
            rows[:, f] = np.where((pick >= 0.36) & (pick < 0.42), np.nextafter(exact, -np.inf), rows[:, f])
        rows[:, f] = np.where(pick > 0.82, rng.choice(specials, size=count), rows[:, f])
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
