"""One reconcile pass as pure decisions: no I/O, unit-tested in milliseconds.

`store_wanted(view)` says what S3 must hold for this TradingModel (a version in a stage, an
archive recorded, or nothing); the thin apply in `reconcile` converges S3 towards it and hands the
outcome to `decide(view, outcome)`, which says what the status, the owned objects and the Events
become. Every condition reason the operator reports is decided here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from model_store.errors import CorruptVersion, RegistryError, StoreError, VersionNotFound
from model_store.layout import InvalidName
from model_store.promotion import PromotionResult
from model_store.s3 import error_code, is_missing_bucket
from pod_contract import ShadowPin
from trading_operator.builders import (
    SPEC_HASH_ANNOTATION,
    build_autoscaler,
    build_deployment,
    build_disruption_budget,
    build_network_policy,
    build_service,
    live_selector,
    progress_deadline_exceeded,
    rollout_state,
    selector_text,
)
from trading_operator.config import OperatorConfig
from trading_operator.shadow import CONDITION as SHADOW
from trading_operator.shadow import ShadowOutcome, known_pin, status_value
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

_VERBS = {"promote": "Promoted", "rollback": "RolledBack", "repair": "Repaired"}
MOVE_EVENTS = frozenset(_VERBS.values())  # the reasons of Events that say what S3 went through


class SecretNotFound(StoreError):
    retryable = True


@dataclass(frozen=True)
class View:
    """What one pass observed of the cluster."""

    body: dict[str, Any]  # the TradingModel
    config: OperatorConfig
    now: str
    rival: str | None = None  # namespace/name of the TradingModel that keeps this one's claim
    deployment: dict[str, Any] | None = None  # the live serving Deployment
    target_ready: int | None = None  # ready pods of the wanted version, counted while a rollout runs
    rollout_only: bool = False  # S3 is as a pass of this generation left it, if the status says it promoted
    deep: bool = False  # hash every stage file against its manifest
    autoscaler: dict[str, Any] | None = None  # the live HorizontalPodAutoscaler (read when one may exist)

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def generation(self) -> int:
        return int(self.body["metadata"].get("generation") or 1)

    @property
    def old(self) -> dict[str, Any]:
        return dict(self.body.get("status") or {})


@dataclass(frozen=True)
class Promote:
    """S3 wanted: the stage prefix holds this version, its move in the audit log."""

    model: TradingModelSpec
    actor: str
    last_known: str | None  # the version this TradingModel last saw in the stage
    recorded: frozenset[str]  # move ids its status shows, known to be in the audit log
    deep: bool
    known_shadow: ShadowPin | None = None  # the challenger the pods were given last (status.shadow)


@dataclass(frozen=True)
class RecordArchive:
    """S3 wanted: the archive of this generation is in the audit log (once)."""

    model: TradingModelSpec
    entry: dict[str, Any]


StoreWanted = Promote | RecordArchive | None


@dataclass(frozen=True)
class StoreOutcome:
    result: PromotionResult | None = None
    error: Exception | None = None
    registry_error: str | None = None
    shadow: ShadowOutcome | None = None  # spec.shadow resolved (None: no spec.shadow, or S3 not read)


@dataclass
class Plan:
    phase: str
    status: dict[str, Any]
    deployment: dict[str, Any] | None = None  # create or replace when its spec hash differs
    service: dict[str, Any] | None = None
    extras: list[dict[str, Any]] = field(default_factory=list)  # more owned objects, written like the Service
    unwanted: list[tuple[str, str]] = field(default_factory=list)  # (apiVersion, kind) owned objects to delete
    autoscaler: dict[str, Any] | None = None  # create or replace when its spec hash differs
    remove_autoscaler: bool = False  # delete the live one: not wanted any more, or serving goes to zero
    scale_to_zero: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (Normal|Warning, reason, message)
    message: str = ""
    retryable: bool = False  # a failure that waiting may heal
    permanent: bool = False  # a failure only a spec change fixes


def parsed(view: View) -> TradingModelSpec | InvalidSpec:
    try:
        check_name(view.name)
        return parse_spec(view.body.get("spec") or {})
    except InvalidSpec as exc:
        return exc


def store_wanted(view: View) -> StoreWanted:
    model = parsed(view)
    if isinstance(model, InvalidSpec) or view.rival:
        return None
    old = view.old
    if model.archived:
        entry = _archive_entry(view, model)
        if not old.get("claim") or _in_history(view, entry["id"]):
            return None  # it held no stage (nothing to record), or the archive is recorded
        return RecordArchive(model, entry)
    if view.rollout_only and _promoted_this_generation(view, model):
        return None
    return Promote(
        model,
        actor=f"operator:{view.namespace}/{view.name}",
        # what this TradingModel saw in this very stage (not in the one it held before a stage change)
        last_known=old.get("activeVersion") if old.get("claim") == model.claim() else None,
        recorded=frozenset(h["id"] for h in old.get("history") or [] if h.get("id")),
        deep=view.deep,
        known_shadow=known_pin(old, model),
    )


def decide(view: View, store: StoreOutcome) -> Plan:
    status = _Status(view)
    model = parsed(view)
    if isinstance(model, InvalidSpec):
        status.set("Ready", False, "InvalidSpec", f"{model}; fix the TradingModel spec")
        status.claim = view.old.get("claim")  # a typo serves nothing, but does not hand the stage over
        status.values.update(replicas=0, readyReplicas=0)
        return _plan(view, status, FAILED, str(model), permanent=True, scale_to_zero=True)
    if view.rival:
        where = model.location.root if model.archived else model.claim()
        message = (
            f"{where} is held by TradingModel {view.rival}; this one serves nothing until that one is "
            "archived or deleted"
        )
        status.set("Promoted", False, "Conflict", message)
        status.set("Ready", False, "Conflict", message)
        status.values.update(replicas=0, readyReplicas=0)
        return _plan(view, status, CONFLICT, message, scale_to_zero=True)
    if model.archived:
        return _archived(view, model, status, store)
    if store.error is not None:
        return _storage_failure(view, model, status, store.error)

    result = store.result or _known_result(view, model)
    if result is None:  # cannot happen: a pass that skips S3 knows the result from the status
        raise ValueError("no promotion result for a serving TradingModel")
    plan_events: list[tuple[str, str, str]] = []
    status.claim = model.claim()
    status.set("VersionVerified", True, "Verified", f"{model.version} matches its manifest ({result.digest[:19]}…)")
    status.set("Promoted", True, "Promoted", f"{model.claim()} holds {model.version}")
    if result.copied:
        verb = _VERBS[result.action]
        was = f" (was {result.previous_version})" if result.previous_version else ""
        plan_events.append(("Normal", verb, f"{verb} {model.version} into {model.s3_stage.value}{was}"))
    move = result.move
    if move and not result.audit_error and (result.changed or store.result is not None):
        status.history(
            {
                "id": move["id"],
                "at": move["at"],
                "action": move["action"],
                "from": move.get("from_version"),
                "to": move["to_version"],
                "stage": move.get("stage", model.s3_stage.value),
                "digest": move["digest"],
            }
        )
    if store.result is not None:
        problem = result.audit_error or store.registry_error
        if problem:
            status.set("RegistrySynced", False, "RegistryError", f"{problem}; retrying, serving is not affected")
        else:
            status.set("RegistrySynced", True, "Synced", "the audit log and the registries in metadata/ agree")
    old_active = view.old.get("activeVersion")
    if old_active != model.version:
        status.values.update(previousVersion=old_active, activeVersion=model.version)
    status.values["digest"] = result.digest
    shadow = _shadow(view, model, store, status, plan_events)

    port, match = view.config.serving_port, live_selector(view.name, view.deployment)
    deployment = build_deployment(
        view.name, view.namespace, model, result.digest, view.config.serving_image, port, shadow, match_labels=match
    )
    service = build_service(view.name, view.namespace, model, port, match_labels=match)
    autoscaler = build_autoscaler(view.name, view.namespace, model)
    live_replicas = ((view.deployment or {}).get("spec") or {}).get("replicas")
    if autoscaler is not None and not live_replicas:
        # A new Deployment (or one back from zero, where an HPA never acts) starts at the minimum.
        deployment["spec"]["replicas"] = autoscaler["spec"]["minReplicas"]
    desired = int(deployment["spec"].get("replicas", live_replicas))
    if needs_write(view.deployment, deployment):
        verb = "Created" if view.deployment is None else "Rolling out"
        plan_events.append(("Normal", "RollingOut", f"{verb} Deployment {view.name} with {model.version}"))
        ready, complete = 0, False
    else:
        _, ready, complete = rollout_state(view.deployment)
        if not complete and view.target_ready is not None:
            ready = view.target_ready
    status.values.update(replicas=desired, readyReplicas=ready)
    if complete:
        message = f"{ready}/{desired} pods serve {model.version}"
        if view.old.get("phase") != READY:
            plan_events.append(("Normal", "Ready", message))
        status.set("Ready", True, "RolloutComplete", message)
        plan = _plan(view, status, READY, message)
    elif (stalled := progress_deadline_exceeded(view.deployment)) and not needs_write(view.deployment, deployment):
        plan = _stalled(view, model, status, (ready, desired), stalled)
    else:
        status.set("Ready", False, "RollingOut", f"{ready}/{desired} pods ready with {model.version}")
        plan = _plan(view, status, ROLLING_OUT)
    plan.deployment, plan.service = deployment, service
    budget = build_disruption_budget(view.name, view.namespace, model, match_labels=match)
    plan.extras = [build_network_policy(view.name, view.namespace, model, port, match_labels=match)]
    if budget is not None:
        plan.extras.append(budget)
    elif may_have_budget(view):
        plan.unwanted.append(("policy/v1", "PodDisruptionBudget"))
    if not view.rollout_only:
        plan.autoscaler, plan.remove_autoscaler = autoscaler, autoscaler is None and view.autoscaler is not None
        plan.status["autoscaler"] = autoscaler["metadata"]["name"] if autoscaler else None
    plan.events[:0] = plan_events
    return plan


def may_have_budget(view: View) -> bool:
    """A budget can exist only where two replicas or more were wanted: the live Deployment's or the
    status' count (written last, so a pass that died before deleting the budget leaves it at 2+).
    Elsewhere no pass spends a request on looking for one."""
    live = int(((view.deployment or {}).get("spec") or {}).get("replicas") or 0)
    return max(live, int(view.old.get("replicas") or 0)) >= 2


def _stalled(view: View, model: TradingModelSpec, status: _Status, counts: tuple[int, int], said: str) -> Plan:
    """The rollout made no progress for progressDeadlineSeconds: kstatus Stalled, a Warning Event.
    Nothing is scaled down: with maxUnavailable 0 the previous pods keep serving; the Deployment
    controller goes on trying, so pods that become ready later still end in Ready."""
    ready, desired = counts
    old = view.old
    previous = old.get("previousVersion") if old.get("activeVersion") == model.version else old.get("activeVersion")
    serving = max(0, rollout_state(view.deployment)[1] - ready)
    still = f"{serving} pod(s) of {previous} keep serving" if previous and serving else "no other pod serves"
    message = (
        f"the rollout of {model.version} made no progress for {_deadline(view)} s: {ready}/{desired} new pods "
        f"ready ({said}); {still}. See why the new pods are not ready (kubectl describe pods -l "
        f"trading.io/version={model.version}; kubectl logs), then fix it or set spec.version back"
    )
    status.set("Ready", False, "ProgressDeadlineExceeded", message)
    plan = _plan(view, status, FAILED, message, permanent=True)
    plan.events = [("Warning", "ProgressDeadlineExceeded", message) if e[1] == FAILED else e for e in plan.events]
    return plan


def _deadline(view: View) -> int:
    return int(((view.deployment or {}).get("spec") or {}).get("progressDeadlineSeconds") or 600)


def _shadow(
    view: View, model: TradingModelSpec, store: StoreOutcome, status: _Status, events: list[tuple[str, str, str]]
) -> ShadowPin | None:
    """The challenger the pods score (status.shadow and the Shadow condition say which and why)."""
    known = known_pin(view.old, model)
    outcome = store.shadow if store.result is not None else None
    if model.shadow is None:
        status.values["shadow"] = None
        status.drop(SHADOW)
        return None
    if outcome is None:  # a rollout pass: S3 was not read; the pods keep what they were given
        status.values["shadow"] = status_value(known)
        return known
    pin = known if outcome.keep_last else outcome.pin
    status.values["shadow"] = status_value(pin)
    before = condition(view.old.get("conditions") or [], SHADOW) or {}
    status.set(SHADOW, outcome.ok, outcome.reason, outcome.message)
    if pin is not None and (known is None or known.digest != pin.digest):
        events.append(("Normal", "Shadowing", outcome.message))
    elif not outcome.ok and before.get("reason") != outcome.reason:
        events.append(("Warning" if outcome.reason != "NoChallenger" else "Normal", outcome.reason, outcome.message))
    return pin


def deployment_rejected(view: View, plan: Plan, code: int, detail: str) -> Plan:
    """The API server refused an owned object: a 4xx other than conflict/throttling will not heal."""
    retryable = code in (403, 409, 429) or code >= 500
    message = f"the API server refused the serving Deployment/Service ({code}): {detail}"
    if code == 403:
        message += "; the operator lacks a permission (manifests/rbac) or an admission policy refused it: retrying"
    elif not retryable:
        message += "; fix spec.serving. Serving is scaled to zero until then"
    conditions = set_condition(
        plan.status.get("conditions") or [], "Ready", False, "DeploymentRejected", message, view.generation, view.now
    )
    conditions = kstatus_conditions(conditions, FAILED, message, retryable, not retryable, view.generation, view.now)
    events = [e for e in plan.events if e[1] != "Ready"]
    if view.old.get("phase") != FAILED:
        events.append(("Warning", FAILED, message))
    status = dict(plan.status, phase=FAILED, conditions=conditions)
    return Plan(
        FAILED, status, events=events, message=message, retryable=retryable, permanent=not retryable,
        scale_to_zero=not retryable, remove_autoscaler=not retryable and view.autoscaler is not None,
    )  # fmt: skip


def _archived(view: View, model: TradingModelSpec, status: _Status, store: StoreOutcome) -> Plan:
    """Serving goes to zero at once; the stage it held is released once the archive is recorded."""
    held = view.old.get("claim")
    entry = _archive_entry(view, model)
    events = []
    message = ""
    if store.error is not None:
        message = f"the archive is not in the audit log yet ({store.error}); retrying, serving is scaled to zero"
        status.set("RegistrySynced", False, "RegistryError", message)
        status.claim = held
    else:
        if held and not _in_history(view, entry["id"]):
            status.history({"id": entry["id"], "at": entry["at"], "action": "archive", "stage": entry["stage"],
                            "from": entry["from_version"], "to": None})  # fmt: skip
        if view.old.get("phase") != ARCHIVED:
            events.append(("Normal", "Archived", "Serving scaled to zero; archived versions are kept"))
    status.values.update(replicas=0, readyReplicas=0)
    status.set("Promoted", False, "Archived", "Archived: the stage prefix is left as it was")
    status.set("Ready", False, "Archived", "Archived: serving scaled to zero, archive/ kept")
    plan = _plan(view, status, ARCHIVED, message, retryable=store.error is not None, scale_to_zero=True)
    plan.events[:0] = events
    return plan


def _archive_entry(view: View, model: TradingModelSpec) -> dict[str, Any]:
    # One archive per generation: the id is derived, so a retry after any failure finds it.
    held = str(view.old.get("claim") or "")
    return {
        "id": f"archive-{view.body['metadata'].get('uid') or view.name}-{view.generation}",
        "at": view.now,
        "action": "archive",
        "model": model.location.model_key,
        "ticker": model.ticker,
        "stage": held.rstrip("/").rsplit("/", 1)[-1] if held else None,  # the stage it leaves
        "from_version": view.old.get("activeVersion"),
        "to_version": None,
        "actor": f"operator:{view.namespace}/{view.name}",
    }


def _in_history(view: View, move_id: str) -> bool:
    return any(h.get("id") == move_id for h in view.old.get("history") or [])


def _promoted_this_generation(view: View, model: TradingModelSpec) -> bool:
    return promoted_this_generation(view.body)


def promoted_this_generation(body: dict[str, Any]) -> bool:
    """Its status says a pass of its current generation promoted its version (S3 is as it left it)."""
    old = body.get("status") or {}
    promoted = condition(old.get("conditions") or [], "Promoted")
    return (
        old.get("observedGeneration") == int((body.get("metadata") or {}).get("generation") or 1)
        and old.get("activeVersion") == (body.get("spec") or {}).get("version")
        and bool(old.get("digest"))
        and promoted is not None
        and promoted.get("status") == "True"
    )


def _known_result(view: View, model: TradingModelSpec) -> PromotionResult | None:
    if not _promoted_this_generation(view, model):
        return None
    return PromotionResult(False, False, model.version, view.old["digest"], None)


def needs_write(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """The live object lacks our spec (by its hash annotation) or our replica count."""
    if live is None:
        return True
    live_hash = (live["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    # No replicas in ours: an autoscaled Deployment, whose replica count is the HPA's (or anyone's).
    wanted = desired["spec"].get("replicas")
    same_replicas = "replicas" not in desired["spec"] or (live.get("spec") or {}).get("replicas") == wanted
    return not (live_hash == desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION] and same_replicas)


def _storage_failure(view: View, model: TradingModelSpec, status: _Status, exc: Exception) -> Plan:
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
    status.claim = view.old.get("claim")  # it keeps the stage it holds while it cannot change it
    if view.old.get("activeVersion"):
        message += f". Still serving {view.old['activeVersion']}"
    status.set("Ready", False, reason, message)
    return _plan(view, status, FAILED, message, retryable=retryable, permanent=not retryable)


def _plan(
    view: View,
    status: _Status,
    phase: str,
    message: str = "",
    *,
    retryable: bool = False,
    permanent: bool = False,
    scale_to_zero: bool = False,
) -> Plan:
    status.kstatus(phase, message, retryable, permanent)
    new = status.render(phase)
    events = []
    news = view.old.get("phase") != phase or _reason(view.old) != _reason(new)
    if phase in (FAILED, CONFLICT) and news:
        events.append(("Warning", phase, message))
    if scale_to_zero:  # an HPA would hold replicas at its minimum: serving zero means no HPA
        new["autoscaler"] = None
    return Plan(
        phase, new, scale_to_zero=scale_to_zero, events=events, message=message, retryable=retryable,
        permanent=permanent, remove_autoscaler=scale_to_zero and view.autoscaler is not None,
    )  # fmt: skip


def kstatus_conditions(
    conditions: list[dict[str, Any]],
    phase: str,
    message: str,
    retryable: bool,
    permanent: bool,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """kstatus' abnormal-true conditions, so Flux (and any kstatus reader) sees progress and dead ends."""
    reconciling = phase == ROLLING_OUT or (phase == FAILED and retryable)
    stalled = phase == CONFLICT or (phase == FAILED and permanent)
    why = str((condition(conditions, "Ready") or {}).get("reason") or phase)
    for type_, on, off in (("Reconciling", reconciling, "Settled"), ("Stalled", stalled, "NotStalled")):
        conditions = set_condition(conditions, type_, on, why if on else off, message if on else "", generation, now)
    return conditions


