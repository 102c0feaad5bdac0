"""The operator's own Prometheus metrics (served on METRICS_PORT when it is set).

`prometheus_client`'s default registry, so the process metrics (resident memory, CPU seconds)
come along. Labels stay bounded: trigger, outcome, action, result, S3 operation and error code,
phase and condition reason are small fixed sets; the per-TradingModel status gauge has one series
per TradingModel (like kube-state-metrics' per-object gauges) and never a version or a digest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from model_store.promotion import move_action
from trading_operator.decide import Plan, Promote, StoreOutcome, StoreWanted, View
from trading_operator.status import READY, condition

RECONCILES = Counter(
    "tradingmodel_operator_reconciles_total",
    "Reconcile passes over one TradingModel, by what started them (spec, drift, deep, rollout) and how "
    "they ended (converged, retry: a failure that may heal, refused: only a spec change fixes it, error: "
    "the pass raised, gone: the TradingModel was deleted)",
    ["trigger", "outcome"],
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
S3_ERRORS = Counter(
    "tradingmodel_operator_s3_errors_total",
    "S3 requests that failed, by S3 operation and error (the S3 error code, or the exception for a "
    "request that got no answer). Answers the store asks for are not errors: 404 on a lookup, 304 and "
    "412 on conditional requests",
    ["operation", "error"],
)
PROMOTIONS = Counter(
    "tradingmodel_operator_promotions_total",
    "Moves of a version into a stage prefix, by action (promote, rollback, repair: the stage was "
    "edited by hand and put back) and result (success, failure)",
    ["action", "result"],
)
TIME_TO_READY = Histogram(
    "tradingmodel_operator_time_to_ready_seconds",
    "From the first pass that sees a new spec (generation) to Ready for it: S3 moves and the rollout",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
# S3 answers that are part of the store's protocol, not failures (see model_store.s3).
_EXPECTED_S3_STATUS = frozenset({304, 404, 412})


@dataclass
class PassRecord:
    """How one pass ended; set by the handler, counted when the pass is over."""

    outcome: str = "converged"

    def ended_with(self, plan: Plan | None) -> None:
        self.outcome = outcome_of(plan)


def outcome_of(plan: Plan | None) -> str:
    if plan is None:
        return "gone"
    if plan.retryable:
        return "retry"
    return "refused" if plan.permanent else "converged"


ACTIVE = Gauge(
    "tradingmodel_operator_active",
    "1 while this replica acts on TradingModels, 0 while it waits for a higher-priority peer (kopf peering)",
)


@contextmanager
def timed_pass(trigger: str) -> Iterator[PassRecord]:
    record = PassRecord()
    started = time.perf_counter()
    try:
        yield record
    except BaseException:
        record.outcome = "error"
        raise
    finally:
        RECONCILES.labels(trigger, record.outcome).inc()
        RECONCILE_SECONDS.labels(trigger).observe(time.perf_counter() - started)


def count_s3_requests(client: Any) -> Any:
    """Count every request the boto3 client sends, and the failed ones; returns the client."""

    def sent(event_name: str = "", **_: Any) -> None:
        S3_REQUESTS.labels(_operation(event_name)).inc()

    def answered(event_name: str = "", http_response: Any = None, parsed: Any = None, **_: Any) -> None:
        status = int(getattr(http_response, "status_code", 0) or 0)
        if status >= 400 and status not in _EXPECTED_S3_STATUS:
            code = str(((parsed or {}).get("Error") or {}).get("Code") or status)
            S3_ERRORS.labels(_operation(event_name), code).inc()

    def unanswered(event_name: str = "", exception: Exception | None = None, **_: Any) -> None:
        if exception is not None:
            S3_ERRORS.labels(_operation(event_name), type(exception).__name__).inc()

    events = client.meta.events
    events.register("before-send.s3", sent)
    events.register("after-call.s3", answered)
    events.register("after-call-error.s3", unanswered)
    return client


def _operation(event_name: str) -> str:
    return event_name.rsplit(".", 1)[-1]


def observe_pass(view: View, wanted: StoreWanted, store: StoreOutcome, plan: Plan) -> None:
    """Promotions and time to Ready, from what one pass wanted, got and decided."""
    observe_store(wanted, store)
    _READY_CLOCK.observe(view, plan)


def observe_store(wanted: StoreWanted, store: StoreOutcome) -> None:
    """The promotion a pass made (or failed to), also when its status write was refused."""
    if isinstance(wanted, Promote):
        result = store.result
        if result is not None and result.copied:
            PROMOTIONS.labels(result.action, "success").inc()
        elif store.error is not None:
            PROMOTIONS.labels(move_action(wanted.model.version, wanted.last_known), "failure").inc()


class _ReadyClock:
    """Per TradingModel: the generation waiting for Ready and when a pass first saw it. In memory:
    a rollout under way while the operator restarts is not measured."""

    def __init__(self) -> None:
        self._since: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()

    def observe(self, view: View, plan: Plan, now: Callable[[], float] = time.monotonic) -> None:
        key = (view.namespace, view.name)
        with self._lock:
            if view.old.get("observedGeneration") != view.generation:
                pending = self._since.get(key)
                if pending is None or pending[0] != view.generation:
                    self._since[key] = (view.generation, now())
            pending = self._since.get(key)
            if plan.phase == READY and pending is not None and pending[0] == view.generation:
                del self._since[key]
                TIME_TO_READY.observe(now() - pending[1])

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._since.pop((namespace, name), None)


_READY_CLOCK = _ReadyClock()


class ModelStatusCollector(Collector):
    """`tradingmodel_operator_model_status{namespace, tradingmodel, phase, reason}` = 1: each
    TradingModel's phase and Ready reason as the operator's watch last showed them."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()

    def saw(self, namespace: str, name: str, status: dict[str, Any] | None) -> None:
        status = status or {}
        phase = str(status.get("phase") or "Pending")
        reason = str((condition(status.get("conditions") or [], "Ready") or {}).get("reason") or "")
        with self._lock:
            self._seen[(namespace, name)] = (phase, reason)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._seen.pop((namespace, name), None)
        _READY_CLOCK.forget(namespace, name)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tradingmodel_operator_model_status",
            "1 for each TradingModel, labelled with its phase and the reason of its Ready condition "
            "(count by (phase) for the models by phase)",
            labels=["namespace", "tradingmodel", "phase", "reason"],
        )
        with self._lock:
            seen = list(self._seen.items())
        for (namespace, name), (phase, reason) in sorted(seen):
            family.add_metric([namespace, name, phase, reason], 1)
        yield family


MODEL_STATUS = ModelStatusCollector()
REGISTRY.register(MODEL_STATUS)


def serve(port: int, start: Callable[[int], Any] = start_http_server) -> None:
    """Expose /metrics on `port` (0: not at all)."""
    if port:
        start(port)
