"""One level-based pass over a TradingModel: compute the desired state from the spec and converge.

Every trigger (create, update, resume, the drift timer, a Deployment status change) runs this
same function; running it twice changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from kubernetes.client.rest import ApiException

from model_store.errors import CorruptVersion, RegistryError, StoreError, VersionNotFound
from model_store.layout import InvalidName
from model_store.promotion import PromotionResult, promote
from model_store.publish import utc_now
from model_store.registry import record_once, sync_registries
from model_store.s3 import error_code, is_missing_bucket
from trading_operator import GROUP, KIND, VERSION
from trading_operator.builders import SPEC_HASH_ANNOTATION, build_deployment, build_service, rollout_state
from trading_operator.config import OperatorConfig
from trading_operator.kube import KubeApi
from trading_operator.spec import InvalidSpec, TradingModelSpec, check_name, parse_spec
from trading_operator.status import (
    ARCHIVED,
    CONFLICT,
    FAILED,
    READY,
    ROLLING_OUT,
    append_history,
    condition,
    set_condition,
)

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (body, Normal|Warning, reason, message)
S3Factory = Callable[[TradingModelSpec, str], Any]  # (spec, namespace) -> boto3 client


class SecretNotFound(StoreError):
    retryable = True


@dataclass
class Deps:
    kube: KubeApi
    s3_for: S3Factory
    config: OperatorConfig
    emit: EventSink
    now: Callable[[], str] = utc_now


@dataclass
class Outcome:
    phase: str
    message: str = ""
    retryable: bool = False  # a failure that waiting may heal
    permanent: bool = False  # a failure only a spec change fixes
    changed: list[str] = field(default_factory=list)


_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def reconcile(
    namespace: str, name: str, deps: Deps, rollout_only: bool = False, deep: bool = False
) -> Outcome | None:
    """Converge one TradingModel; None when it no longer exists.

    `rollout_only` (for Deployment events) trusts S3 as last verified for this generation and
    only refreshes the rollout; the drift timer and spec changes always check S3."""
    with _lock_for(namespace, name):
        body = deps.kube.get_tradingmodel(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        return _reconcile(body, deps, rollout_only, deep)


def _already_promoted(old: dict[str, Any], model: TradingModelSpec, generation: int) -> PromotionResult | None:
    """The promotion this generation already completed, as the status records it."""
    promoted = condition(old.get("conditions") or [], "Promoted")
    if (
        old.get("observedGeneration") == generation
        and old.get("activeVersion") == model.version
        and old.get("digest")
        and promoted is not None
        and promoted.get("status") == "True"
    ):
        return PromotionResult(False, False, model.version, old["digest"], None)
    return None


def _reconcile(body: dict[str, Any], deps: Deps, rollout_only: bool = False, deep: bool = False) -> Outcome:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation") or 1)
    old = dict(body.get("status") or {})
    status = _Status(old, generation, deps.now(), deps.config.history_limit)

    try:
        check_name(name)
        model = parse_spec(body.get("spec") or {})
    except InvalidSpec as exc:
        status.set("Ready", False, "InvalidSpec", f"{exc}; fix the TradingModel spec")
        return _finish(body, status, Outcome(FAILED, str(exc), permanent=True), deps)

    owner = _claim_owner(body, model, deps.kube.list_tradingmodels())
    if owner is not None:
        message = (
            f"{model.location.stage_prefix(model.s3_stage) if not model.archived else model.location.root} "
            f"is already managed by TradingModel {owner}; this one changes nothing until that one "
            "is archived or deleted"
        )
        status.set("Promoted", False, "Conflict", message)
        status.set("Ready", False, "Conflict", message)
        return _finish(body, status, Outcome(CONFLICT, message), deps)

    if model.archived:
        try:
            return _archive(body, model, status, deps)
        except ApiException as exc:
            return _finish(body, status, _api_failure(exc, status), deps)

    known = _already_promoted(old, model, generation) if rollout_only else None
    try:
        s3 = deps.s3_for(model, namespace) if known is None else None
        result = known or promote(
            s3,
            model.bucket,
            model.location,
            model.version,
            model.s3_stage,
            actor=f"operator:{namespace}/{name}",
            last_known=old.get("activeVersion"),
            recorded=frozenset(h.get("id") for h in old.get("history") or [] if h.get("id")),
            deep=deep,
        )
    except (StoreError, InvalidName, ClientError, BotoCoreError) as exc:
        return _finish(body, status, _storage_failure(exc, model, status), deps)

    status.set("VersionVerified", True, "Verified", f"{model.version} matches its manifest ({result.digest[:19]}…)")
    prefix = model.location.stage_prefix(model.s3_stage)
    status.set("Promoted", True, "Promoted", f"s3://{model.bucket}/{prefix} holds {model.version}")
    outcome = Outcome(ROLLING_OUT)
    _record_version(body, model, result, status, deps, outcome)
    if s3 is not None and result.stage_manifest is not None:
        _sync_registries(s3, model, result, status)

    image, port = deps.config.serving_image, deps.config.serving_port
    try:
        deployment = _apply_owned(
            body, build_deployment(name, namespace, model, result.digest, image, port), deps, outcome
        )
        _apply_owned(body, build_service(name, namespace, model, port), deps, outcome)
    except ApiException as exc:
        return _finish(body, status, _api_failure(exc, status), deps)

    desired, ready, complete = rollout_state(deployment)
    status.values.update(replicas=desired, readyReplicas=ready)
    if complete:
        outcome.phase = READY
        message = f"{ready}/{desired} pods serve {model.version}"
        if condition(old.get("conditions") or [], "Ready") is None or old.get("phase") != READY:
            deps.emit(body, "Normal", "Ready", message)
        status.set("Ready", True, "RolloutComplete", message)
    else:
        status.set("Ready", False, "RollingOut", f"{ready}/{desired} pods ready with {model.version}")
    return _finish(body, status, outcome, deps)


def _record_version(
    body: dict[str, Any],
    model: TradingModelSpec,
    result: PromotionResult,
    status: _Status,
    deps: Deps,
    outcome: Outcome,
) -> None:
    old_active = status.old.get("activeVersion")
    if result.copied:
        verb = {"promote": "Promoted", "rollback": "RolledBack", "repair": "Repaired"}[result.action]
        was = f" (was {result.previous_version})" if result.previous_version else ""
        deps.emit(body, "Normal", verb, f"{verb} {model.version} into {model.s3_stage.value}{was}")
        outcome.changed.append(result.action)
    move = result.move
    if move and not result.audit_error:
        status.history(
            {
                "id": move["id"],
                "at": move["at"],
                "action": move["action"],
                "from": move.get("from_version"),
                "to": move["to_version"],
                "stage": model.stage,
                "digest": move["digest"],
            }
        )
    if old_active != model.version:
        status.values.update(previousVersion=old_active, activeVersion=model.version)
    status.values["digest"] = result.digest


def _sync_registries(s3: Any, model: TradingModelSpec, result: PromotionResult, status: _Status) -> None:
    """Level-based: the registries are brought to what the stage holds on every pass; a broken
    registry or audit log is reported, never a reason to hold the rollout back."""
    assert result.stage_manifest is not None
    problem = result.audit_error
    if problem is None:
        try:
            sync_registries(s3, model.bucket, model.location, model.s3_stage, result.stage_manifest, [model.ticker])
        except RegistryError as exc:
            problem = str(exc)
    if problem:
        status.set("RegistrySynced", False, "RegistryError", f"{problem}; retrying, serving is not affected")
    else:
        status.set("RegistrySynced", True, "Synced", "metadata/ registries and the audit log agree with the stage")


def _archive(body: dict[str, Any], model: TradingModelSpec, status: _Status, deps: Deps) -> Outcome:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    outcome = Outcome(ARCHIVED)
    live = deps.kube.get("apps/v1", "Deployment", namespace, name)
    if live is not None and (live.get("spec") or {}).get("replicas") != 0:
        # Dropping our spec hash makes the next non-archived pass write the whole spec again.
        deps.kube.merge_patch(
            live, {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: "archived"}}, "spec": {"replicas": 0}}
        )
        outcome.changed.append("scaled-to-zero")
    # One archive move per generation: its id is derived, so a retry after any failure finds it.
    move_id = f"archive-{body['metadata'].get('uid', name)}-{status.generation}"
    if status.old.get("phase") != ARCHIVED and not any(h.get("id") == move_id for h in status.old.get("history") or []):
        entry = {
            "id": move_id,
            "at": status.now,
            "action": "archive",
            "model": model.location.model_key,
            "ticker": model.ticker,
            "stage": "archived",
            "from_version": status.old.get("activeVersion"),
            "to_version": None,
            "actor": f"operator:{namespace}/{name}",
        }
        try:
            record_once(deps.s3_for(model, namespace), model.bucket, entry)
        except (StoreError, ClientError, BotoCoreError) as exc:
            return _finish(body, status, _storage_failure(exc, model, status), deps)
        status.history(
            {"id": move_id, "at": entry["at"], "action": "archive", "from": entry["from_version"], "to": None}
        )
        deps.emit(body, "Normal", "Archived", "Serving scaled to zero; archived versions are kept")
    status.values.update(replicas=0, readyReplicas=0)
    status.set("Promoted", False, "Archived", "Archived: the stage prefix is left as it was")
    status.set("Ready", False, "Archived", "Archived: serving scaled to zero, archive/ kept")
    return _finish(body, status, outcome, deps)


def _api_failure(exc: ApiException, status: _Status) -> Outcome:
    """The API server refused an owned object: a 4xx other than conflict/throttling will not heal."""
    retryable = exc.status in (409, 429) or (exc.status or 500) >= 500
    detail = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or exc.reason)
    with contextlib.suppress(ValueError, AttributeError):
        detail = json.loads(detail).get("message", detail)
    message = f"the API server refused the serving Deployment/Service ({exc.status}): {detail}"
    if not retryable:
        message += "; fix spec.serving"
    status.set("Ready", False, "DeploymentRejected", message)
    return Outcome(FAILED, message, retryable=retryable, permanent=not retryable)


def _storage_failure(exc: Exception, model: TradingModelSpec, status: _Status) -> Outcome:
    if isinstance(exc, VersionNotFound):
        reason, retryable = "VersionNotFound", True
        message = f"{exc}. Publish it (tmctl publish) or set spec.version to a published one; retrying"
    elif isinstance(exc, CorruptVersion):
        reason, retryable = "DigestMismatch", False
        message = f"refused: {exc}. The stage prefix was not touched; publish a new version"
    elif isinstance(exc, SecretNotFound):
        reason, retryable, message = "SecretNotFound", True, str(exc)
    elif isinstance(exc, RegistryError):
        reason, retryable, message = "RegistryError", True, f"{exc}; retrying"
    elif isinstance(exc, InvalidName):
        reason, retryable, message = "InvalidSpec", False, str(exc)
    elif is_missing_bucket(exc):
        reason, retryable = "StorageError", True
        message = f"bucket {model.bucket} does not exist (spec.storage.bucket, spec.storage.endpoint); retrying"
    elif isinstance(exc, ClientError):
        reason, retryable = "StorageError", True
        message = f"S3 said {error_code(exc) or 'an error'} for bucket {model.bucket}: {exc}; retrying"
    else:
        reason, retryable, message = "StorageError", True, f"S3 is unreachable: {exc}; retrying"
    status.set("VersionVerified", False, reason, message)
    if status.old.get("activeVersion"):
        message += f". Still serving {status.old['activeVersion']}"
    status.set("Ready", False, reason, message)
    return Outcome(FAILED, message, retryable=retryable, permanent=not retryable)


def _finish(body: dict[str, Any], status: _Status, outcome: Outcome, deps: Deps) -> Outcome:
    meta = body["metadata"]
    new = status.render(outcome.phase)
    news = status.old.get("phase") != outcome.phase or _reason(status.old) != _reason(new)
    if outcome.phase in (FAILED, CONFLICT) and news:
        deps.emit(body, "Warning", outcome.phase, outcome.message)
    if _changed(status.old, new):
        deps.kube.patch_tradingmodel_status(meta["namespace"], meta["name"], new)
    return outcome


def _reason(status: dict[str, Any]) -> str | None:
    ready = condition(status.get("conditions") or [], "Ready")
    return ready.get("reason") if ready else None


def _changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return any(old.get(k) != v for k, v in new.items())


class _Status:
    """The status being built in one pass, starting from what the object shows."""

    def __init__(self, old: dict[str, Any], generation: int, now: str, history_limit: int) -> None:
        self.old = old
        self.generation = generation
        self.now = now
        self._limit = history_limit
        self._conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
        self._history: list[dict[str, Any]] = list(old.get("history") or [])
        self.values: dict[str, Any] = {}

    def set(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self._conditions = set_condition(self._conditions, type_, ok, reason, message, self.generation, self.now)

    def history(self, entry: dict[str, Any]) -> None:
        self._history = append_history(self._history, entry, self._limit)

    def render(self, phase: str) -> dict[str, Any]:
        return {
            "observedGeneration": self.generation,
            "phase": phase,
            **self.values,
            "conditions": self._conditions,
            "history": self._history,
        }


def _claim_owner(body: dict[str, Any], model: TradingModelSpec, others: list[dict[str, Any]]) -> str | None:
    """The namespace/name of an older TradingModel that owns the same stage prefix, if any."""
    if model.archived:
        return None

    def rank(obj: dict[str, Any]) -> tuple[str, str, str]:
        m = obj["metadata"]
        return (m.get("creationTimestamp") or "", m.get("namespace") or "", m["name"])

    mine = rank(body)
    for other in others:
        if other["metadata"].get("uid") == body["metadata"].get("uid") and rank(other) == mine:
            continue
        if other["metadata"].get("deletionTimestamp"):
            continue
        try:
            theirs = parse_spec(other.get("spec") or {})
        except InvalidSpec:
            continue
        if not theirs.archived and theirs.claim() == model.claim() and rank(other) < mine:
            return f"{other['metadata'].get('namespace')}/{other['metadata']['name']}"
    return None


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"].get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _apply_owned(body: dict[str, Any], desired: dict[str, Any], deps: Deps, outcome: Outcome) -> dict[str, Any] | None:
    """Create the object, or replace its spec when ours changed; return the live object."""
    desired["metadata"]["ownerReferences"] = [owner_reference(body)]
    meta = desired["metadata"]
    live = deps.kube.get(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
    if live is None:
        created = deps.kube.create(desired)
        outcome.changed.append(f"created {desired['kind']}")
        if desired["kind"] == "Deployment":
            deps.emit(body, "Normal", "RollingOut", f"Created Deployment {meta['name']}")
        return created
    live_hash = (live["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    same_replicas = (live.get("spec") or {}).get("replicas") == desired["spec"].get("replicas")
    if live_hash == meta["annotations"][SPEC_HASH_ANNOTATION] and same_replicas:
        return live
    patched = deps.kube.merge_patch(
        live,
        {
            "metadata": {
                "labels": meta["labels"],
                "annotations": meta["annotations"],
                "ownerReferences": meta["ownerReferences"],
            },
            "spec": desired["spec"],
        },
    )
    outcome.changed.append(f"updated {desired['kind']}")
    if desired["kind"] == "Deployment":
        deps.emit(body, "Normal", "RollingOut", f"Rolling out Deployment {meta['name']}")
    return patched
