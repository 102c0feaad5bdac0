"""The pure parts of the operator: spec parsing, object builders, status helpers."""

from __future__ import annotations

from typing import Any

import pytest

from trading_operator.builders import build_deployment, build_service, rollout_progress, rollout_state
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


def test_rollout_progress_ignores_unobserved_specs_and_tells_rollouts_apart() -> None:
    dep: dict[str, Any] = {"metadata": {"generation": 3}, "spec": {"replicas": 1}}
    dep["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    assert rollout_progress(dep) is None  # our own write, not looked at by the controller yet
    dep["status"]["observedGeneration"] = 3
    done = rollout_progress(dep)
    assert done == (3, 1, 1, 1, 1)
    dep["status"]["readyReplicas"] = 0
    assert rollout_progress(dep) != done
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
