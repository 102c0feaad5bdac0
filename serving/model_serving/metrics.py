"""Prometheus metrics of the serving process (base units, `_total`, `_seconds`, `_info`).

One registry per Metrics object, so tests can build several in one process.
Hot-path children (per endpoint) are bound once and cached: an observe is a
lock and a few adds.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector

from model_serving.shadow_metrics import ShadowCollector

# The *_created series double the scrape size and nobody here queries them.
disable_created_metrics()

PREFIX = "tradingmodel"
# Single-row predictions take ~0.1 ms; the buckets resolve the sub-millisecond range.
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOAD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        # protocol: http or grpc. The endpoint labels are shared (a V2 inference is "infer" either way),
        # and code is the HTTP status, for gRPC the one the same outcome gets over HTTP (grpc_server.py).
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request received to response sent, by endpoint and protocol.",
            ["endpoint", "protocol"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests by endpoint, status code (HTTP's, also for gRPC) and protocol (http, grpc).",
            ["endpoint", "code", "protocol"],
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "Requests received and not yet answered (this scrape included).", registry=r
        )
        self.predictions = Counter(
            f"{PREFIX}_predictions",
            "Rows predicted, by model and predicted strategy.",
            ["model", "strategy"],
            registry=r,
        )
        self.load_seconds = Histogram(
            f"{PREFIX}_model_load_seconds",
            "Time to make a model version servable, by where its files came from (memory, disk or s3).",
            ["source"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter(
            f"{PREFIX}_model_load_failures",
            "Model loads refused or failed, by model and reason (verification, not_found, invalid, s3).",
            ["model", "reason"],
            registry=r,
        )
        self.cache_hits = Counter(
            f"{PREFIX}_model_cache_hits", "Model loads served by a cache tier (memory or disk).", ["tier"], registry=r
        )
        self.cache_misses = Counter(
            f"{PREFIX}_model_cache_misses", "Model loads a cache tier could not serve.", ["tier"], registry=r
        )
        self.cache_corrupt = Counter(
            f"{PREFIX}_model_cache_corrupt_files",
            "Disk cache files that failed verification and were dropped.",
            registry=r,
        )
        self.s3_bytes = Counter(
            f"{PREFIX}_s3_downloaded_bytes", "Bytes of model artifacts downloaded from S3.", registry=r
        )
        self.s3_requests = Counter(
            f"{PREFIX}_s3_requests",
            "S3 reads by kind (manifest, artifact, registry) and outcome (ok, not_found, mismatch, error).",
            ["kind", "outcome"],
            registry=r,
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "The model version being served (value 1), with its digest and prediction engine.",
            ["model", "ticker", "version", "digest", "engine", "stage"],
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the pod's model is loaded and verified.", registry=r)
        self.engine_swaps = Counter(
            f"{PREFIX}_engine_swaps",
            "Attempts to swap in compiled trees, by outcome (swapped, unavailable, mismatch, error).",
            ["outcome"],
            registry=r,
        )
        self.shadow = ShadowCollector()  # the shadow challenger's counters (shadow_metrics: cheap on the hot path)
        r.register(self.shadow)
        self.shadow_info = Gauge(
            f"{PREFIX}_shadow_info",
            "The shadow challenger of a model (value 1), by state (loading, scoring, failed).",
            ["model", "challenger", "digest", "state"],
            registry=r,
        )
        self._endpoint_children: dict[tuple[str, str], tuple[Histogram, dict[int, Counter]]] = {}
        self._info_labels: dict[tuple[int, str], tuple[str, ...]] = {}
        self._info_lock = threading.Lock()

    def observe_request(self, endpoint: str, code: int, seconds: float, protocol: str = "http") -> None:
        key = (endpoint, protocol)
        children = self._endpoint_children.get(key)
        if children is None:
            children = self._endpoint_children[key] = (self.request_duration.labels(endpoint, protocol), {})
        histogram, counters = children
        histogram.observe(seconds)
        counter = counters.get(code)
        if counter is None:
            counter = counters[code] = self.requests.labels(endpoint, str(code), protocol)
        counter.inc()

    def set_model_info(self, model: str, ticker: str, version: str, digest: str, engine: str, stage: str) -> None:
        """Replace the info series of `model` (one series per model at a time)."""
        self._replace_info(self.model_info, model, (model, ticker, version, digest, engine, stage))

    def set_shadow_info(self, model: str, challenger: str, digest: str, state: str) -> None:
        """Replace the shadow info series of `model` (one series per model at a time)."""
        self._replace_info(self.shadow_info, model, (model, challenger, digest, state))

    def _replace_info(self, gauge: Gauge, model: str, labels: tuple[str, ...]) -> None:
        with self._info_lock:
            old = self._info_labels.get((id(gauge), model))
            if old is not None and old != labels:
                gauge.remove(*old)
            gauge.labels(*labels).set(1)
            self._info_labels[(id(gauge), model)] = labels

    def render(self) -> bytes:
        return generate_latest(self.registry)
