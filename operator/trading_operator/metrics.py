"""The operator's own Prometheus metrics: reconcile passes by trigger, S3 requests by operation, and
whether this replica is the one acting.

Served on METRICS_PORT when it is set (`prometheus_client`'s default registry, so the process
metrics — resident memory, CPU seconds — come along).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter(
    "tradingmodel_operator_reconciles_total",
    "Reconcile passes over one TradingModel, by what started them (spec, drift, deep, rollout)",
    ["trigger"],
)
RECONCILE_SECONDS = Histogram(
    "tradingmodel_operator_reconcile_duration_seconds",
    "Wall time of one reconcile pass (S3 and Kubernetes API calls included)",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
S3_REQUESTS = Counter(
    "tradingmodel_operator_s3_requests_total",
    "HTTP requests sent to S3 (every attempt, retries included), by S3 operation",
    ["operation"],
)
ACTIVE = Gauge(
    "tradingmodel_operator_active",
    "1 while this replica acts on TradingModels, 0 while it waits for a higher-priority peer (kopf peering)",
)


@contextmanager
def timed_pass(trigger: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        RECONCILES.labels(trigger).inc()
        RECONCILE_SECONDS.labels(trigger).observe(time.perf_counter() - started)


def count_s3_requests(client: Any) -> Any:
    """Count every request the boto3 client sends; returns the client."""

    def sent(event_name: str = "", **_: Any) -> None:
        S3_REQUESTS.labels(event_name.rsplit(".", 1)[-1]).inc()

    client.meta.events.register("before-send.s3", sent)
    return client


def serve(port: int, start: Callable[[int], Any] = start_http_server) -> None:
    """Expose /metrics on `port` (0: not at all)."""
    if port:
        start(port)
