"""spec.serving.autoscaling as pure parts: the spec, the HorizontalPodAutoscaler builder, and the
decision (the HPA planned and owned, the Deployment's replicas left to it, archived means none)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_serving.metrics import Metrics
from model_store.promotion import PromotionResult
from trading_operator.builders import (
    REQUESTS_PER_SECOND_METRIC,
    build_autoscaler,
    build_deployment,
    quantity,
    selector_text,
)
from trading_operator.config import OperatorConfig
from trading_operator.decide import Plan, StoreOutcome, View, decide, needs_write
from trading_operator.spec import InvalidSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "cd" * 32
SPEC: dict[str, Any] = {
    "ticker": "SPY",
    "version": "v1.1",
    "stage": "Production",
    "storage": {"bucket": "models"},
    "serving": {"replicas": 2, "autoscaling": {"minReplicas": 2, "maxReplicas": 6}},
}
MOVE = {"id": "m1", "at": "t", "action": "promote", "from_version": None, "to_version": "v1.1", "digest": DIGEST}


def spec(**serving: Any) -> dict[str, Any]:
    return {**SPEC, "serving": {**SPEC["serving"], **serving}}


def view(spec_: dict[str, Any], deployment: dict[str, Any] | None = None, **kwargs: Any) -> View:
    body = {"metadata": {"name": "spy", "namespace": "trading", "uid": "u1", "generation": 1}, "spec": spec_}
    return View(body=body, config=OperatorConfig(), now="2026-11-28T05:00:00Z", deployment=deployment, **kwargs)


def promoted(spec_: dict[str, Any], deployment: dict[str, Any] | None = None, **kwargs: Any) -> Plan:
    outcome = StoreOutcome(result=PromotionResult(True, True, "v1.1", DIGEST, MOVE))
    return decide(view(spec_, deployment, **kwargs), outcome)


def live(plan: Plan, replicas: int) -> dict[str, Any]:
    """The Deployment as the API holds it after the plan was applied, then scaled to `replicas`."""
    assert plan.deployment is not None
    obj = copy.deepcopy(plan.deployment)
    obj["spec"]["replicas"] = replicas
    obj["metadata"]["generation"] = 1
    obj["status"] = {"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas,
                     "updatedReplicas": replicas}  # fmt: skip
    return obj


def test_cpu_target_by_default_and_requests_per_second_through_the_pods_metric() -> None:
    model = parse_spec(SPEC)
    hpa = build_autoscaler("spy", "trading", model)
    assert hpa is not None and hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "spy"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}
    ]
    rps = build_autoscaler(
        "spy", "trading", parse_spec(spec(autoscaling={"maxReplicas": 4, "targetRequestsPerSecond": 2.5}))
    )
    assert rps is not None and rps["spec"]["minReplicas"] == 1
    (metric,) = rps["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "tradingmodel_requests_per_second"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2500m"}
    assert (quantity(50), quantity(0.5)) == ("50", "500m")


def test_no_autoscaling_and_archived_build_no_hpa_and_keep_replicas() -> None:
    plain = parse_spec({**SPEC, "serving": {"replicas": 2}})
    assert build_autoscaler("spy", "trading", plain) is None
    assert build_deployment("spy", "trading", plain, DIGEST, "img", 8080)["spec"]["replicas"] == 2
    archived = parse_spec({**SPEC, "stage": "Archived"})
    assert build_autoscaler("spy", "trading", archived) is None
    assert build_deployment("spy", "trading", archived, DIGEST, "img", 8080)["spec"]["replicas"] == 0
    autoscaled = build_deployment("spy", "trading", parse_spec(SPEC), DIGEST, "img", 8080)
    assert "replicas" not in autoscaled["spec"]


@pytest.mark.parametrize(
    ("autoscaling", "field"),
    [
        ({"minReplicas": 2}, "maxReplicas"),
        ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas"),
        ({"maxReplicas": 2, "targetCPUUtilizationPercentage": 80, "targetRequestsPerSecond": 5}, "one target"),
        ({"maxReplicas": 2, "targetCPUUtilizationPercentage": 0}, "targetCPUUtilizationPercentage"),
        ({"maxReplicas": 2, "targetRequestsPerSecond": 0}, "targetRequestsPerSecond"),
        ({"maxReplicas": 101}, "maxReplicas"),
    ],
)
def test_bad_autoscaling_names_the_field(autoscaling: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec, match=field):
        parse_spec(spec(autoscaling=autoscaling))


def test_a_cpu_target_needs_a_cpu_request() -> None:
    with pytest.raises(InvalidSpec, match=r"requests\.cpu"):
        parse_spec(spec(resources={"limits": {"memory": "1Gi"}}))
    parse_spec(spec(resources={"requests": {"cpu": "500m"}}))
    parse_spec(
        spec(resources={"limits": {"memory": "1Gi"}}, autoscaling={"maxReplicas": 3, "targetRequestsPerSecond": 9})
    )


def test_decide_plans_the_hpa_and_creates_the_deployment_at_the_minimum() -> None:
    plan = promoted(SPEC)
    assert plan.autoscaler is not None and plan.autoscaler["kind"] == "HorizontalPodAutoscaler"
    assert plan.deployment is not None and plan.deployment["spec"]["replicas"] == 2  # minReplicas, on create
    assert plan.status["autoscaler"] == "spy" and plan.status["replicas"] == 2
    assert (
        plan.status["selector"]
        == selector_text("spy")
        == "app.kubernetes.io/name=tradingmodel-serving,tradingmodel.trading.io/name=spy"
    )


def test_a_hand_edit_of_replicas_under_autoscaling_is_left_to_the_hpa() -> None:
    first = promoted(SPEC)
    scaled = live(first, 5)  # the HPA (or someone) set 5
    again = promoted(SPEC, scaled)
    assert again.deployment is not None and "replicas" not in again.deployment["spec"]
    assert not needs_write(scaled, again.deployment)
    assert again.status["replicas"] == 5 and again.phase == "Ready"
    # Without autoscaling the same edit is put back to spec.serving.replicas.
    plain = {**SPEC, "serving": {"replicas": 2}}
    fixed = promoted(plain, live(promoted(plain), 5))
    assert fixed.deployment is not None and needs_write(live(promoted(plain), 5), fixed.deployment)
    assert fixed.deployment["spec"]["replicas"] == 2


def test_a_deployment_back_from_zero_starts_at_the_minimum() -> None:
    plan = promoted(SPEC, live(promoted(SPEC), 0))
    assert plan.deployment is not None and plan.deployment["spec"]["replicas"] == 2


def test_archived_or_autoscaling_removed_deletes_the_hpa() -> None:
    hpa = build_autoscaler("spy", "trading", parse_spec(SPEC))
    archived = decide(view({**SPEC, "stage": "Archived"}, autoscaler=hpa), StoreOutcome())
    assert archived.scale_to_zero and archived.remove_autoscaler and archived.autoscaler is None
    assert archived.status["autoscaler"] is None
    plain = {**SPEC, "serving": {"replicas": 2}}
    dropped = promoted(plain, live(promoted(SPEC), 4), autoscaler=hpa)
    assert dropped.remove_autoscaler and dropped.autoscaler is None and dropped.status["autoscaler"] is None
    assert dropped.deployment is not None and dropped.deployment["spec"]["replicas"] == 2
    # A rollout-only pass (a Deployment event) reads no HPA and touches none.
    rollout = promoted(SPEC, live(promoted(SPEC), 3), rollout_only=True)
    assert rollout.autoscaler is None and not rollout.remove_autoscaler and "autoscaler" not in rollout.status


def test_the_adapter_rule_serves_the_metric_the_hpa_asks_for() -> None:
    rules = yaml.safe_load((ROOT / "manifests" / "prometheus" / "adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]["custom"]
    assert rule["name"]["as"] == REQUESTS_PER_SECOND_METRIC
    counters = {f.name + "_total" for f in Metrics().registry.collect() if f.type == "counter"}
    assert rule["seriesQuery"].split("{")[0] in counters  # the serving pods export it
