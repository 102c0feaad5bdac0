"""Which challenger a production TradingModel's pods score in shadow (spec.shadow), read from S3.

`resolve` turns spec.shadow into a pin (version, digest, fraction) the pod contract carries, or
says in words why there is none. A challenger is a published version like any other: its
manifest must name this model and version, and the first time a pin is seen its files are
verified (sizes, sha256, a servable model); the pods verify the digest again when they load it.
A challenger problem never touches the champion: the pods serve without a shadow, or keep the
last pin while S3 cannot be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from model_store.errors import StoreError
from model_store.layout import InvalidName, Stage
from model_store.promotion import archived_manifest, stage_manifest, verify_version
from pod_contract import ShadowPin
from trading_operator.spec import TradingModelSpec

CONDITION = "Shadow"  # the status condition that says what the pods score in shadow


@dataclass(frozen=True)
class ShadowOutcome:
    pin: ShadowPin | None  # what the pods score; None: no shadow
    ok: bool  # the condition's status
    reason: str  # Scoring, NoChallenger, ChallengerNotServable, ShadowUnreadable
    message: str
    keep_last: bool = False  # S3 could not be read: keep the pin the status shows (no needless rollout)


def resolve(s3: Any, model: TradingModelSpec, known: ShadowPin | None) -> ShadowOutcome | None:
    """The challenger of `model` (None without spec.shadow). `known` is the pin the status shows:
    a pin seen before is checked by its manifest only, a new one is verified file by file."""
    shadow = model.shadow
    if shadow is None:
        return None
    location = model.location
    try:
        version = shadow.version
        if version is None:  # fromStage: Staging
            staged = stage_manifest(s3, model.bucket, location, Stage.STAGING)
            if staged is None:
                return ShadowOutcome(
                    None, False, "NoChallenger", f"{location.model_key} Staging holds no version yet: nothing to score"
                )
            version = staged.version
        if version == model.version:
            return ShadowOutcome(
                None, False, "NoChallenger",
                f"{shadow.describe()} is {version}, the version production serves: no challenger to score",
            )  # fmt: skip
        manifest = archived_manifest(s3, model.bucket, location, version)
        pin = ShadowPin(version, manifest.digest, shadow.fraction)
        if known is None or (known.version, known.digest) != (pin.version, pin.digest):
            verify_version(s3, model.bucket, location, version)
    except (StoreError, InvalidName) as exc:  # not published, corrupt, not a servable model
        return ShadowOutcome(
            None, False, "ChallengerNotServable",
            f"the shadow challenger ({shadow.describe()}) cannot be scored: {exc}. Production serves as before, "
            "without a shadow; publish the version or fix spec.shadow",
        )  # fmt: skip
    except (ClientError, BotoCoreError) as exc:
        return _unreadable(known, f"S3: {exc}")
    share = f"{shadow.fraction:.0%} of" if shadow.fraction < 1 else "every"
    return ShadowOutcome(
        pin, True, "Scoring", f"the pods score {version} ({pin.digest[:19]}…) in shadow on {share} request"
    )


def _unreadable(known: ShadowPin | None, detail: str) -> ShadowOutcome:
    keeps = f"; the pods keep scoring {known.version}" if known else ""
    message = f"cannot read the shadow challenger: {detail}; retrying{keeps}"
    return ShadowOutcome(known, False, "ShadowUnreadable", message, keep_last=True)


def known_pin(status: dict[str, Any], model: TradingModelSpec) -> ShadowPin | None:
    """The pin the status shows (what the pods were given last), with the spec's fraction."""
    shown = status.get("shadow")
    if model.shadow is None or not isinstance(shown, dict) or not shown.get("version") or not shown.get("digest"):
        return None
    return ShadowPin(str(shown["version"]), str(shown["digest"]), model.shadow.fraction)


def status_value(pin: ShadowPin | None) -> dict[str, Any] | None:
    return {"version": pin.version, "digest": pin.digest, "fraction": pin.fraction} if pin else None
