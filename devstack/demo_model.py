"""Train a small but real strategy model, so demos and tests use real artifacts.

LightGBM multiclass over 84 named market features and ten options strategies,
trained on synthetic markets where the best strategy follows from volatility,
trend and skew the way a desk would pick it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import joblib
import numpy as np

from model_store.layout import FEATURE_NAMES, LABEL_ENCODER, METADATA, MODEL_NATIVE, MODEL_PICKLE

STRATEGIES = [
    "bear_put_spread",
    "bull_call_spread",
    "butterfly",
    "calendar_spread",
    "cash_secured_put",
    "covered_call",
    "iron_condor",
    "long_straddle",
    "protective_put",
    "short_strangle",
]

_BASE_FEATURES = [
    "iv_rank",
    "iv_percentile",
    "iv_30d",
    "hv_20d",
    "hv_60d",
    "iv_hv_spread",
    "put_call_skew",
    "term_structure_slope",
    "rsi_14",
    "macd",
    "macd_signal",
    "adx_14",
    "trend_strength",
    "return_5d",
    "return_20d",
    "return_60d",
    "atr_14",
    "bollinger_width",
    "volume_ratio",
    "put_call_volume_ratio",
    "open_interest_change",
    "vix",
    "vix_term_ratio",
    "days_to_earnings",
]


def feature_names(count: int = 84) -> list[str]:
    names = list(_BASE_FEATURES)
    i = 0
    while len(names) < count:
        names.append(f"factor_{i:02d}")
        i += 1
    return names[:count]


def synthetic_market(rows: int, seed: int, n_features: int = 84) -> tuple[np.ndarray, np.ndarray]:
    """Features and the index of the strategy a desk would choose for each row."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features))
    vol, trend, skew, iv_hv = x[:, 0], x[:, 12], x[:, 6], x[:, 5]
    noise = rng.normal(scale=0.35, size=rows)
    score = np.stack(
        [
            -trend + 0.5 * vol,  # bear_put_spread
            trend + 0.5 * vol,  # bull_call_spread
            -np.abs(trend) - vol,  # butterfly
            x[:, 7] - np.abs(vol),  # calendar_spread
            0.7 * trend + iv_hv,  # cash_secured_put
            0.5 * trend - 0.5 * vol + x[:, 13],  # covered_call
            vol - 1.5 * np.abs(trend) + iv_hv,  # iron_condor
            -vol + np.abs(x[:, 14]) + x[:, 23],  # long_straddle
            -trend + skew,  # protective_put
            vol + iv_hv - np.abs(skew),  # short_strangle
        ],
        axis=1,
    )
    score[:, 0] += noise
    return x, score.argmax(axis=1)


@dataclass
class DemoModel:
    files: dict[str, bytes]
    accuracy: float
    training_samples: int


def train_demo_model(
    version: str = "v1.0",
    seed: int = 7,
    rounds: int = 100,
    rows: int = 4000,
    formats: tuple[str, ...] = ("native",),
) -> DemoModel:
    """Train and serialise a model version; `formats` picks native text and/or joblib pickle."""
    import lightgbm as lgb
    from sklearn.preprocessing import LabelEncoder

    names = feature_names()
    x, y_idx = synthetic_market(rows, seed)
    labels = np.array(STRATEGIES)[y_idx]
    encoder = LabelEncoder().fit(STRATEGIES)
    y = encoder.transform(labels)
    split = int(rows * 0.8)
    clf = lgb.LGBMClassifier(
        n_estimators=rounds,
        num_leaves=15,
        learning_rate=0.1,
        min_child_samples=10,
        n_jobs=1,
        random_state=seed,
        verbose=-1,
    )
    clf.fit(x[:split], y[:split], feature_name=names)
    accuracy = float((clf.booster_.predict(x[split:]).argmax(axis=1) == y[split:]).mean())

    files: dict[str, bytes] = {}
    if "native" in formats:
        files[MODEL_NATIVE] = clf.booster_.model_to_string().encode()
    if "pickle" in formats:  # the seeds' files: `tmctl publish` converts both (serving pods never unpickle)
        files[MODEL_PICKLE] = _joblib_bytes(clf)
        files[LABEL_ENCODER] = _joblib_bytes(encoder)
    files[FEATURE_NAMES] = json.dumps(names, indent=2).encode()
    metadata = {
        "version": version,
        "model_type": "LightGBM",
        "objective": "multiclass",
        "accuracy": round(accuracy, 4),
        "training_samples": split,
        "features": len(names),
        "strategies": len(STRATEGIES),
        "classes": list(encoder.classes_),
        "num_boost_round": rounds,
        "trained_date": datetime.now(UTC).date().isoformat(),
        "seed": seed,
    }
    files[METADATA] = json.dumps(metadata, indent=2).encode()
    return DemoModel(files=files, accuracy=accuracy, training_samples=split)


def _joblib_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    return buf.getvalue()
