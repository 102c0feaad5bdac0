"""The thin apply of one level-based pass over a TradingModel.

Every trigger (create, update, resume, the drift timers, a Deployment status change) runs
`reconcile`: observe the TradingModel and its Deployment, ask `decide.store_wanted` what S3 must
hold, converge S3 (the model store does the moves), ask `decide.decide` what the status and the
owned objects become, and write that. Running it twice changes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from kubernetes.client.rest import ApiException

from model_store.errors import RegistryError, StoreError
from model_store.layout import InvalidName
from model_store.promotion import promote
from model_store.publish import utc_now
from model_store.registry import record_once, sync_registries
from trading_operator import GROUP, KIND, VERSION, metrics
from trading_operator.bodies import Bodies
from trading_operator.builders import DROPPED_LABELS, SPEC_HASH_ANNOTATION, live_selector, rollout_state
from trading_operator.claims import Claimant, claims_of, rival, spec_claim
from trading_operator.config import OperatorConfig
from trading_operator.decide import (
    MOVE_EVENTS,
    Plan,
    Promote,
    RecordArchive,
    StoreOutcome,
    View,
    decide,
    deployment_rejected,
    may_have_budget,
    needs_write,
    promoted_this_generation,
    status_changed,
    store_wanted,
)
from trading_operator.kube import KubeApi
from trading_operator.shadow import resolve as resolve_shadow
from trading_operator.status import append_history
from trading_operator.storage import S3Factory

log = logging.getLogger(__name__)
AUTOSCALING = "autoscaling/v2"

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (body, Normal|Warning, reason, message)
Claims = Mapping[str, Iterable[Claimant]]  # claim -> claimants (kopf's index)
_STORE_ERRORS = (StoreError, InvalidName, ClientError, BotoCoreError)


@dataclass
class Deps:
    kube: KubeApi
    s3_for: S3Factory
    config: OperatorConfig
    emit: EventSink
    now: Callable[[], str] = utc_now
    bodies: Bodies = field(default_factory=Bodies)  # the TradingModels as last seen or written


_locks: dict[tuple[str, str], threading.Lock] = {}
# The owned objects other than the Deployment (which every pass reads) as this process last wrote
# or read them: (namespace, owner) -> {(apiVersion, kind): (what _mark gives, when: monotonic)}.
_written: dict[tuple[str, str], dict[tuple[str, str], tuple[tuple[Any, ...], float]]] = {}
_locks_guard = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def reconcile(
    namespace: str,
    name: str,
    deps: Deps,
    claims: Claims,
    *,
    rollout_only: bool = False,
    deep: bool = False,
    deployment: dict[str, Any] | None = None,
    trust_written: bool = False,
    fresh: bool = False,
) -> Plan | None:
    """Converge one TradingModel; None when it no longer exists.

    `rollout_only` (Deployment events, kopf re-running an update) trusts S3 as last converged
    for this generation when the status says a pass of it promoted, and then only follows the
    rollout; `deep` hashes every stage file against its manifest; `deployment`
    is the serving Deployment as the event that started the pass showed it (not read again: an
    older copy than the live one at worst, whose spec hash then differs from ours, so the pass
    writes our spec again, which changes nothing, and shows the rollout as not complete);
    `trust_written` skips reading an owned object this process wrote or read with the spec
    wanted now within a deep interval (a version change leaves the Service and the NetworkPolicy
    as they were: two reads per promotion). Drift passes never trust: they find an object edited or
    deleted by hand.

    A pass starts from the newest TradingModel this process knows (bodies.py), or a `fresh` read
    (the drift and deep passes: a periodic check against what the API server holds). Its status
    write is then fenced: refused, the pass runs again from a read, carrying the moves it made."""
    key = (namespace, name)
    run = functools.partial(_pass, deps=deps, claims=claims, rollout_only=rollout_only, deep=deep,
                            deployment=deployment, trust_written=trust_written)  # fmt: skip
    with _lock_for(namespace, name):
        known = None if fresh else deps.bodies.newest(key)
        refused = None
        if known is not None:
            try:
                return run(known, fenced=True)
            except _Stale as stale:
                deps.bodies.stale(key)
                refused = stale
        return run(deps.kube.get_tradingmodel(namespace, name), fenced=False, refused=refused)


class _Stale(Exception):
    """The body a pass started from was changed since (or deleted): its status write was refused.
    What that pass did in S3 happened all the same: its moves and their Events go to the next."""

    def __init__(self, view: View, plan: Plan) -> None:
        super().__init__(f"{view.namespace}/{view.name} changed during the pass")
        known = _recorded_ids(view)
        self.moves = [h for h in plan.status.get("history") or [] if h.get("id") not in known]
        self.events = [e for e in plan.events if e[1] in MOVE_EVENTS]


def _pass(
    body: dict[str, Any] | None,
    deps: Deps,
    claims: Claims,
    *,
    fenced: bool,
    rollout_only: bool,
    deep: bool,
    deployment: dict[str, Any] | None,
    trust_written: bool,
    refused: _Stale | None = None,
) -> Plan | None:
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    view = _observe(body, deps, claims, rollout_only, deep, deployment)
    wanted = store_wanted(view)
    outcome = _converge_store(wanted, view, deps)
    plan = decide(view, outcome)
    if refused is not None:
        _carry(view, plan, refused, deps.config.history_limit)
    try:
        plan = _apply(view, plan, deps, trust_written, fenced)
    except _Stale:
        metrics.observe_store(wanted, outcome)
        raise
    metrics.observe_pass(view, wanted, outcome, plan)
    return plan


def _carry(view: View, plan: Plan, refused: _Stale, limit: int) -> None:
    """The moves (and their Events) of a pass whose status write was refused, before this pass's own."""
    history = plan.status.get("history")
    if history is None or not refused.moves:
        return
    before = _recorded_ids(view)
    carried = [h for h in refused.moves if h.get("id") not in before]
    kept = [h for h in history if h.get("id") in before]
    for entry in [*carried, *(h for h in history if h.get("id") not in before)]:
        kept = append_history(kept, entry, limit)
    plan.status["history"] = kept
    plan.events[:0] = [e for e in refused.events if e not in plan.events]


