"""The one prediction path of every protocol (HTTP JSON, the binary tensor extension, gRPC): a model
by its V2 name, then feature rows -> probabilities, counted in `tradingmodel_predictions_total`.

Whatever a protocol decodes ends here, so anything added around a prediction (a challenger model
scored beside the champion, say) is added once, for all of them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model_serving.api.service import ModelService
from model_serving.api.tensors import best_classes
from model_serving.errors import NotFound
from model_serving.loading.served_model import ServedModel

# Batches larger than this are predicted in a worker thread (the C call releases the GIL),
# so one big request does not stall the single-row traffic behind it.
INLINE_ROWS = 64


class Scorer:
    def __init__(self, service: ModelService) -> None:
        self.service = service
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="predict")

    async def model(self, name: str, version: str = "") -> ServedModel:
        """The model a V2 name (ticker or MODEL_NAME) and optional version designate; NotFound otherwise."""
        ticker = self.service.ticker_for_name(name)
        model = self.service.cached(ticker) or await self.service.model_for(ticker)
        if version and version != model.version:
            raise NotFound(f"version {version} of {name} is not loaded here; this server serves {model.version}")
        return model

    async def predict(self, model: ServedModel, rows: np.ndarray) -> np.ndarray:
        """Probabilities (n, classes) of `rows` (n, features), float64."""
        if rows.shape[0] <= INLINE_ROWS:
            probabilities = model.score(rows)
        else:
            loop = asyncio.get_running_loop()
            probabilities = await loop.run_in_executor(self.pool, model.score, rows)
        counters = model.prediction_counters
        if rows.shape[0] == 1:
            counters[int(probabilities[0].argmax())].inc()
        else:
            for index, count in enumerate(np.bincount(best_classes(probabilities), minlength=model.n_classes)):
                if count:
                    counters[index].inc(int(count))
        return probabilities

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
