"""The thin apply of one level-based pass over a TradingModel.

Every trigger (create, update, resume, the drift timers, a Deployment status change) runs
`reconcile`: observe the TradingModel and its Deployment, ask `decide.store_wanted` what S3 must
hold, converge S3 (the model store does the moves), ask `decide.decide` what the status and the
owned objects become, and write that. Running it twice changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from kubernetes.client.rest import ApiException

from model_store.errors import RegistryError, StoreError
from model_store.layout import InvalidName
from model_store.promotion import promote
from model_store.publish import utc_now
from model_store.registry import record_once, sync_registries
from trading_operator import GROUP, KIND, VERSION
from trading_operator.builders import SPEC_HASH_ANNOTATION, rollout_state, selector
from trading_operator.claims import Claimant, claims_of, rival, spec_claim
from trading_operator.config import OperatorConfig
from trading_operator.decide import (
    Plan,
    Promote,
    RecordArchive,
    StoreOutcome,
    View,
    decide,
    deployment_rejected,
    needs_write,
    status_changed,
    store_wanted,
)
from trading_operator.kube import KubeApi
from trading_operator.storage import S3Factory

log = logging.getLogger(__name__)

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


_locks: dict[tuple[str, str], threading.Lock] = {}
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
) -> Plan | None:
    """Converge one TradingModel; None when it no longer exists.

    `rollout_only` (Deployment events, kopf re-running an update) trusts S3 as last converged
    for this generation when the status says a pass of it promoted, and then only follows the
    rollout; `deep` hashes every stage file against its manifest; `deployment`
    is the serving Deployment as the event that started the pass showed it (not read again: an
    older copy than the live one at worst, whose spec hash then differs from ours, so the pass
    writes our spec again, which changes nothing, and shows the rollout as not complete)."""
    with _lock_for(namespace, name):
        body = deps.kube.get_tradingmodel(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        view = _observe(body, deps, claims, rollout_only, deep, deployment)
        wanted = store_wanted(view)
        outcome = _converge_store(wanted, view, deps)
        plan = decide(view, outcome)
        # A pass that trusted S3 trusts the Service too: a pass of this generation applied it.
        return _apply(view, plan, deps, with_service=not (view.rollout_only and wanted is None))


def _observe(
    body: dict[str, Any], deps: Deps, claims: Claims, rollout_only: bool, deep: bool, seen: dict[str, Any] | None
) -> View:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    wanted = spec_claim(body)
    holder = rival(claims_of(body)[wanted], claims.get(wanted, ())) if wanted else None
    deployment = seen if seen is not None else deps.kube.get("apps/v1", "Deployment", namespace, name)
    target_ready = None
    if deployment is not None and not rollout_state(deployment)[2]:
        version = ((body.get("spec") or {}).get("version")) or ""
        target_ready = deps.kube.count_ready_pods(namespace, {**selector(name), "trading.io/version": version})
    return View(
        body=body,
        config=deps.config,
        now=deps.now(),
        rival=holder.ref if holder else None,
        deployment=deployment,
        target_ready=target_ready,
        rollout_only=rollout_only,
        deep=deep,
    )


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
    return StoreOutcome(result=result, registry_error=registry_error)


def _apply(view: View, plan: Plan, deps: Deps, with_service: bool = True) -> Plan:
    body = view.body
    try:
        if plan.scale_to_zero:
            _scale_to_zero(view, deps)
        if plan.deployment is not None:
            _apply_owned(body, plan.deployment, view.deployment, deps)
        if plan.service is not None and with_service:
            service = plan.service["metadata"]
            live = deps.kube.get("v1", "Service", service["namespace"], service["name"])
            _apply_owned(body, plan.service, live, deps)
    except ApiException as exc:
        plan = _api_failure(view, plan, exc)
        if plan.scale_to_zero:  # refused for good: nothing may serve a version it does not hold
            with contextlib.suppress(ApiException):
                _scale_to_zero(view, deps)
    for type_, reason, message in plan.events:
        deps.emit(body, type_, reason, message)
    if status_changed(view.old, plan.status):
        deps.kube.patch_tradingmodel_status(view.namespace, view.name, plan.status)
    return plan


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
    if not needs_write(live, desired):
        return
    deps.kube.merge_patch(
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