def _reason(status: dict[str, Any]) -> str | None:
    ready = condition(status.get("conditions") or [], "Ready")
    return ready.get("reason") if ready else None


def status_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return any(old.get(k) != v for k, v in new.items())


class _Status:
    """The status being built in one pass, starting from what the object shows."""

    def __init__(self, view: View) -> None:
        old = view.old
        self.old = old
        self.generation = view.generation
        self.now = view.now
        self._limit = view.config.history_limit
        self._conditions: list[dict[str, Any]] = list(old.get("conditions") or [])
        self._history: list[dict[str, Any]] = list(old.get("history") or [])
        self.values: dict[str, Any] = {}
        self.claim: str | None = None  # the stage this TradingModel holds after the pass
        self.selector = selector_text(view.name)

    def kstatus(self, phase: str, message: str, retryable: bool, permanent: bool) -> None:
        self._conditions = kstatus_conditions(
            self._conditions, phase, message, retryable, permanent, self.generation, self.now
        )

    def set(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self._conditions = set_condition(self._conditions, type_, ok, reason, message, self.generation, self.now)

    def drop(self, type_: str) -> None:
        self._conditions = [c for c in self._conditions if c.get("type") != type_]

    def history(self, entry: dict[str, Any]) -> None:
        self._history = append_history(self._history, entry, self._limit)

    def render(self, phase: str) -> dict[str, Any]:
        return {
            "observedGeneration": self.generation,
            "phase": phase,
            "selector": self.selector,  # the scale subresource's labelSelectorPath
            **self.values,
            "claim": self.claim,
            "conditions": self._conditions,
            "history": self._history,
        }
