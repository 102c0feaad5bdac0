"""The pure decision of a reconcile pass, for every condition reason it reports: no processes, no I/O."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from model_store.errors import CorruptVersion, RegistryError, VersionNotFound
from model_store.promotion import PromotionResult
from trading_operator.claims import Claimant, claims_of, rival
from trading_operator.config import OperatorConfig
from trading_operator.decide import (
    Plan,
    Promote,
    RecordArchive,
    SecretNotFound,
    StoreOutcome,
    View,
    decide,
    deployment_rejected,
    store_wanted,
)

DIGEST = "sha256:" + "ab" * 32
CONFIG = OperatorConfig()
NOW = "2026-11-28T03:00:00Z"
SPEC: dict[str, Any] = {
    "ticker": "SPY",
    "version": "v1.1",
    "stage": "Production",
    "storage": {"bucket": "models", "secretRef": {"name": "s3"}},
    "serving": {"replicas": 2},
}
MOVE = {"id": "m1", "at": NOW, "action": "promote", "from_version": "v1.0", "to_version": "v1.1", "digest": DIGEST}


def body(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "spy-production", "namespace": "trading", "uid": "u1", "generation": 3,
                     "creationTimestamp": "2026-01-01T00:00:00Z", **meta},
        "spec": {**SPEC, **(spec or {})},
        "status": status or {},
    }  # fmt: skip


def view(b: dict[str, Any] | None = None, **kwargs: Any) -> View:
    return View(body=b or body(), config=CONFIG, now=NOW, **kwargs)


def promoted(copied: bool = True, recorded: bool = True, audit_error: str | None = None) -> StoreOutcome:
    return StoreOutcome(result=PromotionResult(copied, recorded, "v1.1", DIGEST, MOVE, audit_error))


def reasons(plan: Plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}


def live_deployment(plan: Plan, ready: int, updated: int | None = None) -> dict[str, Any]:
    assert plan.deployment is not None
    desired = plan.deployment["spec"]["replicas"]
    return {
        **plan.deployment,
        "metadata": {**plan.deployment["metadata"], "generation": 1},
        "status": {"observedGeneration": 1, "replicas": desired, "readyReplicas": ready,
                   "updatedReplicas": desired if updated is None else updated},
    }  # fmt: skip


def test_a_new_version_is_promoted_then_rolled_out_then_ready() -> None:
    first = view()
    wanted = store_wanted(first)
    assert isinstance(wanted, Promote) and wanted.model.version == "v1.1" and not wanted.deep
    plan = decide(first, promoted())
    assert plan.phase == "RollingOut" and plan.deployment is not None and plan.service is not None
    assert reasons(plan) == {
        "VersionVerified": ("True", "Verified"),
        "Promoted": ("True", "Promoted"),
        "RegistrySynced": ("True", "Synced"),
        "Ready": ("False", "RollingOut"),
        "Reconciling": ("True", "RollingOut"),  # kstatus: in progress
        "Stalled": ("False", "NotStalled"),
    }
    assert plan.status["claim"] == "s3://models/etfs/SPY/production/"
    assert [(h["id"], h["from"], h["to"]) for h in plan.status["history"]] == [("m1", "v1.0", "v1.1")]
    assert [e[1] for e in plan.events] == ["Promoted", "RollingOut"]
    # the Deployment now runs the new template: complete once all its pods are ready
    later = view(body(status=plan.status), deployment=live_deployment(plan, ready=2))
    done = decide(later, promoted(copied=False, recorded=False))
    assert done.phase == "Ready" and reasons(done)["Ready"] == ("True", "RolloutComplete")
    assert reasons(done)["Reconciling"][0] == reasons(done)["Stalled"][0] == "False"  # kstatus: Current
    assert done.events == [("Normal", "Ready", "2/2 pods serve v1.1")]
    assert [h["id"] for h in done.status["history"]] == ["m1"]  # the same move is not added twice


def test_ready_counts_only_pods_of_the_target_version() -> None:
    plan = decide(view(), promoted())
    rolling = view(body(status=plan.status), deployment=live_deployment(plan, ready=2, updated=1), target_ready=0)
    again = decide(rolling, promoted(copied=False, recorded=False))
    assert again.phase == "RollingOut" and again.status["readyReplicas"] == 0
    ready = next(c for c in again.status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "0/2 pods ready with v1.1"


def test_a_deployment_event_after_the_promotion_reads_no_s3() -> None:
    plan = decide(view(), promoted())
    settled = body(status={**plan.status, "observedGeneration": 3})
    assert store_wanted(view(settled, rollout_only=True)) is None
    assert isinstance(store_wanted(view(settled)), Promote)  # the timer and spec changes always check
    assert decide(view(settled, rollout_only=True), StoreOutcome()).status["digest"] == DIGEST


@pytest.mark.parametrize(
    ("error", "reason", "retryable"),
    [
        (VersionNotFound("etfs/SPY v1.1 is not published"), "VersionNotFound", True),
        (CorruptVersion("lightgbm_model.txt has 8 bytes"), "DigestMismatch", False),
        (SecretNotFound("Secret trading/s3 does not exist"), "SecretNotFound", True),
        (RegistryError("metadata/model_registry.json is not valid JSON"), "RegistryError", True),
        (ClientError({"Error": {"Code": "NoSuchBucket"}}, "GetObject"), "StorageError", True),
        (ClientError({"Error": {"Code": "SlowDown"}}, "GetObject"), "StorageError", True),
        (EndpointConnectionError(endpoint_url="http://s3"), "StorageError", True),
    ],
)
def test_storage_failures_name_the_reason_and_keep_serving_the_held_version(
    error: Exception, reason: str, retryable: bool
) -> None:
    held = body(status={"activeVersion": "v1.0", "claim": "s3://models/etfs/SPY/production/", "phase": "Ready"})
    plan = decide(view(held), StoreOutcome(error=error))
    assert plan.phase == "Failed" and (plan.retryable, plan.permanent) == (retryable, not retryable)
    assert reasons(plan)["Ready"] == ("False", reason) == reasons(plan)["VersionVerified"]
    assert reasons(plan)["Reconciling" if retryable else "Stalled"] == ("True", reason)
    assert "Still serving v1.0" in plan.message
    assert plan.status["claim"] == HELD  # it keeps its stage
    assert plan.deployment is None and not plan.scale_to_zero  # the running pods are left alone
    assert plan.events == [("Warning", "Failed", plan.message)]


def test_a_missing_bucket_says_so() -> None:
    plan = decide(view(), StoreOutcome(error=ClientError({"Error": {"Code": "NoSuchBucket"}}, "GetObject")))
    assert "bucket models does not exist" in plan.message


def test_a_broken_registry_or_audit_log_never_holds_the_rollout_back() -> None:
    broken = StoreOutcome(result=PromotionResult(True, True, "v1.1", DIGEST, MOVE), registry_error="not valid JSON")
    plan = decide(view(), broken)
    assert plan.phase == "RollingOut" and plan.deployment is not None
    assert reasons(plan)["RegistrySynced"] == ("False", "RegistryError")
    unrecorded = decide(view(), promoted(recorded=False, audit_error="history is not valid JSON"))
    assert reasons(unrecorded)["RegistrySynced"] == ("False", "RegistryError")
    assert unrecorded.status["history"] == []  # status.history holds only what the audit log holds


HELD = "s3://models/etfs/SPY/production/"


def test_an_invalid_spec_is_permanent_and_serves_nothing_but_keeps_its_stage() -> None:
    typo = body({"stage": "Prod"}, {"claim": HELD, "activeVersion": "v1.0", "replicas": 2})
    plan = decide(view(typo), StoreOutcome())
    assert store_wanted(view(typo)) is None
    assert plan.phase == "Failed" and plan.permanent and plan.scale_to_zero
    assert plan.status["claim"] == HELD and plan.status["replicas"] == 0  # a typo hands no stage over
    assert reasons(plan)["Ready"] == ("False", "InvalidSpec") and "spec.stage" in plan.message
    bad_name = decide(view(body(name="Not_A_Label")), StoreOutcome())
    assert reasons(bad_name)["Ready"] == ("False", "InvalidSpec")


def test_a_claimant_in_conflict_touches_no_s3_and_is_scaled_to_zero() -> None:
    contested = view(rival="trading/spy-old")
    assert store_wanted(contested) is None
    plan = decide(contested, StoreOutcome())
    assert plan.phase == "Conflict" and plan.scale_to_zero and plan.deployment is None
    assert reasons(plan)["Stalled"] == ("True", "Conflict")
    assert reasons(plan)["Ready"] == ("False", "Conflict") and "trading/spy-old" in plan.message
    assert plan.status["claim"] is None
    assert plan.events == [("Warning", "Conflict", plan.message)]


def test_archived_is_recorded_once_per_generation_and_scales_to_zero() -> None:
    archived = view(body({"stage": "Archived"}, {"activeVersion": "v1.1", "phase": "Ready", "claim": HELD}))
    wanted = store_wanted(archived)
    assert isinstance(wanted, RecordArchive) and wanted.entry["id"] == "archive-u1-3"
    assert (wanted.entry["stage"], wanted.entry["from_version"], wanted.entry["to_version"]) == (
        "production", "v1.1", None,
    )  # fmt: skip
    # S3 down: serving goes to zero all the same, the stage stays held until the archive is recorded
    failed = decide(archived, StoreOutcome(error=EndpointConnectionError(endpoint_url="http://s3")))
    assert failed.phase == "Archived" and failed.scale_to_zero and failed.retryable
    assert failed.status["claim"] == HELD and reasons(failed)["RegistrySynced"][0] == "False"
    assert failed.status["history"] == []
    plan = decide(archived, StoreOutcome())
    assert plan.phase == "Archived" and plan.scale_to_zero and plan.status["claim"] is None
    assert reasons(plan)["Ready"] == ("False", "Archived")
    assert [h["id"] for h in plan.status["history"]] == ["archive-u1-3"]
    assert store_wanted(view(body({"stage": "Archived"}, plan.status))) is None  # recorded: never again


def test_archiving_what_held_no_stage_records_nothing() -> None:
    never_held = view(body({"stage": "Archived"}, {"phase": "Conflict", "activeVersion": "v1.0"}))
    assert store_wanted(never_held) is None
    plan = decide(never_held, StoreOutcome())
    assert plan.phase == "Archived" and plan.scale_to_zero and plan.status["history"] == []


def test_a_stage_change_gives_no_from_version_of_the_old_stage() -> None:
    moved = view(body({"stage": "Staging"}, {"activeVersion": "v1.1", "claim": HELD}))
    wanted = store_wanted(moved)
    assert isinstance(wanted, Promote) and wanted.last_known is None
    same = store_wanted(view(body(status={"activeVersion": "v1.0", "claim": HELD})))
    assert isinstance(same, Promote) and same.last_known == "v1.0"


def test_an_api_refusal_is_deployment_rejected() -> None:
    plan = decide(view(), promoted())
    refused = deployment_rejected(view(), plan, 422, "spec.template.spec.containers[0].resources: invalid")
    assert refused.phase == "Failed" and refused.permanent and "fix spec.serving" in refused.message
    assert refused.scale_to_zero  # nothing serves a version the TradingModel does not hold
    assert reasons(refused)["Ready"] == ("False", "DeploymentRejected")
    assert reasons(refused)["Stalled"] == ("True", "DeploymentRejected")
    assert reasons(refused)["Reconciling"][0] == "False"
    assert deployment_rejected(view(), plan, 503, "etcd is down").retryable
    forbidden = deployment_rejected(view(), plan, 403, "deployments.apps is forbidden")
    assert forbidden.retryable and not forbidden.scale_to_zero and "lacks a permission" in forbidden.message


def claimant(name: str, created: str, holds: bool = False) -> Claimant:
    return Claimant("trading", name, name, created, holds)


def test_the_holder_keeps_its_stage_whatever_the_age_of_newcomers() -> None:
    a, b = claimant("a", "2026-01-01"), claimant("b", "2026-02-01", holds=True)
    assert rival(a, [a, b]) == b  # A is older but B holds: A (back from Archived) is the one in Conflict
    assert rival(b, [a, b]) is None
    fresh_a, fresh_b = claimant("a", "2026-01-01"), claimant("b", "2026-02-01")
    assert rival(fresh_b, [fresh_a, fresh_b]) == fresh_a  # nobody holds: the oldest takes it
    assert rival(fresh_a, [fresh_a, fresh_b]) is None
    both = [claimant("a", "2026-01-01", True), claimant("b", "2026-02-01", True)]
    assert rival(both[1], both) == both[0] and rival(both[0], both) is None


def test_claims_come_from_the_spec_and_the_status() -> None:
    found = claims_of(body(status={"claim": HELD}))
    assert list(found) == [HELD] and found[HELD].holds
    assert claims_of(body({"stage": "Archived"})) == {}
    assert claims_of(body({"stage": "Prod"})) == {}
    assert claims_of(body(deletionTimestamp=NOW)) == {}
    stock = claims_of(body({"assetClass": "stock", "ticker": "AAPL", "tickers": ["MSFT"]}))
    assert list(stock) == ["s3://models/stocks/universal/production/"] and not stock[next(iter(stock))].holds
    # a holder keeps its stage while archived, after a typo or while moving to another stage
    for change in ({"stage": "Archived"}, {"stage": "Prod"}, {"stage": "Staging"}):
        still = claims_of(body(change, {"claim": HELD}))
        assert still[HELD].holds, change


def test_a_rollout_past_its_progress_deadline_is_stalled_and_keeps_the_old_pods() -> None:
    plan = decide(view(body(status={"activeVersion": "v1.0"})), promoted())
    stuck = live_deployment(plan, ready=2, updated=1)  # the old pods ready, the new one is not
    said = 'ReplicaSet "spy-production-abc" has timed out progressing.'
    stuck["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": said}
    ]
    stalled = decide(view(body(status=plan.status), deployment=stuck, target_ready=0), promoted(False, False))
    assert stalled.phase == "Failed" and not stalled.scale_to_zero
    assert reasons(stalled)["Ready"] == ("False", "ProgressDeadlineExceeded")
    assert reasons(stalled)["Stalled"] == ("True", "ProgressDeadlineExceeded")  # kstatus: Failed
    assert reasons(stalled)["Reconciling"][0] == "False"
    message = next(c["message"] for c in stalled.status["conditions"] if c["type"] == "Ready")
    assert "v1.1 made no progress for 600 s" in message and "0/2 new pods ready" in message and said in message
    assert "2 pod(s) of v1.0 keep serving" in message
    assert [e[:2] for e in stalled.events] == [("Warning", "ProgressDeadlineExceeded")]
    assert stalled.deployment is not None and stalled.deployment["spec"]["replicas"] == 2  # nothing scaled down
    # reported once: the next pass over the same stall posts no Event again
    again = decide(view(body(status=stalled.status), deployment=stuck, target_ready=0), promoted(False, False))
    assert again.events == [] and reasons(again)["Ready"] == ("False", "ProgressDeadlineExceeded")
    # the pods become ready after all: Ready, not stuck in Failed
    stuck["status"].update(updatedReplicas=2, readyReplicas=2, conditions=[])
    healed = decide(view(body(status=stalled.status), deployment=stuck), promoted(False, False))
    assert healed.phase == "Ready"


def test_a_condition_about_an_earlier_spec_is_no_stall_of_this_one() -> None:
    plan = decide(view(), promoted())
    stuck = live_deployment(plan, ready=0, updated=0)
    stuck["metadata"]["generation"] = 2  # our write, not observed by the controller yet
    stuck["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
    rolling = decide(view(body(status=plan.status), deployment=stuck, target_ready=0), promoted(False, False))
    assert rolling.phase == "RollingOut"


def test_the_disruption_budget_follows_the_replicas_and_the_network_policy_is_always_there() -> None:
    two = decide(view(), promoted())
    assert sorted(o["kind"] for o in two.extras) == ["NetworkPolicy", "PodDisruptionBudget"] and not two.unwanted
    one = decide(view(body({"serving": {"replicas": 1}})), promoted())
    assert [o["kind"] for o in one.extras] == ["NetworkPolicy"]
    assert one.unwanted == []  # never had two replicas: no request spent on looking for a budget
    scaled_down = decide(view(body({"serving": {"replicas": 1}}, status=two.status)), promoted())
    assert scaled_down.unwanted == [("policy/v1", "PodDisruptionBudget")]


def test_a_deployment_of_an_older_operator_keeps_its_selector_everywhere() -> None:
    legacy = {"app.kubernetes.io/name": "tradingmodel-serving", "app.kubernetes.io/instance": "spy-production"}
    plan = decide(view(), promoted())
    live = live_deployment(plan, ready=2)
    live["spec"] = {**live["spec"], "selector": {"matchLabels": legacy}}
    again = decide(view(body(status=plan.status), deployment=live), promoted(False, False))
    assert again.deployment is not None and again.service is not None
    assert again.deployment["spec"]["selector"]["matchLabels"] == again.service["spec"]["selector"] == legacy
    assert all(o["spec"].get("selector", o["spec"].get("podSelector")) == {"matchLabels": legacy} for o in again.extras)
