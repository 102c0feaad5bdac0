"""spec.shadow from the operator's side: resolved against a real S3 (moto over HTTP), decided purely
into the status, the Shadow condition and the pods' environment (the pod contract)."""

from __future__ import annotations

from typing import Any

import pytest
from test_decide import DIGEST, body, promoted, reasons, view

from devstack.demo_model import DemoModel
from helpers.serving import publish
from model_store.layout import ModelLocation
from pod_contract import Env, ShadowPin, read_pod_model
from trading_operator.decide import Promote, StoreOutcome, decide, store_wanted
from trading_operator.shadow import ShadowOutcome, resolve
from trading_operator.spec import InvalidSpec, parse_spec

SPEC = {"ticker": "SPY", "version": "v1.0", "stage": "Production", "storage": {"bucket": "models"}}


def env_of(plan: Any) -> dict[str, str]:
    container = plan.deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_resolve_follows_staging_and_verifies_a_new_pin(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    v1 = publish(s3, bucket, "SPY", "etf", demo_v1)
    following = parse_spec({**SPEC, "storage": {"bucket": bucket}, "shadow": {"fromStage": "Staging"}})
    nothing = resolve(s3, following, None)
    assert nothing == ShadowOutcome(
        None, False, "NoChallenger", "etfs/SPY Staging holds no version yet: nothing to score"
    )

    v2 = publish(s3, bucket, "SPY", "etf", demo_v2, stage="staging")
    found = resolve(s3, following, None)
    assert found is not None and found.ok and found.pin == ShadowPin("v1.1", v2.digest, 1.0)
    assert "score v1.1" in found.message

    publish(s3, bucket, "SPY", "etf", demo_v2, stage="production")  # promoted: staging now equals production
    promoted_spec = parse_spec({**SPEC, "version": "v1.1", "storage": {"bucket": bucket},
                                "shadow": {"fromStage": "Staging"}})  # fmt: skip
    same = resolve(s3, promoted_spec, found.pin)
    assert same is not None and same.pin is None and same.reason == "NoChallenger" and "v1.1" in same.message
    assert v1.digest != v2.digest


def test_resolve_refuses_an_unpublished_or_corrupt_challenger(
    s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    publish(s3, bucket, "SPY", "etf", demo_v1)
    missing = parse_spec({**SPEC, "storage": {"bucket": bucket}, "shadow": {"version": "v1.3"}})
    outcome = resolve(s3, missing, None)
    assert outcome is not None and outcome.pin is None and outcome.reason == "ChallengerNotServable"
    assert "v1.3 is not published" in outcome.message and "Published versions: v1.0" in outcome.message

    v2 = publish(s3, bucket, "SPY", "etf", demo_v2, stage=None)
    location = ModelLocation.of("SPY", "etf")
    s3.put_object(Bucket=bucket, Key=location.archive_prefix("v1.1") + "lightgbm_model.txt", Body=b"tree=0\n")
    pinned = parse_spec({**SPEC, "storage": {"bucket": bucket}, "shadow": {"version": "v1.1", "fraction": 0.5}})
    corrupt = resolve(s3, pinned, None)  # a new pin: every file is verified
    assert corrupt is not None and corrupt.pin is None and corrupt.reason == "ChallengerNotServable"
    assert "lightgbm_model.txt" in corrupt.message
    known = resolve(s3, pinned, ShadowPin("v1.1", v2.digest, 0.5))  # a pin seen before: its manifest only
    assert known is not None and known.pin == ShadowPin("v1.1", v2.digest, 0.5)


@pytest.mark.parametrize(
    ("shadow", "stage", "error"),
    [
        ({"version": "v1.3", "fromStage": "Staging"}, "Production", "exactly one of version"),
        ({"version": "v1.0"}, "Production", "the version production serves"),
        ({"version": "v1.3"}, "Staging", "for a Production TradingModel"),
        ({"fromStage": "Production"}, "Production", "fromStage must be Staging"),
        ({"version": "v1.3", "fraction": 1.5}, "Production", "from 0 to 1"),
    ],
)
def test_a_bad_shadow_spec_says_what_to_fix(shadow: dict[str, Any], stage: str, error: str) -> None:
    with pytest.raises(InvalidSpec, match=error):
        parse_spec({**SPEC, "stage": stage, "shadow": shadow})


def test_the_pods_get_the_pin_and_the_status_says_why() -> None:
    spec = {"version": "v1.1", "shadow": {"fromStage": "Staging", "fraction": 0.25}}
    first = view(body(spec))
    wanted = store_wanted(first)
    assert isinstance(wanted, Promote) and wanted.known_shadow is None
    pin = ShadowPin("v1.2", "sha256:" + "cd" * 32, 0.25)
    scoring = ShadowOutcome(pin, True, "Scoring", "the pods score v1.2")
    plan = decide(first, StoreOutcome(result=promoted().result, shadow=scoring))
    assert plan.status["shadow"] == {"version": "v1.2", "digest": pin.digest, "fraction": 0.25}
    assert reasons(plan)["Shadow"] == ("True", "Scoring")
    assert ("Normal", "Shadowing", "the pods score v1.2") in plan.events
    env = env_of(plan)
    assert (env["MODEL_VERSION"], env["MODEL_DIGEST"]) == ("v1.1", DIGEST)
    assert (env["MODEL_SHADOW_VERSION"], env["MODEL_SHADOW_DIGEST"], env["MODEL_SHADOW_FRACTION"]) == (
        "v1.2", pin.digest, "0.25",
    )  # fmt: skip
    assert read_pod_model(Env(env)).shadow == pin  # what the pod reads back is what the operator meant

    # S3 unreadable: the pods keep the pin they have (no rollout), the condition says so
    again = view(body(spec, status=plan.status))
    wanted = store_wanted(again)
    assert isinstance(wanted, Promote) and wanted.known_shadow == pin
    unreadable = ShadowOutcome(pin, False, "ShadowUnreadable", "cannot read", keep_last=True)
    kept = decide(again, StoreOutcome(result=promoted(copied=False).result, shadow=unreadable))
    assert env_of(kept) == env and reasons(kept)["Shadow"] == ("False", "ShadowUnreadable")

    # the challenger became production's version: no shadow, the pods lose it
    gone = ShadowOutcome(None, False, "NoChallenger", "Staging holds v1.1, the version production serves")
    plain = decide(again, StoreOutcome(result=promoted(copied=False).result, shadow=gone))
    assert plain.status["shadow"] is None and "MODEL_SHADOW_VERSION" not in env_of(plain)
    assert ("Normal", "NoChallenger", gone.message) in plain.events

    # spec.shadow removed: no condition, no pin
    removed = decide(view(body({"version": "v1.1"}, status=plan.status)), promoted(copied=False))
    assert "Shadow" not in reasons(removed) and removed.status["shadow"] is None


def test_a_rollout_pass_reads_no_s3_and_keeps_the_pin() -> None:
    spec = {"version": "v1.1", "shadow": {"version": "v1.2"}}
    pin = ShadowPin("v1.2", "sha256:" + "cd" * 32, 1.0)
    first = decide(
        view(body(spec)), StoreOutcome(result=promoted().result, shadow=ShadowOutcome(pin, True, "Scoring", "s"))
    )
    rollout = view(body(spec, status=first.status), rollout_only=True)
    assert store_wanted(rollout) is None
    plan = decide(rollout, StoreOutcome())
    assert env_of(plan)["MODEL_SHADOW_DIGEST"] == pin.digest and "MODEL_SHADOW_FRACTION" not in env_of(plan)


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"MODEL_SHADOW_VERSION": "v1.2"}, "pin the shadow challenger together"),
        ({"MODEL_SHADOW_VERSION": "1.2", "MODEL_SHADOW_DIGEST": DIGEST}, "MODEL_SHADOW_VERSION"),
        ({"MODEL_SHADOW_VERSION": "v1.2", "MODEL_SHADOW_DIGEST": "abc"}, "is not a version digest"),
        ({"MODEL_SHADOW_VERSION": "v1.1", "MODEL_SHADOW_DIGEST": DIGEST}, "the served version itself"),
        ({"MODEL_SHADOW_VERSION": "v1.2", "MODEL_SHADOW_DIGEST": DIGEST, "MODEL_SHADOW_FRACTION": "2"},
         "MODEL_SHADOW_FRACTION must be between 0 and 1"),
    ],
)  # fmt: skip
def test_the_pod_refuses_a_shadow_it_cannot_use(extra: dict[str, str], error: str) -> None:
    from pod_contract import ConfigError

    env = {"S3_BUCKET": "models", "MODEL_TICKER": "SPY", "MODEL_VERSION": "v1.1", "MODEL_DIGEST": DIGEST, **extra}
    with pytest.raises(ConfigError, match=error):
        read_pod_model(Env(env))