def _recorded_ids(view: View) -> set[Any]:
    """The ids of the moves in the status the pass started from."""
    return {h.get("id") for h in view.old.get("history") or []}


def _observe(
    body: dict[str, Any], deps: Deps, claims: Claims, rollout_only: bool, deep: bool, seen: dict[str, Any] | None
) -> View:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    # A rollout-only pass trusts S3 (and the objects a full pass applies) only where a pass of this
    # generation promoted; anything else gets a full pass.
    rollout_only = rollout_only and promoted_this_generation(body)
    wanted = spec_claim(body)
    holder = rival(claims_of(body)[wanted], claims.get(wanted, ())) if wanted else None
    deployment = seen if seen is not None else deps.kube.get("apps/v1", "Deployment", namespace, name)
    target_ready = None
    if deployment is not None and not rollout_state(deployment)[2]:
        version = ((body.get("spec") or {}).get("version")) or ""
        pods = {**live_selector(name, deployment), "trading.io/version": version}
        target_ready = deps.kube.count_ready_pods(namespace, pods)
    autoscaler = None
    if not rollout_only and (_wants_autoscaling(body) or (body.get("status") or {}).get("autoscaler")):
        autoscaler = deps.kube.get(AUTOSCALING, "HorizontalPodAutoscaler", namespace, name)
    return View(
        body=body,
        autoscaler=autoscaler,
        config=deps.config,
        now=deps.now(),
        rival=holder.ref if holder else None,
        deployment=deployment,
        target_ready=target_ready,
        rollout_only=rollout_only,
        deep=deep,
    )


