"""Autoscaled serving on the local stack: the operator (a kopf subprocess) owns a
HorizontalPodAutoscaler, leaves the Deployment's replicas to it, `kubectl scale tm` works through
the CRD's scale subresource, and Archived deletes the HPA and serves nothing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devstack.stack import LocalStack as Stack
from devstack.stack import tradingmodel

pytestmark = pytest.mark.slow
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 70}


def hpa(stack: Stack, name: str) -> dict[str, Any] | None:
    return stack.get("autoscaling/v2", "horizontalpodautoscalers", name)


def replicas(stack: Stack, name: str) -> int | None:
    dep = stack.get("apps/v1", "deployments", name)
    return None if dep is None else dep["spec"].get("replicas")


def drift_passes(stack: Stack, count: int = 2) -> None:
    """Let the drift timer pass over every TradingModel `count` times (each pass would undo a change it disliked)."""
    time.sleep(stack.drift_check_seconds * (count + 1))
    stack.check_operator()


def test_the_operator_owns_an_hpa_and_leaves_replicas_to_it(stack: Stack) -> None:
    model = tradingmodel("dia-production", "DIA", "v1.0", stack.s3_endpoint, serving={"autoscaling": AUTOSCALING})
    stack.kubectl("apply", "-f", "-", input=model)
    tm = stack.wait_for("dia-production", lambda tm: tm["status"].get("phase") == "Ready")
    owned = stack.wait_until(lambda: hpa(stack, "dia-production"), "the HorizontalPodAutoscaler")
    assert owned["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dia-production"}
    assert (owned["spec"]["minReplicas"], owned["spec"]["maxReplicas"]) == (1, 3)
    assert owned["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    (owner,) = owned["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TradingModel",
        "dia-production",
        tm["metadata"]["uid"],
        True,
    )
    assert tm["status"]["autoscaler"] == "dia-production" and replicas(stack, "dia-production") == 1
    print("\n$ kubectl get tm dia-production -o wide\n" + stack.kubectl("get", "tm", "dia-production", "-o", "wide"))
    print("$ kubectl get hpa\n" + stack.kubectl("get", "hpa", "dia-production"))

    # The HPA (here: someone, by hand) sets 2 replicas: the operator leaves them alone.
    stack.kubectl("scale", "deployment", "dia-production", "--replicas=2")
    drift_passes(stack)
    assert replicas(stack, "dia-production") == 2
    stack.wait_for("dia-production", lambda tm: tm["status"].get("replicas") == 2)
    stack.wait_until(
        lambda: (hpa(stack, "dia-production") or {}).get("status", {}).get("currentReplicas") == 2, "HPA status"
    )
    # Above maxReplicas: the (local) HPA brings it back to 3, and the operator still does not interfere.
    stack.kubectl("scale", "deployment", "dia-production", "--replicas=5")
    stack.wait_until(lambda: replicas(stack, "dia-production") == 3, "the HPA to clamp replicas to maxReplicas")
    drift_passes(stack, 1)
    assert replicas(stack, "dia-production") == 3
    print("$ kubectl get hpa (after a hand edit to 5 replicas)\n" + stack.kubectl("get", "hpa", "dia-production"))

    # Archived: the HPA is deleted and nothing serves.
    stack.kubectl("patch", "tm", "dia-production", "--type=merge", "-p", json.dumps({"spec": {"stage": "Archived"}}))
    stack.wait_for("dia-production", lambda tm: tm["status"].get("phase") == "Archived")
    stack.wait_until(lambda: hpa(stack, "dia-production") is None, "the HPA deleted")
    assert replicas(stack, "dia-production") == 0
    assert stack.tradingmodel("dia-production")["status"].get("autoscaler") is None  # type: ignore[index]


def test_kubectl_scale_sets_the_replicas_of_a_tradingmodel(stack: Stack) -> None:
    stack.kubectl("apply", "-f", "-", input=tradingmodel("xlu-production", "XLU", "v1.0", stack.s3_endpoint))
    stack.wait_for("xlu-production", lambda tm: tm["status"].get("phase") == "Ready")
    out = stack.kubectl("scale", "tm", "xlu-production", "--replicas=2")
    assert "scaled" in out, out
    assert stack.tradingmodel("xlu-production")["spec"]["serving"]["replicas"] == 2  # type: ignore[index]
    stack.wait_for(
        "xlu-production", lambda tm: tm["status"].get("readyReplicas") == 2 and tm["status"]["phase"] == "Ready"
    )
    assert replicas(stack, "xlu-production") == 2
    scale = json.loads(
        stack.kubectl("get", "--raw", "/apis/trading.io/v1alpha1/namespaces/trading/tradingmodels/xlu-production/scale")
    )
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert (
        scale["status"]["selector"]
        == "app.kubernetes.io/name=tradingmodel-serving,tradingmodel.trading.io/name=xlu-production"
    )
    # Without autoscaling a hand edit of the Deployment is put back to spec.serving.replicas.
    stack.kubectl("scale", "deployment", "xlu-production", "--replicas=1")
    stack.wait_until(lambda: replicas(stack, "xlu-production") == 2, "the operator to restore 2 replicas")
    # Switching autoscaling on hands the count to a new HPA; switching it off deletes the HPA.
    patch = {"spec": {"serving": {"autoscaling": {"maxReplicas": 4, "targetRequestsPerSecond": 50}}}}
    stack.kubectl("patch", "tm", "xlu-production", "--type=merge", "-p", json.dumps(patch))
    made = stack.wait_until(lambda: hpa(stack, "xlu-production"), "the HPA")
    assert made["spec"]["metrics"][0]["pods"]["metric"]["name"] == "tradingmodel_requests_per_second"
    stack.kubectl("patch", "tm", "xlu-production", "--type=merge", "-p", '{"spec": {"serving": {"autoscaling": null}}}')
    stack.wait_until(lambda: hpa(stack, "xlu-production") is None, "the HPA deleted")
