"""The pure parts of the operator: spec parsing, object builders, status helpers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from trading_operator.builders import (
    SERVING_GRPC_PORT,
    before_new_pods,
    build_deployment,
    build_disruption_budget,
    build_network_policy,
    build_service,
    live_selector,
    rollout_progress,
    rollout_state,
    serving_resources,
)
from trading_operator.quantity import InvalidQuantity, parse_quantity
from trading_operator.spec import InvalidSpec, parse_spec
from trading_operator.status import append_history, set_condition

SPEC: dict[str, Any] = {
    "ticker": "SPY",
    "version": "v1.2",
    "stage": "Production",
    "storage": {"bucket": "options-trading-models", "secretRef": {"name": "s3-credentials"}},
    "serving": {"replicas": 2},
}
DIGEST = "sha256:" + "ab" * 32


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_deployment_pins_version_and_digest_and_reads_keys_from_the_secret() -> None:
    model = parse_spec(SPEC)
    dep = build_deployment("spy-production", "trading", model, DIGEST, "img:1", 8080)
    env = env_of(dep)
    assert (env["MODEL_VERSION"], env["MODEL_DIGEST"], env["MODEL_STAGE"]) == ("v1.2", DIGEST, "production")
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"}}
    assert "S3_ENDPOINT_URL" not in env
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["metadata"]["annotations"]["trading.io/digest"] == DIGEST
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert "trading.io/version" not in selector  # selectors are immutable; versions change


def test_a_stopping_pod_pauses_then_drains_within_its_grace_period() -> None:
    from pod_contract import DRAIN_SECONDS, GRACEFUL_SECONDS, PRESTOP_SECONDS

    pod = build_deployment("m", "ns", parse_spec(SPEC), DIGEST, "img:1", 8080)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}
    needed = PRESTOP_SECONDS + float(DRAIN_SECONDS.default) + float(GRACEFUL_SECONDS.default)
    assert pod["terminationGracePeriodSeconds"] > needed, "SIGKILL never cuts the drain or the graceful wait short"


def test_a_new_version_changes_the_pod_template_and_the_spec_hash() -> None:
    one = build_deployment("m", "ns", parse_spec(SPEC), DIGEST, "img:1", 8080)
    two = build_deployment("m", "ns", parse_spec({**SPEC, "version": "v1.3"}), "sha256:" + "cd" * 32, "img:1", 8080)
    same = build_deployment("m", "ns", parse_spec(SPEC), DIGEST, "img:1", 8080)
    key = "trading.io/spec-hash"
    assert one["metadata"]["annotations"][key] != two["metadata"]["annotations"][key]
    assert one == same


def test_archived_scales_to_zero_and_stock_models_use_the_universal_family() -> None:
    archived = build_deployment("m", "ns", parse_spec({**SPEC, "stage": "Archived"}), DIGEST, "i", 8080)
    assert archived["spec"]["replicas"] == 0
    stock = parse_spec({**SPEC, "ticker": "AAPL", "assetClass": "stock"})
    assert stock.location.stage_prefix(stock.s3_stage) == "stocks/universal/production/"
    assert stock.claim() == "s3://options-trading-models/stocks/universal/production/"
    assert stock.tickers == ("AAPL",)
    both = parse_spec({**SPEC, "ticker": "AAPL", "assetClass": "stock", "tickers": ["MSFT", "AAPL"]})
    assert both.tickers == ("AAPL", "MSFT") and both.claim() == stock.claim()
    with pytest.raises(InvalidSpec, match="for assetClass stock only"):
        parse_spec({**SPEC, "tickers": ["MSFT"]})


def test_service_targets_the_pods_by_the_immutable_selector() -> None:
    model = parse_spec(SPEC)
    svc = build_service("spy", "trading", model, 8080)
    dep = build_deployment("spy", "trading", model, DIGEST, "i", 8080)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_the_service_and_the_pods_expose_v2_grpc_on_its_own_port() -> None:
    model = parse_spec(SPEC)
    svc = build_service("spy", "trading", model, 8080)
    container = build_deployment("spy", "trading", model, DIGEST, "i", 8080)["spec"]["template"]["spec"]["containers"][
        0
    ]
    ports = {p["name"]: p for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports["http"]["containerPort"] == 8080 and env["PORT"] == "8080"
    assert ports["grpc"]["containerPort"] == 8081 and env["GRPC_PORT"] == "8081"
    grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert (grpc["port"], grpc["targetPort"], grpc["appProtocol"]) == (8081, "grpc", "kubernetes.io/h2c")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ticker": "spy"}, "ticker"),
        ({"version": "1.2"}, "version"),
        ({"stage": "Prod"}, "spec.stage"),
        ({"serving": {"replicas": -1}}, "spec.serving.replicas"),
        ({"storage": {}}, "spec.storage.bucket"),
        ({"storage": {"bucket": "b", "endpoint": "ftp://x"}}, "bucket"),
        ({"assetClass": "bond"}, "spec.assetClass"),
    ],
)
def test_invalid_specs_name_the_field_to_fix(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec, match=field):
        parse_spec({**SPEC, **change})


def test_rollout_state_needs_the_new_generation_observed_and_all_replicas_ready() -> None:
    dep: dict[str, Any] = {"metadata": {"generation": 2}, "spec": {"replicas": 2}}
    dep["status"] = {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}
    assert rollout_state(dep) == (2, 2, False)
    dep["status"]["observedGeneration"] = 2
    assert rollout_state(dep) == (2, 2, True)
    dep["status"]["replicas"] = 3  # an old pod still terminating
    assert rollout_state(dep)[2] is False
    assert rollout_state(None) == (0, 0, False)


def test_only_a_rollout_that_created_no_pod_yet_needs_no_pass() -> None:
    dep: dict[str, Any] = {"metadata": {"generation": 3}, "spec": {"replicas": 2}}
    dep["status"] = {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 0, "readyReplicas": 2}
    assert before_new_pods(dep)  # the old pods serve, no new one yet: the spec pass said "0/2" already
    dep["status"]["updatedReplicas"] = 1  # a new pod exists: is it ready? only a count of pods tells
    assert not before_new_pods(dep)
    dep["status"].update(updatedReplicas=0, observedGeneration=2)
    assert not before_new_pods(dep)  # not observed yet: rollout_progress decides (None)
    dep["status"].update(observedGeneration=3, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "m"}])  # fmt: skip
    assert not before_new_pods(dep)  # stalled before any pod came: the status must say so
    zero: dict[str, Any] = {"metadata": {"generation": 2}, "spec": {"replicas": 0}}
    zero["status"] = {"observedGeneration": 2, "replicas": 0, "updatedReplicas": 0, "readyReplicas": 0}
    assert not before_new_pods(zero)  # scaled to zero: complete, the status says so


def test_rollout_progress_ignores_unobserved_specs_and_tells_rollouts_apart() -> None:
    dep: dict[str, Any] = {"metadata": {"generation": 3}, "spec": {"replicas": 1}}
    dep["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    assert rollout_progress(dep) is None  # our own write, not looked at by the controller yet
    dep["status"]["observedGeneration"] = 3
    done = rollout_progress(dep)
    assert done == (3, 1, 1, 1, 1, 0)
    dep["status"]["readyReplicas"] = 0
    assert rollout_progress(dep) != done
    stalled = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "m"}
    before = rollout_progress(dep)
    dep["status"]["conditions"] = [stalled]  # no count moves when a rollout stalls: the flag does
    assert rollout_progress(dep) != before
    dep["status"]["conditions"] = []
    # the next rollout ends with the same counts, but a later generation: never mistaken for "seen"
    dep["metadata"]["generation"] = dep["status"]["observedGeneration"] = 4
    dep["status"]["readyReplicas"] = 1
    assert rollout_progress(dep) not in (None, done)


def test_conditions_keep_their_transition_time_until_the_status_flips() -> None:
    first = set_condition([], "Ready", False, "RollingOut", "0/2", 1, "t1")
    again = set_condition(first, "Ready", False, "RollingOut", "1/2", 1, "t2")
    flipped = set_condition(again, "Ready", True, "RolloutComplete", "2/2", 1, "t3")
    assert again[0]["lastTransitionTime"] == "t1" and again[0]["message"] == "1/2"
    assert flipped[0]["lastTransitionTime"] == "t3" and len(flipped) == 1
    assert append_history([{"n": i} for i in range(10)], {"n": 10}, 10)[0] == {"n": 1}


@pytest.mark.parametrize("name", ["Spy", "1spy", "spy.prod", "a" * 64, "spy-"])
def test_names_that_cannot_name_a_service_are_refused(name: str) -> None:
    from trading_operator.spec import check_name

    with pytest.raises(InvalidSpec, match="DNS label"):
        check_name(name)
    check_name("spy-production")


# -- pod safety: what a platform team's admission policies and checkov ask of the serving pods ----


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def test_serving_pods_mount_no_token_spread_over_nodes_and_limit_every_resource() -> None:
    dep = build_deployment("spy", "trading", parse_spec(SPEC), DIGEST, "img:1", 8080)
    pod, selector = pod_spec(dep), dep["spec"]["selector"]["matchLabels"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod and "imagePullSecrets" not in pod  # the namespace's default
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"] == {"matchLabels": selector}
    for section in ("requests", "limits"):
        assert {"cpu", "memory", "ephemeral-storage"} <= container["resources"][section].keys(), section
    assert container["imagePullPolicy"] == "Always"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    writable = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/cache/models"} <= writable
    assert {p for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in container} == {
        "readinessProbe",
        "livenessProbe",
        "startupProbe",
    }
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert dep["spec"]["progressDeadlineSeconds"] == 600


def test_service_account_pull_secrets_and_progress_deadline_come_from_spec_serving() -> None:
    serving = {
        "replicas": 2,
        "serviceAccountName": "spy-irsa",
        "imagePullSecrets": [{"name": "registry"}],
        "progressDeadlineSeconds": 90,
    }
    dep = build_deployment("spy", "trading", parse_spec({**SPEC, "serving": serving}), DIGEST, "img:1", 8080)
    pod = pod_spec(dep)
    assert (pod["serviceAccountName"], pod["imagePullSecrets"]) == ("spy-irsa", [{"name": "registry"}])
    assert pod["automountServiceAccountToken"] is False  # IRSA mounts its own projected token
    assert dep["spec"]["progressDeadlineSeconds"] == 90
    for bad, field in (
        ({"serviceAccountName": "Bad_Name"}, "serviceAccountName"),
        ({"imagePullSecrets": ["registry"]}, "imagePullSecrets"),
        ({"progressDeadlineSeconds": 0}, "progressDeadlineSeconds"),
    ):
        with pytest.raises(InvalidSpec, match=field):
            parse_spec({**SPEC, "serving": bad})


def test_owned_objects_carry_no_gitops_tracking_label() -> None:
    """Argo CD's default tracking label is app.kubernetes.io/instance=<Application name>: an
    Application named like the TradingModel would claim (and prune) what the operator owns."""
    model = parse_spec(SPEC)
    dep = build_deployment("spy", "trading", model, DIGEST, "img:1", 8080)
    owned = [
        dep,
        build_service("spy", "trading", model, 8080),
        build_network_policy("spy", "trading", model, 8080),
        build_disruption_budget("spy", "trading", model),
    ]
    for obj in owned:
        assert obj is not None
        assert "app.kubernetes.io/instance" not in obj["metadata"]["labels"], obj["kind"]
        assert obj["metadata"]["labels"]["tradingmodel.trading.io/name"] == "spy"
    assert "app.kubernetes.io/instance" not in dep["spec"]["template"]["metadata"]["labels"]


def test_a_deployment_made_by_an_older_operator_keeps_its_immutable_selector() -> None:
    legacy = {"app.kubernetes.io/name": "tradingmodel-serving", "app.kubernetes.io/instance": "spy"}
    live = {"spec": {"selector": {"matchLabels": legacy}}}
    match = live_selector("spy", live)
    assert match == legacy and live_selector("spy", None) == {
        "app.kubernetes.io/name": "tradingmodel-serving",
        "tradingmodel.trading.io/name": "spy",
    }
    model = parse_spec(SPEC)
    dep = build_deployment("spy", "trading", model, DIGEST, "img:1", 8080, match_labels=match)
    assert dep["spec"]["selector"]["matchLabels"] == legacy
    assert legacy.items() <= dep["spec"]["template"]["metadata"]["labels"].items()  # its pods stay selected
    assert build_service("spy", "trading", model, 8080, match_labels=match)["spec"]["selector"] == legacy
    budget = build_disruption_budget("spy", "trading", model, match_labels=match)
    assert budget is not None and budget["spec"]["selector"]["matchLabels"] == legacy
    assert "app.kubernetes.io/instance" not in dep["metadata"]["labels"]  # the Deployment itself: never


def test_a_disruption_budget_only_with_two_replicas_or_more() -> None:
    two = build_disruption_budget("spy", "trading", parse_spec(SPEC))
    assert two is not None and two["apiVersion"] == "policy/v1"
    assert two["spec"]["maxUnavailable"] == 1 and two["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert build_disruption_budget("spy", "trading", parse_spec({**SPEC, "serving": {"replicas": 1}})) is None
    assert build_disruption_budget("spy", "trading", parse_spec({**SPEC, "stage": "Archived"})) is None


def test_the_network_policy_admits_the_serving_ports_only() -> None:
    policy = build_network_policy("spy", "trading", parse_spec(SPEC), 8080)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": SERVING_GRPC_PORT}]  # HTTP, gRPC
    assert policy["spec"]["ingress"] == [{"ports": ports}]


@pytest.mark.parametrize(
    ("given", "requests", "limits"),
    [
        ({}, {"cpu": "250m", "memory": "256Mi"}, {"cpu": "2", "memory": "1Gi"}),
        ({"requests": {"memory": "4Gi"}}, {"memory": "4Gi"}, {"memory": "4Gi"}),  # the limit follows
        ({"limits": {"cpu": "100m"}}, {"cpu": "100m"}, {"cpu": "100m"}),  # the request follows
        ({"requests": {"cpu": "1"}, "limits": {"cpu": "3"}}, {"cpu": "1"}, {"cpu": "3"}),
    ],
)
def test_given_resources_override_the_defaults_without_contradicting_them(
    given: dict[str, Any], requests: dict[str, str], limits: dict[str, str]
) -> None:
    resources = serving_resources(given)
    assert requests.items() <= resources["requests"].items() and limits.items() <= resources["limits"].items()


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"requests": {"cpu": "lots"}}, "requests.cpu 'lots': quantities must match"),
        ({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}, "less than or equal to its limit"),
        ({"limits": ["1"]}, "resources.limits must map"),
    ],
)
def test_resources_a_cluster_would_refuse_are_refused_naming_the_field(resources: Any, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_spec({**SPEC, "serving": {"resources": resources}})


def test_a_version_too_long_for_a_label_value_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="at most 63 characters"):
        parse_spec({**SPEC, "version": "v1.2-" + "a" * 59})
    assert parse_spec({**SPEC, "version": "v1.2-" + "a" * 58}).version.endswith("a")


@pytest.mark.parametrize(
    ("text", "value"),
    [("250m", "0.25"), ("1Gi", str(1 << 30)), ("2", "2"), ("1e3", "1000"), ("1.5k", "1500"), (3, "3")],
)
def test_quantities_parse_as_the_api_server_parses_them(text: object, value: str) -> None:
    assert parse_quantity(text) == Decimal(value)


@pytest.mark.parametrize("text", ["lots", "1GB", "", "1.2.3Mi", True, None, "Gi"])
def test_what_is_no_quantity_is_refused_with_the_api_servers_message(text: object) -> None:
    with pytest.raises(InvalidQuantity, match="quantities must match the regular expression"):
        parse_quantity(text)