def _wants_autoscaling(body: dict[str, Any]) -> bool:
    return bool(((body.get("spec") or {}).get("serving") or {}).get("autoscaling"))


def _converge_store(wanted: Promote | RecordArchive | None, view: View, deps: Deps) -> StoreOutcome:
    if wanted is None:
        return StoreOutcome()
    model = wanted.model
    try:
        s3 = deps.s3_for(model, view.namespace)
        if isinstance(wanted, RecordArchive):
            record_once(s3, model.bucket, wanted.entry)
            return StoreOutcome()
        result = promote(
            s3,
            model.bucket,
            model.location,
            model.version,
            model.s3_stage,
            actor=wanted.actor,
            last_known=wanted.last_known,
            recorded=wanted.recorded,
            deep=wanted.deep,
        )
    except _STORE_ERRORS as exc:
        return StoreOutcome(error=exc)
    registry_error = None
    if result.stage_manifest is not None:
        try:
            sync_registries(s3, model.bucket, model.location, model.s3_stage, result.stage_manifest, model.tickers)
        except RegistryError as exc:
            registry_error = str(exc)
    shadow = resolve_shadow(s3, model, wanted.known_shadow)
    return StoreOutcome(result=result, registry_error=registry_error, shadow=shadow)


def _apply(view: View, plan: Plan, deps: Deps, trust_written: bool = False, fenced: bool = False) -> Plan:
    body = view.body
    try:
        if plan.scale_to_zero:
            _scale_to_zero(view, deps)
        if plan.deployment is not None:
            _apply_owned(body, plan.deployment, view.deployment, deps)
        if not view.rollout_only:
            written = _written.setdefault((view.namespace, view.name), {})
            for owned in [plan.service, *plan.extras] if plan.service is not None else plan.extras:
                typed, mark = (owned["apiVersion"], owned["kind"]), _mark(body, owned)
                if trust_written and _trusted(written.get(typed), mark, deps.config.deep_check_seconds):
                    continue
                meta = owned["metadata"]
                live = deps.kube.get(*typed, meta["namespace"], meta["name"])
                _apply_owned(body, owned, live, deps)
                written[typed] = (mark, time.monotonic())
        if plan.scale_to_zero and may_have_budget(view):  # no budget over pods that are gone
            plan.unwanted.append(("policy/v1", "PodDisruptionBudget"))
        for api_version, kind in plan.unwanted if not view.rollout_only else ():
            _delete_owned(body, api_version, kind, deps)
        if plan.autoscaler is not None:
            _apply_owned(body, plan.autoscaler, view.autoscaler, deps)
        elif plan.remove_autoscaler and view.autoscaler is not None:
            _delete_live(view.autoscaler, deps)
    except ApiException as exc:
        plan = _api_failure(view, plan, exc)
        if plan.scale_to_zero:  # refused for good: nothing may serve a version it does not hold
            with contextlib.suppress(ApiException):
                _scale_to_zero(view, deps)
                if plan.remove_autoscaler and view.autoscaler is not None:
                    _delete_live(view.autoscaler, deps)
    if status_changed(view.old, plan.status):
        _write_status(view, plan, deps, fenced)
    for type_, reason, message in plan.events:  # after: a refused write's pass runs again and posts them
        deps.emit(body, type_, reason, message)
    return plan


def _write_status(view: View, plan: Plan, deps: Deps, fenced: bool) -> None:
    """`fenced`: only over the body the pass started from (see bodies.py)."""
    version = view.body["metadata"].get("resourceVersion") if fenced else None
    try:
        written = deps.kube.patch_tradingmodel_status(view.namespace, view.name, plan.status, version)
    except ApiException as exc:
        if fenced and exc.status in (404, 409):
            raise _Stale(view, plan) from exc
        raise
    if written.get("metadata"):  # the API server answers with the object; a body of nothing is no body
        deps.bodies.wrote((view.namespace, view.name), written)


