"""The operator's own /metrics, scraped from the running operator (a kopf subprocess against the
local API and a moto S3 over HTTP) while a TradingModel is promoted, refused, repaired, in Conflict,
pointed at an S3 that is not there, and deleted: every series the alerts and the dashboard read moves.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.pod_runtime import free_port
from devstack.promotions_chart import promotions_svg
from devstack.stack import LocalStack as Stack
from devstack.stack import tradingmodel
from model_store.layout import MODEL_NATIVE

pytestmark = pytest.mark.slow
DASHBOARD = Path(__file__).resolve().parents[2] / "manifests" / "grafana" / "tradingmodel-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(stack: Stack) -> Samples:
    with urllib.request.urlopen(stack.operator_metrics_url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def first_scrape(stack: Stack) -> Samples:
    """The operator serves /metrics once its startup handler ran, a moment after the process starts."""

    def attempt() -> Samples | None:
        try:
            return scrape(stack)
        except OSError:
            return None

    return stack.wait_until(attempt, "the operator's /metrics", timeout=60)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= series)


def grows(stack: Stack, before: Samples, name: str, **labels: str) -> Callable[[], bool]:
    return lambda: value(scrape(stack), name, **labels) > value(before, name, **labels)


def status_series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [
        dict(series)
        for (n, series), v in samples.items()
        if n == "tradingmodel_operator_model_status" and dict(series)["tradingmodel"] == name and v == 1
    ]


def test_series_move_through_a_promotion_a_failure_a_repair_and_a_conflict(stack: Stack) -> None:
    before = first_scrape(stack)
    stack.kubectl("apply", "-f", "-", input=tradingmodel("xlf-production", "XLF", "v1.0", stack.s3_endpoint))
    stack.wait_for("xlf-production", lambda tm: tm["status"].get("phase") == "Ready")
    stack.wait_until(grows(stack, before, "tradingmodel_operator_time_to_ready_seconds_count"), "time to Ready")
    after = scrape(stack)
    promoted = 'promotions_total{action="promote", result="success"}'
    assert (
        value(after, "tradingmodel_operator_promotions_total", action="promote", result="success")
        == value(before, "tradingmodel_operator_promotions_total", action="promote", result="success") + 1
    ), promoted
    assert value(after, "tradingmodel_operator_reconciles_total", trigger="spec", outcome="converged") > value(
        before, "tradingmodel_operator_reconciles_total", trigger="spec", outcome="converged"
    )
    assert value(after, "tradingmodel_operator_reconcile_duration_seconds_count", trigger="spec") > 0
    assert value(after, "tradingmodel_operator_s3_requests_total", operation="CopyObject") > value(
        before, "tradingmodel_operator_s3_requests_total", operation="CopyObject"
    )
    # Time to Ready: one observation, and no more than the wall time since the apply.
    ready_count = value(after, "tradingmodel_operator_time_to_ready_seconds_count")
    assert ready_count == value(before, "tradingmodel_operator_time_to_ready_seconds_count") + 1
    assert status_series(after, "xlf-production") == [
        {"namespace": "trading", "tradingmodel": "xlf-production", "phase": "Ready", "reason": "RolloutComplete"}
    ]

    # A failure: a version that was never published. Retried (outcome retry), promotion failures counted.
    before = scrape(stack)
    stack.kubectl("patch", "tm", "xlf-production", "--type=merge", "-p", '{"spec": {"version": "v9.9"}}')
    stack.wait_for("xlf-production", lambda tm: tm["status"].get("phase") == "Failed")
    stack.wait_until(
        grows(stack, before, "tradingmodel_operator_promotions_total", action="promote", result="failure"),
        "a failed promotion counted",
    )
    stack.wait_until(
        lambda: (
            status_series(scrape(stack), "xlf-production")
            == [
                {
                    "namespace": "trading",
                    "tradingmodel": "xlf-production",
                    "phase": "Failed",
                    "reason": "VersionNotFound",
                }
            ]
        ),
        "the status gauge to show the failure",
    )
    assert value(scrape(stack), "tradingmodel_operator_reconciles_total", outcome="retry") > value(
        before, "tradingmodel_operator_reconciles_total", outcome="retry"
    )

    # Back to v1.0, then someone edits production/ by hand: the drift check repairs it.
    stack.kubectl("patch", "tm", "xlf-production", "--type=merge", "-p", '{"spec": {"version": "v1.0"}}')
    stack.wait_for("xlf-production", lambda tm: tm["status"].get("phase") == "Ready")
    before = scrape(stack)
    stack.s3.put_object(Bucket=stack.bucket, Key=f"etfs/XLF/production/{MODEL_NATIVE}", Body=b"edited by hand")
    stack.wait_until(
        grows(stack, before, "tradingmodel_operator_promotions_total", action="repair", result="success"),
        "the repair counted",
    )
    assert value(scrape(stack), "tradingmodel_operator_reconciles_total", trigger="drift") > value(
        before, "tradingmodel_operator_reconciles_total", trigger="drift"
    )

    # A second claim on the stage: Conflict in the status gauge.
    stack.kubectl("apply", "-f", "-", input=tradingmodel("xlf-rival", "XLF", "v1.0", stack.s3_endpoint))
    stack.wait_until(
        lambda: [s["phase"] for s in status_series(scrape(stack), "xlf-rival")] == ["Conflict"], "Conflict counted"
    )

    # Deleted TradingModels leave the gauge.
    stack.kubectl("delete", "tm", "xlf-rival", "--wait=false")
    stack.wait_until(lambda: not status_series(scrape(stack), "xlf-rival"), "the deleted model's series to go")
    assert status_series(scrape(stack), "xlf-production")[0]["phase"] == "Ready"


def test_s3_that_does_not_answer_is_counted_as_errors(stack: Stack) -> None:
    before = first_scrape(stack)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    stack.kubectl("apply", "-f", "-", input=tradingmodel("tlt-production", "TLT", "v1.0", nowhere))
    stack.wait_for("tlt-production", lambda tm: tm["status"].get("phase") == "Failed")
    stack.wait_until(
        lambda: any(
            name == "tradingmodel_operator_s3_errors_total" and v > value(before, name, **dict(series))
            for (name, series), v in scrape(stack).items()
        ),
        "S3 errors counted",
    )
    errors = {
        dict(series)["error"]
        for (name, series), v in scrape(stack).items()
        if name == "tradingmodel_operator_s3_errors_total" and v > 0
    }
    assert errors & {"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError"}, errors
    assert "StorageError" in {s["reason"] for s in status_series(scrape(stack), "tlt-production")}


def test_the_dashboard_queries_run_on_the_local_prometheus(stack: Stack) -> None:
    """Every dashboard query is valid PromQL for a real Prometheus scraping the operator and the
    serving pods, and the panels an on-call person opens first show data."""
    if stack.prometheus is None:
        pytest.skip("no prometheus binary (Debian package 'prometheus'; .ci/run installs it)")
    prometheus = stack.prometheus
    stack.kubectl("apply", "-f", "-", input=tradingmodel("smh-production", "SMH", "v1.0", stack.s3_endpoint))
    stack.wait_for("smh-production", lambda tm: tm["status"].get("phase") == "Ready")
    for _ in range(5):
        stack.predict("smh-production", "SMH")
    queries = {
        panel["title"]: target["expr"].replace("$__rate_interval", "1m")
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel.get("targets") or []
    }
    must_show = [
        "TradingModels by phase",
        "Promotions",
        "Prediction requests per second, by model and version",
        "Predictions by strategy",
        "Reconcile passes per second, by trigger and outcome",
    ]

    def shown() -> list[str]:
        return [title for title in must_show if prometheus.query(queries[title])]

    stack.wait_until(lambda: shown() == must_show, f"data in the panels {must_show}", timeout=60)
    for expr in queries.values():
        prometheus.query(expr)  # raises on a query Prometheus refuses
    # The demo's picture of the promotions, from the same Prometheus.
    svg = promotions_svg(prometheus.query_range, stack.started_at, time.time())
    assert "promote success" in svg and "<path" in svg
    (by_version,) = [
        r for r in prometheus.query(queries[must_show[2]]) if r["metric"]["tradingmodel"] == "smh-production"
    ]
    assert by_version["metric"]["version"] == "v1.0"
