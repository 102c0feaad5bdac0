"""`python -m model_serving`: the serving process of one pod, configured from the environment.

uvicorn (httptools + uvloop when installed) runs the plain ASGI app; there is
no access log (requests are counted in /metrics). SIGTERM stops accepting
connections, lets in-flight requests finish (SERVING_GRACEFUL_TIMEOUT_SECONDS)
and exits; SIGHUP reloads the loaded models.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from model_serving.config import ConfigError, Settings
from model_serving.logs import setup_logging

log = logging.getLogger("model_serving")


def build_app(settings: Settings) -> Any:
    """The ASGI app. The pod's own model starts loading in a thread before the web stack is
    imported: reading, hashing and parsing the model run in C while Python imports the rest."""
    from model_serving.loading.disk_cache import DiskCache
    from model_serving.loading.loader import ModelLoader
    from model_serving.loading.s3_source import ModelSpec, S3Source
    from model_serving.metrics import Metrics
    from model_store.layout import ModelLocation

    metrics = Metrics()
    cache = DiskCache(settings.cache_dir, on_corrupt=lambda _path: metrics.cache_corrupt.inc())
    s3 = S3Source(settings.bucket, settings.endpoint_url, settings.region, metrics, settings.manifest_wait_seconds)
    loader = ModelLoader(s3, cache, metrics)
    early = None
    if settings.ticker and settings.asset_class:  # else the asset registry must be read first
        location = ModelLocation(settings.asset_class, settings.ticker)
        early = loader.load_in_background(ModelSpec(location, settings.stage, settings.version, settings.digest))

    from model_serving.api.app import ServingApp
    from model_serving.api.service import ModelService

    return ServingApp(ModelService(settings, loader, s3, metrics, early), metrics)


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        setup_logging("INFO")
        log.error("configuration error", extra={"error": str(exc)})
        return 2
    setup_logging(settings.log_level)
    app = build_app(settings)

    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the client address is not used; the middleware costs ~6 us a request
        timeout_graceful_shutdown=int(settings.graceful_timeout_seconds) or None,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    log.info(
        "starting",
        extra={
            "port": settings.port,
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