def _scale_to_zero(view: View, deps: Deps) -> None:
    live = view.deployment
    if live is not None and (live.get("spec") or {}).get("replicas") != 0:
        # Dropping our spec hash makes the next serving pass write the whole spec again.
        deps.kube.merge_patch(
            live, {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: "scaled-to-zero"}}, "spec": {"replicas": 0}}
        )


def _api_failure(view: View, plan: Plan, exc: ApiException) -> Plan:
    detail = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or exc.reason)
    with contextlib.suppress(ValueError, AttributeError):
        detail = json.loads(detail).get("message", detail)
    return deployment_rejected(view, plan, exc.status or 500, detail)


def _replaced_selector(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A Service's selector is a map: a merge patch would keep the keys it no longer has."""
    if desired["kind"] != "Service":
        return {}
    wanted = desired["spec"].get("selector") or {}
    gone = {key: None for key in (live.get("spec") or {}).get("selector") or {} if key not in wanted}
    return {"selector": {**gone, **wanted}}


def _dropped_labels(live: dict[str, Any]) -> dict[str, None]:
    """Labels an older operator set that must go (a merge patch removes a key set to null)."""
    return {key: None for key in (live["metadata"].get("labels") or {}) if key in DROPPED_LABELS}


def _delete_owned(body: dict[str, Any], api_version: str, kind: str, deps: Deps) -> None:
    """Delete our object of that kind, if there is one and it is ours (a GET first: a pass that
    finds nothing to delete sends no write)."""
    meta = body["metadata"]
    _written.get((meta["namespace"], meta["name"]), {}).pop((api_version, kind), None)
    live = deps.kube.get(api_version, kind, meta["namespace"], meta["name"])
    owners = (live or {}).get("metadata", {}).get("ownerReferences") or []
    if live is not None and any(ref.get("uid") == meta.get("uid") for ref in owners):
        _delete_live(live, deps)


def _delete_live(live: dict[str, Any], deps: Deps) -> None:
    meta = live["metadata"]
    deps.kube.delete(live["apiVersion"], live["kind"], meta["namespace"], meta["name"])


def _mark(owner: dict[str, Any], desired: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a written object the one wanted: its owner (a TradingModel deleted and created
    again under its name is another), our spec and our labels."""
    meta = desired["metadata"]
    return owner["metadata"].get("uid", ""), meta["annotations"][SPEC_HASH_ANNOTATION], sorted(meta["labels"].items())


def _trusted(written: tuple[tuple[Any, ...], float] | None, mark: tuple[Any, ...], seconds: float) -> bool:
    """Written or read with this mark within a deep interval. Spec passes put the drift pass off,
    so under spec changes that come faster than the drift interval some pass still reads each
    object once a deep interval, as the deep pass does (a drift interval would make a change after
    a quiet minute read both objects again: most changes)."""
    return written is not None and written[0] == mark and time.monotonic() - written[1] < seconds


def forget_written(namespace: str, name: str) -> None:
    """The TradingModel is gone: so are its objects (garbage collection)."""
    _written.pop((namespace, name), None)


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"].get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _apply_owned(body: dict[str, Any], desired: dict[str, Any], live: dict[str, Any] | None, deps: Deps) -> None:
    """Create the object, or replace its spec when ours changed."""
    desired["metadata"]["ownerReferences"] = [owner_reference(body)]
    meta = desired["metadata"]
    if live is None:
        deps.kube.create(desired)
        return
    if not needs_write(live, desired) and not _dropped_labels(live):
        return
    deps.kube.merge_patch(
        live,
        {
            "metadata": {
                "labels": {**_dropped_labels(live), **meta["labels"]},
                "annotations": meta["annotations"],
                "ownerReferences": meta["ownerReferences"],
            },
            "spec": {**desired["spec"], **_replaced_selector(live, desired)},
        },
    )
