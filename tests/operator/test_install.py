"""What a real install relies on, with the real operator against the local API.

RBAC derived from what the operator really does: the journeys of a day (create, promote, roll
back, a conflict, archive, delete, a restart) run while the local API records every (client, group,
resource, verb, namespace) asked for; the RBAC in manifests/ must allow each of them and grant
nothing else. Uninstall in any order: no TradingModel waits for the operator to be deleted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devstack.kube_api import ACCESS_PATH
from devstack.stack import NAMESPACE, LocalStack, find_kubectl
from devstack.stack import tradingmodel as tradingmodel_object
from helpers.kustomize import KUBECTL, allows, granted, render
from model_store.layout import ModelLocation
from model_store.publish import publish_version
from trading_operator import MANAGER
from trading_operator.builders import SPEC_HASH_ANNOTATION
from trading_operator.reconcile import owner_reference

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(KUBECTL is None or find_kubectl() is None, reason="kubectl not found: pip install -e '.[dev]'"),
]

# The clients the operator process speaks as: kopf's watches, patches and events, and our own client.
OPERATOR_CLIENTS = {"kopf", MANAGER}
# Needed on real clusters but invisible to the local API: with the OwnerReferencesPermissionEnforcement
# admission plugin (OpenShift, hardened clusters), setting blockOwnerDeletion on an owner reference
# needs `update` on the owner's finalizers subresource, or every Deployment/Service create is a 403.
ADMISSION_ONLY = {("trading.io", "tradingmodels/finalizers", "update")}
# Used only on TradingModels an older release gave kopf's finalizer (taken away: the uninstall test
# below); a day of this release patches nothing but their status.
UPGRADE_ONLY = {("trading.io", "tradingmodels", "patch")}
Access = set[tuple[str, str, str, str | None]]  # (group, resource, verb, namespace or None for cluster-wide)


def test_owned_objects_block_owner_deletion() -> None:
    """The reason for ADMISSION_ONLY: drop it from the RBAC only together with blockOwnerDeletion."""
    assert owner_reference({"metadata": {"name": "x", "uid": "u"}})["blockOwnerDeletion"] is True


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, demo_v1: Any, demo_v2: Any) -> Iterator[LocalStack]:
    # Every rollout step passed on (none coalesced): the day then counts pods, as slow pods do.
    with LocalStack(tmp_path_factory.mktemp("rbac"), drift_check_seconds=2, retry_base_seconds=1,
                    prometheus=False, operator_settings={"ROLLOUT_SETTLE_SECONDS": "0"}) as running:  # fmt: skip
        for ticker in ("SPY", "QQQ"):
            location = ModelLocation.of(ticker, "etf")
            publish_version(running.s3, running.bucket, location, "v1.0", demo_v1.files)
            publish_version(running.s3, running.bucket, location, "v1.1", demo_v2.files)
        yield running


def recorded(stack: LocalStack) -> Access:
    assert stack.kube is not None
    rows = stack.kube.request("GET", ACCESS_PATH) or []
    return {(r["group"], r["resource"], r["verb"], r["namespace"]) for r in rows if r["client"] in OPERATOR_CLIENTS}


def forget(stack: LocalStack) -> None:
    assert stack.kube is not None
    stack.kube.request("DELETE", ACCESS_PATH)


def day(stack: LocalStack, name: str, ticker: str) -> None:
    """What the operator does in a day: promote, roll out, roll back, a rival in Conflict, archive,
    back, a Service edited by hand, delete (the journeys of test_journeys.py, compressed)."""

    def apply(tm_name: str, version: str) -> None:
        stack.kubectl("apply", "-f", "-", input=tradingmodel_object(tm_name, ticker, version, stack.s3_endpoint))

    def patch(spec: str) -> None:
        stack.kubectl("patch", "tm", name, "--type", "merge", "-p", f'{{"spec": {spec}}}')

    def phase(tm_name: str, wanted: str, version: str | None = None) -> None:
        stack.wait_for(tm_name, lambda tm: tm["status"].get("phase") == wanted
                       and version in (None, tm["status"].get("activeVersion")))  # fmt: skip

    apply(name, "v1.0")
    phase(name, "Ready", "v1.0")
    patch('{"version": "v1.1"}')
    phase(name, "Ready", "v1.1")
    patch('{"version": "v1.0"}')
    phase(name, "Ready", "v1.0")
    # A hand edit of the Service (its spec hash dropped) is written back by the next pass.
    stack.kubectl("annotate", "service", name, f"{SPEC_HASH_ANNOTATION}-")
    stack.wait_until(lambda: SPEC_HASH_ANNOTATION in (stack.get("v1", "services", name) or {}).get("metadata", {})
                     .get("annotations", {}), f"Service {name} written back")  # fmt: skip
    # Two replicas: a disruption budget; hand edits of the budget and the network policy are
    # written back; autoscaling on, changed and off: the HorizontalPodAutoscaler's whole life.
    patch('{"serving": {"replicas": 2}}')
    for plural, what in (("poddisruptionbudgets", "policy/v1"), ("networkpolicies", "networking.k8s.io/v1")):
        written_back(stack, what, plural, name)
    patch('{"serving": {"replicas": 1, "autoscaling": {"maxReplicas": 3}}}')
    stack.wait_until(lambda: stack.get("autoscaling/v2", "horizontalpodautoscalers", name) is not None, "HPA made")
    stack.wait_until(lambda: stack.get("policy/v1", "poddisruptionbudgets", name) is None, "budget deleted")
    patch('{"serving": {"autoscaling": {"maxReplicas": 4}}}')
    stack.wait_until(lambda: ((stack.get("autoscaling/v2", "horizontalpodautoscalers", name) or {}).get("spec") or {})
                     .get("maxReplicas") == 4, "HPA patched")  # fmt: skip
    patch('{"serving": {"autoscaling": null}}')
    stack.wait_until(lambda: stack.get("autoscaling/v2", "horizontalpodautoscalers", name) is None, "HPA deleted")
    phase(name, "Ready", "v1.0")
    apply(f"{name}-rival", "v1.1")
    phase(f"{name}-rival", "Conflict")
    patch('{"stage": "Archived"}')
    phase(name, "Archived")
    stack.kubectl("delete", "tm", f"{name}-rival", name)
    stack.wait_until(lambda: stack.get("apps/v1", "deployments", name) is None, f"Deployment {name} collected")


def written_back(stack: LocalStack, api_version: str, plural: str, name: str) -> None:
    """The object exists; a hand edit that drops its spec hash is written back by the next pass."""

    def hash_of() -> str | None:
        return (((stack.get(api_version, plural, name) or {}).get("metadata") or {}).get("annotations") or {}).get(
            SPEC_HASH_ANNOTATION
        )

    stack.wait_until(lambda: hash_of() is not None, f"{plural} {name} made")
    stack.kubectl("annotate", plural, name, f"{SPEC_HASH_ANNOTATION}-")
    stack.wait_until(lambda: hash_of() is not None, f"{plural} {name} written back")


def operator_rbac(folder: str) -> tuple[list[dict[str, Any]], str | None]:
    """The rules bound to the operator's service account in an install, and their namespace (None:
    a ClusterRole bound cluster-wide)."""
    objs = render(folder)
    roles = [o for o in objs if o["kind"] in ("ClusterRole", "Role")]
    (role,) = roles
    return role["rules"], role["metadata"].get("namespace")


def check(used: Access, rules: list[dict[str, Any]], namespace: str | None) -> None:
    refused = sorted(
        (g, r, v, ns) for g, r, v, ns in used if not allows(rules, g, r, v) or (namespace and ns != namespace)
    )
    assert refused == [], f"the operator asked for these and the RBAC refuses them: {refused}"
    unused = granted(rules) - {(g, r, v) for g, r, v, _ in used} - ADMISSION_ONLY - UPGRADE_ONLY
    assert unused == set(), f"granted but never used in a day of the operator: {sorted(unused)}"


def test_cluster_install_grants_exactly_what_a_day_uses(stack: LocalStack) -> None:
    day(stack, "spy-production", "SPY")
    stack.kill_operator()
    stack.restart_operator()  # a resume pass over what exists
    stack.kubectl("apply", "-f", "-", input=tradingmodel_object("spy-production", "SPY", "v1.1", stack.s3_endpoint))
    stack.wait_for("spy-production", lambda tm: tm["status"].get("phase") == "Ready")
    stack.kubectl("delete", "tm", "spy-production")
    used = recorded(stack)
    print("\nused:", *sorted(used, key=str), sep="\n  ")
    check(used, *operator_rbac("default"))


def test_namespaced_install_stays_in_its_namespace(stack: LocalStack) -> None:
    stack.kill_operator()
    forget(stack)
    stack.restart_operator(WATCH_NAMESPACE=NAMESPACE)
    day(stack, "qqq-production", "QQQ")
    used = recorded(stack)
    print("\nused:", *sorted(used, key=str), sep="\n  ")
    rules, namespace = operator_rbac("overlays/namespaced")
    assert namespace == NAMESPACE
    check(used, rules, namespace)


def test_uninstall_in_any_order_leaves_nothing_terminating(stack: LocalStack) -> None:
    """Argo CD or Flux may prune the operator before the TradingModels: nothing may wait for it."""
    name = "spy-production"
    stack.kubectl("apply", "-f", "-", input=tradingmodel_object(name, "SPY", "v1.0", stack.s3_endpoint))
    tm = stack.wait_for(name, lambda tm: tm["status"].get("phase") == "Ready")
    assert not tm["metadata"].get("finalizers")
    stack.kill_operator()  # pruned first
    stack.kubectl("delete", "tm", name, "--wait=false")
    stack.wait_until(lambda: stack.tradingmodel(name) is None, f"TradingModel {name} gone without the operator")
    stack.wait_until(lambda: stack.get("apps/v1", "deployments", name) is None, f"Deployment {name} collected")

    # A TradingModel that an older release gave kopf's finalizer: the operator takes it away.
    old = tradingmodel_object(name, "SPY", "v1.0", stack.s3_endpoint)
    old["metadata"]["finalizers"] = ["trading.io/finalizer"]
    stack.kubectl("apply", "-f", "-", input=old)
    stack.restart_operator()
    stack.wait_until(lambda: not ((stack.tradingmodel(name) or {}).get("metadata") or {}).get("finalizers"),
                     "the old finalizer removed")  # fmt: skip
    stack.kill_operator()
    stack.kubectl("delete", "tm", name, "--wait=false")
    stack.wait_until(lambda: stack.tradingmodel(name) is None, f"TradingModel {name} gone without the operator")
