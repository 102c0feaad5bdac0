"""Which model serves which ticker, loading on demand, readiness, reloads.

A pod started with MODEL_TICKER serves that ticker's model (pinned by
MODEL_VERSION/MODEL_DIGEST when set) and, when it is the universal stock
model, every stock ticker the asset registry lists. Without MODEL_TICKER it
serves any registered ticker, loading each model on its first request. All
stock tickers share one loaded universal model.

Loads run in a thread pool; the loader makes concurrent loads of one model
a single download. A failed load is remembered for a few seconds so a burst
of requests for a broken model does not hammer S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from model_serving.config import Settings
from model_serving.errors import BadRequest, LoadError, NotFound, Unavailable
from model_serving.loading import engine_swap
from model_serving.loading.loader import ModelLoader
from model_serving.loading.s3_source import ModelSpec, S3Source
from model_serving.loading.served_model import ServedModel
from model_serving.loading.shadow import Shadow
from model_serving.metrics import Metrics
from model_serving.process_age import process_age_seconds
from model_store.layout import AssetClass, InvalidName, ModelLocation, Stage, check_ticker

log = logging.getLogger(__name__)

FAILURE_HOLD_SECONDS = 5.0  # answer 503 from memory this long after a failed load
REGISTRY_MIN_REFRESH_SECONDS = 5.0  # an unknown ticker re-reads the registry at most this often


def registry_asset_class(registry: dict[str, Any], ticker: str) -> AssetClass | None:
    """The asset class the registry gives `ticker`, None when it does not list it."""
    etfs = registry.get("etfs")
    if isinstance(etfs, dict) and ticker in etfs:
        return AssetClass.ETF
    stocks = registry.get("stocks")
    supported = stocks.get("supported_tickers") if isinstance(stocks, dict) else None
    if isinstance(supported, dict | list) and ticker in supported:
        return AssetClass.STOCK
    return None


class ModelService:
    def __init__(
        self,
        settings: Settings,
        loader: ModelLoader,
        s3: S3Source,
        metrics: Metrics,
        early: Future[ServedModel] | None = None,
    ) -> None:
        self.settings = settings
        self._early = early  # the pod's model, already loading (see __main__.build_app)
        self.loader = loader
        self.s3 = s3
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="model-load")
        self._models: dict[str, ServedModel] = {}
        self._routes: dict[str, str] = {}  # ticker -> model key
        self._failures: dict[str, tuple[float, str]] = {}
        self._registry: dict[str, Any] | None = None
        self._registry_at = 0.0
        self._primary: ModelSpec | None = None
        self._compile_lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: dict[str, asyncio.Future[ServedModel]] = {}
        self._registry_lock = asyncio.Lock()
        self.challenger: ServedModel | None = None  # the shadow challenger of the pod's model, once loaded
        self.ready = False
        self.not_ready_reason = "starting"

    # -- the hot path ------------------------------------------------------------------------

    def cached(self, ticker: str) -> ServedModel | None:
        key = self._routes.get(ticker)
        return self._models.get(key) if key is not None else None

    async def model_for(self, ticker: str) -> ServedModel:
        model = self.cached(ticker)
        if model is not None:
            return model
        spec = await self.route(ticker)
        key = spec.location.model_key
        model = self._models.get(key)
        if model is None:
            model = await self._load(spec)
        self._routes[ticker] = key
        return model

    def ticker_for_name(self, name: str) -> str:
        """A V2 model name: the ticker (any case) or MODEL_NAME, the pod's TradingModel name."""
        if self.settings.model_name and name == self.settings.model_name and self.settings.ticker:
            return self.settings.ticker
        ticker = name.upper()
        try:
            return check_ticker(ticker)
        except InvalidName:
            raise NotFound(f"no model named {name!r}: use a ticker (e.g. SPY) or this pod's MODEL_NAME") from None

    # -- routing -------------------------------------------------------------------------------

    async def route(self, ticker: str) -> ModelSpec:
        try:
            check_ticker(ticker)
        except InvalidName as exc:
            raise BadRequest(str(exc)) from None
        own = self.settings.ticker
        if own is not None:
            primary = await self.primary_spec()
            if ticker == own:
                return primary
            declared = self.settings.tickers
            if primary.location.asset_class is AssetClass.STOCK and declared:
                if ticker in declared:
                    return primary
                raise NotFound(
                    f"{ticker} is not one of the stock tickers this model serves ({', '.join(declared)}); "
                    "add it to spec.tickers of the stock TradingModel"
                )
            if primary.location.asset_class is AssetClass.STOCK:
                registry = await self.registry(looking_for=ticker)
                if registry_asset_class(registry, ticker) is AssetClass.STOCK:
                    return primary
                raise NotFound(
                    f"{ticker} is not a registered stock ticker (stocks.supported_tickers in "
                    "metadata/asset_registry.json); this pod serves the universal stock model"
                )
            raise NotFound(
                f"this pod serves {own} only (model {primary.location.model_key}); send ticker {own}, "
                f"or ask the service for {ticker}"
            )
        registry = await self.registry(looking_for=ticker)
        asset_class = registry_asset_class(registry, ticker)
        if asset_class is None:
            raise NotFound(
                f"ticker {ticker} is not in the asset registry (metadata/asset_registry.json): "
                "register it as an ETF or a supported stock first"
            )
        return ModelSpec(ModelLocation(asset_class, ticker), self.settings.stage)

    async def primary_spec(self) -> ModelSpec:
        if self._primary is None:
            s = self.settings
            assert s.ticker is not None
            asset_class = s.asset_class
            if asset_class is None:
                asset_class = registry_asset_class(await self.registry(looking_for=s.ticker), s.ticker)
                asset_class = asset_class or AssetClass.ETF
            self._primary = ModelSpec(ModelLocation(asset_class, s.ticker), s.stage, s.version, s.digest)
        return self._primary

    async def registry(self, looking_for: str | None = None) -> dict[str, Any]:
        """The asset registry, re-read after SERVING_REGISTRY_TTL_SECONDS (or sooner for an unknown ticker)."""
        if self._registry_stale(looking_for):
            async with self._registry_lock:  # one read for a burst of requests
                if self._registry_stale(looking_for):
                    await self._read_registry()
        assert self._registry is not None
        return self._registry

    def _registry_stale(self, looking_for: str | None) -> bool:
        age = time.monotonic() - self._registry_at
        if self._registry is None or age > self.settings.registry_ttl_seconds:
            return True
        if looking_for is not None:
            return registry_asset_class(self._registry, looking_for) is None and age > REGISTRY_MIN_REFRESH_SECONDS
        return False

    async def _read_registry(self) -> None:
        try:
            self._registry = await asyncio.get_running_loop().run_in_executor(self.pool, self.s3.registry)
        except LoadError as exc:
            if self._registry is None:
                raise Unavailable(f"cannot read the asset registry: {exc.message}") from None
            log.warning("asset registry refresh failed, using the last copy", extra={"error": exc.message})
        self._registry_at = time.monotonic()

    # -- loading ---------------------------------------------------------------------------------

    async def _load(self, spec: ModelSpec) -> ServedModel:
        """Load `spec`; callers that arrive while it loads wait for the same load."""
        key = spec.location.model_key
        failed = self._failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_HOLD_SECONDS:
            raise Unavailable(failed[1])
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.ensure_future(self._load_once(spec))
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        # shield: a client that disconnects does not cancel the load for everyone else.
        return await asyncio.shield(pending)

    async def _load_once(self, spec: ModelSpec) -> ServedModel:
        key = spec.location.model_key
        try:
            model = await asyncio.get_running_loop().run_in_executor(self.pool, self.loader.load, spec)
        except LoadError as exc:
            message = f"model {key} cannot be served: {exc.message}"
            self._failures[key] = (time.monotonic(), message)
            log.error("model load failed", extra={"model": key, "reason": exc.reason, "error": exc.message})
            raise Unavailable(message) from None
        except Exception as exc:  # a bug must not leave the pod "starting" forever or answer 500
            message = f"model {key} cannot be served: unexpected {exc!r}"
            self._failures[key] = (time.monotonic(), message)
            log.exception("model load failed unexpectedly", extra={"model": key})
            raise Unavailable(message) from None
        self._failures.pop(key, None)
        self._install(model)
        return model

    async def reload(self, ticker: str) -> ServedModel:
        """Load the model again (re-reading the stage manifest when unpinned); the old one serves on failure."""
        spec = await self.route(ticker)
        self._failures.pop(spec.location.model_key, None)
        old = self._models.get(spec.location.model_key)
        try:
            model = await self._load(spec)
        except Unavailable as exc:
            keeps = f"; still serving {old.version} ({old.digest})" if old is not None else ""
            raise Unavailable(exc.message + keeps) from None
        self._routes[ticker] = spec.location.model_key
        return model

    def _install(self, model: ServedModel) -> None:
        previous = self._models.get(model.key)
        if previous is model:
            return
        if not model.prediction_counters:
            model.prediction_counters = [self.metrics.predictions.labels(model.key, c) for c in model.classes]
        self._attach_shadow(model)
        self._models[model.key] = model
        self._publish_info(model)
        if previous is not None:
            log.info(
                "model replaced",
                extra={"model": model.key, "from_version": previous.version, "to_version": model.version},
            )
        if self.settings.compile_trees and model.engine == "lightgbm-capi":
            threading.Thread(target=self._compile, args=(model,), name="compile-trees", daemon=True).start()

    def _publish_info(self, model: ServedModel) -> None:
        is_etf = model.location.asset_class is AssetClass.ETF
        ticker = model.location.ticker if is_etf else (self.settings.ticker or "*")
        self.metrics.set_model_info(model.key, ticker, model.version, model.digest, model.engine, model.stage)

    def _compile(self, model: ServedModel) -> None:
        with self._compile_lock:  # one gcc at a time: the pod has few cores and requests come first
            if self._models.get(model.key) is not model and model is not self.challenger:
                return
            cache_dir = self.loader.cache.compiled_dir(model.digest) if self.loader.cache.enabled else None
            if cache_dir is None:
                import tempfile

                cache_dir = Path(tempfile.mkdtemp(prefix="compiled-trees-"))
            if engine_swap.try_swap(model, cache_dir, self.metrics) == "swapped" and (
                self._models.get(model.key) is model
            ):
                self._publish_info(model)

    # -- the shadow challenger ------------------------------------------------------------------

    def _attach_shadow(self, model: ServedModel) -> None:
        """The pod's model scores its challenger too (a reloaded model gets it again)."""
        challenger, pin = self.challenger, self.settings.shadow
        primary = self._primary
        if challenger is None or pin is None or primary is None or model.key != primary.location.model_key:
            return
        model.shadow = Shadow(model, challenger, pin.fraction, self.settings.shadow_timeout_seconds, self.metrics)
        state = "failed" if model.shadow.problem else "scoring"
        self.metrics.set_shadow_info(model.key, challenger.version, challenger.digest, state)

    async def _load_shadow(self) -> None:
        """Load the challenger like any version (same loader: cache tiers, digest verified), retrying
        with backoff; until it loads (or if it never does) the pod serves without a shadow."""
        pin, primary = self.settings.shadow, await self.primary_spec()
        assert pin is not None
        spec = ModelSpec(primary.location, Stage.STAGING, pin.version, pin.digest)  # staging, else archive/
        key = primary.location.model_key
        self.metrics.set_shadow_info(key, pin.version, pin.digest, "loading")
        delay = 1.0
        while True:
            try:
                challenger = await asyncio.get_running_loop().run_in_executor(self.pool, self.loader.load, spec)
                break
            except Exception as exc:
                message = exc.message if isinstance(exc, LoadError) else repr(exc)
                log.error("shadow challenger load failed; serving without it", extra={"model": key,
                          "challenger": pin.version, "error": message, "retry_seconds": delay})  # fmt: skip
                self.metrics.set_shadow_info(key, pin.version, pin.digest, "failed")
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(self.settings.load_retry_max_seconds, 1.0))
        self.challenger = challenger
        model = self._models.get(key)
        if model is not None:
            self._attach_shadow(model)
        log.info("shadow challenger loaded", extra={"model": key, "challenger": pin.version, "digest": pin.digest})
        if self.settings.compile_trees and challenger.engine == "lightgbm-capi":
            threading.Thread(target=self._compile, args=(challenger,), name="compile-trees", daemon=True).start()

    def loaded(self) -> list[tuple[str, ServedModel]]:
        """(ticker, model) for every ticker routed so far."""
        return [(t, self._models[k]) for t, k in sorted(self._routes.items()) if k in self._models]

    # -- lifecycle --------------------------------------------------------------------------------

    async def reload_all(self) -> None:
        for ticker, _ in self.loaded():
            try:
                await self.reload(ticker)
            except Unavailable as exc:
                log.error("reload refused", extra={"ticker": ticker, "error": exc.message})

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        self._spawn(self._become_ready())
        with contextlib.suppress(NotImplementedError, AttributeError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload_all()))

    async def _become_ready(self) -> None:
        delay = 0.5
        while True:
            try:
                if self.settings.ticker is not None:
                    spec = await self.primary_spec()
                    self._failures.pop(spec.location.model_key, None)
                    await self._adopt_early() or await self._load(spec)
                    self._routes[self.settings.ticker] = spec.location.model_key
                else:
                    await self.registry()
            except (Unavailable, NotFound, BadRequest) as exc:
                self.not_ready_reason = exc.message
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(self.settings.load_retry_max_seconds, 0.5))
                continue
            self.ready = True
            self.not_ready_reason = ""
            self.metrics.ready.set(1)
            if self.settings.shadow is not None:
                self._spawn(self._load_shadow())  # after readiness: the champion never waits for it
            log.info(
                "ready",
                extra={
                    "models": [m.key for _, m in self.loaded()] or "loaded on first request",
                    "seconds_since_process_start": process_age_seconds(),
                },
            )
            return

    async def _adopt_early(self) -> ServedModel | None:
        """The result of the load started before the server (taken once); None if there was none."""
        early, self._early = self._early, None
        if early is None:
            return None
        try:
            model = await asyncio.wrap_future(early)
        except LoadError as exc:
            extra = {"ticker": self.settings.ticker, "reason": exc.reason, "error": exc.message}
            log.error("model load failed", extra=extra)
            raise Unavailable(f"the model of {self.settings.ticker} cannot be served: {exc.message}") from None
        except Exception as exc:
            log.exception("model load failed unexpectedly", extra={"ticker": self.settings.ticker})
            raise Unavailable(f"the model of {self.settings.ticker} cannot be served: unexpected {exc!r}") from None
        self._install(model)
        return model

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        self.s3.stop.set()
        for task in list(self._tasks):
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
