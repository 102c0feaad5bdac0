"""A loaded, verified model version, ready to predict."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from model_serving.engines.predictor import Predictor, engine_name
from model_serving.loading.model_files import ModelContent
from model_store.layout import AssetClass, ModelLocation

if TYPE_CHECKING:
    from model_serving.loading.shadow import Shadow

MODEL_TYPES = {AssetClass.ETF: "etf_specific", AssetClass.STOCK: "stock_universal"}


@dataclass
class ServedModel:
    location: ModelLocation
    version: str
    digest: str
    model_path: str  # the prefix the files were published under, e.g. etfs/SPY/production/
    stage: str  # production, staging or archive
    source: str  # memory, disk or s3: where this load found the files
    content: ModelContent
    predictor: Predictor  # replaced (one reference assignment) when compiled trees are swapped in
    loaded_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.feature_names = self.content.feature_names
        self.feature_index = {name: i for i, name in enumerate(self.feature_names)}
        self.n_features = len(self.feature_names)
        self.classes = self.content.classes
        self.n_classes = len(self.classes)
        self.metadata: dict[str, Any] = self.content.metadata
        # Bound per class by the service (metrics children), so counting a prediction is one inc().
        self.prediction_counters: list[Any] = []
        self.shadow: Shadow | None = None  # a challenger scored on the same rows (set by the service)

    @property
    def key(self) -> str:
        return self.location.model_key

    @property
    def model_type(self) -> str:
        return MODEL_TYPES[self.location.asset_class]

    @property
    def engine(self) -> str:
        return engine_name(self.predictor)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.predictor.predict_proba(rows)

    def score(self, rows: np.ndarray) -> np.ndarray:
        """The prediction every API path serves: the champion's probabilities, and the shadow
        challenger (if any) scored on the same rows in the same call, compared and counted."""
        probabilities = self.predictor.predict_proba(rows)
        shadow = self.shadow
        if shadow is not None:
            shadow.score(rows, probabilities)
        return probabilities
