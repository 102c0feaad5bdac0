"""`python -m model_serving`: the serving process of one pod, configured from the environment.

uvicorn (httptools + uvloop) runs the plain ASGI app behind the size and time
limits of http_limits, and the V2 gRPC service (api/grpc_server.py) listens on
GRPC_PORT in the same event loop, sharing models, predictions and metrics;
there is no access log (requests are counted in /metrics). SIGTERM first
drains for SERVING_DRAIN_SECONDS: readiness answers 503 and every HTTP
response carries `Connection: close`, while requests are still answered, and
gRPC stops taking new calls (GOAWAY) while it finishes those in progress; then
HTTP stops accepting connections, lets in-flight requests finish
(SERVING_GRACEFUL_TIMEOUT_SECONDS) and exits. A second SIGTERM skips the
drain. SIGHUP reloads the loaded models.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING

from model_serving.config import ConfigError, Settings
from model_serving.logs import setup_logging

if TYPE_CHECKING:
    from model_serving.api.app import ServingApp

log = logging.getLogger("model_serving")


def build_app(settings: Settings) -> ServingApp:
    """The ASGI app. The pod's own model starts loading in a thread before the web stack is
    imported: reading, hashing and parsing the model run in C while Python imports the rest."""
    from model_serving.loading.disk_cache import DiskCache
    from model_serving.loading.loader import ModelLoader
    from model_serving.loading.s3_source import ModelSpec, S3Source
    from model_serving.metrics import Metrics
    from model_store.layout import ModelLocation

    metrics = Metrics()
    cache = DiskCache(
        settings.cache_dir,
        on_corrupt=lambda _path: metrics.cache_corrupt.inc(),
        versions=settings.cache_versions,
        max_bytes=settings.cache_max_bytes,
    )
    s3 = S3Source(settings.bucket, settings.endpoint_url, settings.region, metrics, settings.manifest_wait_seconds)
    loader = ModelLoader(s3, cache, metrics)
    early = None
    if settings.ticker and settings.asset_class:  # else the asset registry must be read first
        location = ModelLocation(settings.asset_class, settings.ticker)
        early = loader.load_in_background(ModelSpec(location, settings.stage, settings.version, settings.digest))

    from model_serving.api.app import SERVER_NAME, SERVER_VERSION, ServingApp
    from model_serving.api.scoring import Scorer
    from model_serving.api.service import ModelService

    service = ModelService(settings, loader, s3, metrics, early)
    scorer = Scorer(service)
    app = ServingApp(service, metrics, scorer)
    if settings.grpc_port:
        from model_serving.api.grpc_server import GrpcServer

        grpc_server = GrpcServer(service, scorer, metrics, SERVER_NAME, SERVER_VERSION)
        app.grpc = grpc_server
        app.on_startup.append(grpc_server.start)
        app.on_shutdown.append(lambda: grpc_server.stop(settings.graceful_timeout_seconds))
    return app


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        setup_logging("INFO")
        log.error("configuration error", extra={"error": str(exc)})
        return 2
    setup_logging(settings.log_level)
    from model_serving import memory

    memory.configure()  # large request bodies go back to the system when freed
    app = build_app(settings)

    import uvicorn

    from model_serving.http_limits import DRAIN, Limits, limited_protocol

    limits = Limits(
        max_request_line_bytes=settings.max_request_line_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
    )

    class DrainingServer(uvicorn.Server):
        """SIGTERM: drain first (readiness 503, `Connection: close`, still answering), then uvicorn's stop."""

        drain_until: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.drain_until is None and settings.drain_seconds > 0 and self.started:
                self.drain_until = time.monotonic() + settings.drain_seconds
                DRAIN.active = True  # readiness answers 503 from now on
                log.info("draining", extra={"seconds": settings.drain_seconds, "signal": signal.Signals(sig).name})
                self._captured_signals.append(sig)
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self.drain_until is not None:
                if DRAIN.active and not getattr(self, "_drain_started", False):
                    self._drain_started = True
                    DRAIN.start()  # in the loop: responses in progress get `Connection: close` too
                    if app.grpc is not None:  # GOAWAY now: gRPC clients move to pods that are not stopping
                        app.grpc.begin_stop(settings.drain_seconds + settings.graceful_timeout_seconds)
                if time.monotonic() >= self.drain_until:
                    self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",  # uvloop when installed
        http=limited_protocol(limits),  # httptools with size and time limits (http_limits)
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the client address is not used; the middleware costs ~6 us a request
        timeout_graceful_shutdown=int(settings.graceful_timeout_seconds) or None,
        timeout_keep_alive=max(1, int(settings.keepalive_timeout_seconds)),
        backlog=2048,
    )
    server = DrainingServer(config)
    log.info(
        "starting",
        extra={
            "port": settings.port,
            "grpc_port": settings.grpc_port or "off",
            "ticker": settings.ticker or "any registered",
            "stage": settings.stage.value,
            "version": settings.version,
            "digest": settings.digest,
        },
    )
    _exit_cleanly_after_graceful_stop(server)
    server.run()
    log.info("stopped")
    return 0


def _exit_cleanly_after_graceful_stop(server: object) -> None:
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, with whatever handler was
    there before it started: with this one the process then exits 0 (a stop that finished its
    requests is not a failure), while a signal that arrives before the server started still ends it."""

    def handle(signum: int, _frame: object) -> None:
        if not getattr(server, "started", False):
            raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


if __name__ == "__main__":
    sys.exit(main())
