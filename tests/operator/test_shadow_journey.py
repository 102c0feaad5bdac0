"""The shadow challenger end to end: the real kopf operator (a subprocess) against the local
Kubernetes API, a moto S3 server over HTTP, real serving processes for the Deployments."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from devstack.pr_journey import ready_with
from devstack.stack import LocalStack as Stack
from devstack.stack import tradingmodel

pytestmark = pytest.mark.slow


def condition(tm: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in tm["status"].get("conditions") or [] if c["type"] == type_), {})


def pod_env(stack: Stack, name: str) -> dict[str, str]:
    dep = stack.get("apps/v1", "deployments", name)
    assert dep is not None
    return {e["name"]: e.get("value", "") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def shadow_compared(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return sum(
        float(line.rpartition(" ")[2]) for line in lines if line.startswith("tradingmodel_shadow_predictions_total")
    )


def test_production_scores_staging_in_shadow_until_it_is_promoted(stack: Stack) -> None:
    staging = tradingmodel("gld-staging", "GLD", "v1.1", stack.s3_endpoint, stage="Staging")
    production = tradingmodel("gld-production", "GLD", "v1.0", stack.s3_endpoint, shadow={"fromStage": "Staging"})
    stack.kubectl("apply", "-f", "-", input=staging)
    stack.wait_for("gld-staging", ready_with("v1.1"), timeout=120)
    stack.kubectl("apply", "-f", "-", input=production)
    shadowing = lambda t: ready_with("v1.0")(t) and (t["status"].get("shadow") or {}).get("version") == "v1.1"  # noqa: E731
    tm = stack.wait_for("gld-production", shadowing, timeout=120)
    assert condition(tm, "Shadow")["reason"] == "Scoring"
    env = pod_env(stack, "gld-production")
    assert (env["MODEL_VERSION"], env["MODEL_SHADOW_VERSION"]) == ("v1.0", "v1.1")
    assert env["MODEL_SHADOW_DIGEST"] == tm["status"]["shadow"]["digest"]
    assert "Shadowing" in {e.get("reason") for e in stack.events_for("gld-production")}

    url = stack.wait_until(lambda: stack.endpoints("gld-production"), "a ready pod")[0]
    stack.wait_until(lambda: b'state="scoring"' in urllib.request.urlopen(url + "/metrics").read(), "the challenger")
    for _ in range(20):
        assert stack.predict("gld-production", "GLD")["model_version"] == "v1.0"  # the champion answers
    assert shadow_compared(url) == 20

    stack.kubectl("patch", "tm", "gld-production", "--type", "merge", "-p", '{"spec": {"version": "v1.1"}}')
    tm = stack.wait_for("gld-production", lambda t: ready_with("v1.1")(t) and not t["status"].get("shadow"))
    assert condition(tm, "Shadow")["reason"] == "NoChallenger"  # staging holds what production serves now
    assert "MODEL_SHADOW_VERSION" not in pod_env(stack, "gld-production")

    # a challenger that was never published: production serves on, the condition says why
    patch = json.dumps({"spec": {"shadow": {"fromStage": None, "version": "v9.9"}}})
    stack.kubectl("patch", "tm", "gld-production", "--type", "merge", "-p", patch)
    tm = stack.wait_for("gld-production", lambda t: condition(t, "Shadow").get("reason") == "ChallengerNotServable")
    assert "v9.9 is not published" in condition(tm, "Shadow")["message"]
    assert ready_with("v1.1")(tm) and condition(tm, "Ready")["status"] == "True"
    assert stack.predict("gld-production", "GLD")["model_version"] == "v1.1"
