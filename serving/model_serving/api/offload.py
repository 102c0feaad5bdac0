"""Large request bodies are parsed, checked and answered in a helper process, not only off the event loop.

A worker thread is not enough: orjson parses a body in one C call that holds the GIL (61 ms for a
1 MiB batch on a busy 2-core machine, 240 ms for 8.6 MB), and the row checks are Python loops, so
single-row requests on the event loop waited behind them. One helper process (spawned, so nothing
of the server's threads or event loop is copied; started by the first large body, so a pod that
only ever sees single rows never pays for it) takes bodies over `INLINE_BODY_BYTES`:

    rows(kind, body, ...)        JSON (and binary tensors after it) -> checked float64 rows (numpy
                                 arrays cross the pipe as bytes); the commas are counted first, so
                                 no more values are parsed than SERVING_MAX_BATCH_ROWS rows hold
    respond(kind, view, ...)     probabilities -> the response body (bytes)

The helper sees a `ModelView`, a snapshot of the fields the payload functions read (feature names,
classes, version, digest...), never the model or its engine; predicting stays in this process (the
C calls release the GIL). A helper that dies (e.g. killed for memory) is replaced, and its request
answered 503.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson

from model_serving.api import payloads
from model_serving.api.tensors import OutputRequest, count_guard
from model_serving.errors import BadRequest, Unavailable
from model_serving.loading.served_model import ServedModel

INLINE_BODY_BYTES = 64 << 10
# The seeds' call names its ticker inside the body: before its model is known, the value count is
# bounded with this many features per row.
_UNKNOWN_WIDTH = 256


@dataclass(frozen=True)
class ModelView:
    """What the payload functions read of a ServedModel (picklable; no engine)."""

    feature_names: list[str]
    feature_index: dict[str, int]
    n_features: int
    classes: list[str]
    n_classes: int
    metadata: dict[str, Any]
    version: str
    digest: str
    model_path: str
    stage: str
    source: str
    engine: str
    key: str
    model_type: str

    @classmethod
    def of(cls, model: ServedModel) -> ModelView:
        return cls(
            feature_names=list(model.feature_names),
            feature_index=dict(model.feature_index),
            n_features=model.n_features,
            classes=list(model.classes),
            n_classes=model.n_classes,
            metadata=dict(model.metadata),
            version=model.version,
            digest=model.digest,
            model_path=model.model_path,
            stage=model.stage,
            source=model.source,
            engine=model.engine,
            key=model.key,
            model_type=model.model_type,
        )


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequest("the body is empty: send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON (NaN and Infinity are not JSON either): {exc}") from None


# -- what runs in the helper process ---------------------------------------------------------------


def _predict_rows(
    body: bytes, default_ticker: str | None, views: dict[str, ModelView], null_ok: bool, max_rows: int
) -> tuple[str, bool, np.ndarray | None, Any]:
    """The seeds' call: (ticker, batch, rows or None when the ticker's model is not in `views`, request id)."""
    count_guard(body, max((v.n_features for v in views.values()), default=_UNKNOWN_WIDTH), max_rows)
    doc = parse_json(body)
    ticker, payload, batch = payloads.predict_envelope(doc, default_ticker)
    view = views.get(ticker)
    if view is None:
        return ticker, batch, None, None
    model = cast(Any, view)
    if batch:
        rows = payloads.instance_rows(model, payload, null_ok, max_rows)
    else:
        rows = np.array([payloads.named_row(model, payload, '"features"', null_ok)], dtype=np.float64)
    return ticker, batch, rows, None


def _infer_rows(
    body: bytes, view: ModelView, null_ok: bool, max_rows: int, json_length: int | None
) -> tuple[np.ndarray, list[OutputRequest], Any]:
    text = body if json_length is None else body[:json_length]
    count_guard(text, view.n_features, max_rows)
    doc = parse_json(text)
    binary = None if json_length is None else memoryview(body)[json_length:]
    rows, outputs = payloads.infer_rows(cast(Any, view), doc, null_ok, max_rows, binary)
    request_id = doc.get("id") if type(doc) is dict else None
    return rows, outputs, request_id if type(request_id) is str else None


def _v1_rows(body: bytes, view: ModelView, null_ok: bool, max_rows: int) -> np.ndarray:
    count_guard(body, view.n_features, max_rows)
    instances = payloads.v1_instances(parse_json(body))
    return payloads.instance_rows(cast(Any, view), instances, null_ok, max_rows)


def _respond(kind: str, view: ModelView, probabilities: np.ndarray, extra: tuple[Any, ...]) -> tuple[bytes, int | None]:
    """(body, length of its JSON part when binary outputs follow it, else None)."""
    model = cast(Any, view)
    if kind == "predict":
        ticker, batch = extra
        return orjson.dumps(payloads.predict_response(model, ticker, probabilities, batch)), None
    if kind == "infer":
        name, outputs, request_id = extra
        return payloads.infer_reply(model, name, probabilities, outputs, request_id)
    return orjson.dumps({"predictions": probabilities.tolist()}), None


def _warm() -> bool:
    return True


# -- the server's side -----------------------------------------------------------------------------


class Offloader:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._views: dict[int, tuple[ServedModel, ModelView]] = {}

    def start(self) -> None:
        """Spawn the helper now (it imports numpy and the payload code: about a second of CPU)."""
        self._executor().submit(_warm)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def view(self, model: ServedModel) -> ModelView:
        cached = self._views.get(id(model))
        if cached is None or cached[0] is not model or cached[1].engine != model.engine:
            if len(self._views) > 64:
                self._views.clear()
            cached = (model, ModelView.of(model))
            self._views[id(model)] = cached
        return cached[1]

    async def run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), fn, *args)
        except BrokenProcessPool:
            self._pool = None  # the next large request starts a new helper
            raise Unavailable("the helper process for large requests stopped; retry") from None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    # entry points, each one round trip to the helper

    async def predict_rows(
        self, body: bytes, default_ticker: str | None, models: dict[str, ServedModel], null_ok: bool, max_rows: int
    ) -> tuple[str, bool, np.ndarray | None]:
        views = {ticker: self.view(model) for ticker, model in models.items()}
        ticker, batch, rows, _ = await self.run(_predict_rows, body, default_ticker, views, null_ok, max_rows)
        return ticker, batch, rows

    async def infer_rows(
        self, body: bytes, model: ServedModel, null_ok: bool, max_rows: int, json_length: int | None = None
    ) -> tuple[np.ndarray, list[OutputRequest], str | None]:
        result: tuple[np.ndarray, list[OutputRequest], str | None] = await self.run(
            _infer_rows, body, self.view(model), null_ok, max_rows, json_length
        )
        return result

    async def v1_rows(self, body: bytes, model: ServedModel, null_ok: bool, max_rows: int) -> np.ndarray:
        rows: np.ndarray = await self.run(_v1_rows, body, self.view(model), null_ok, max_rows)
        return rows

    async def respond(
        self, kind: str, model: ServedModel, probabilities: np.ndarray, *extra: Any
    ) -> tuple[bytes, int | None]:
        reply: tuple[bytes, int | None] = await self.run(_respond, kind, self.view(model), probabilities, extra)
        return reply
