"""The kopf handlers: thin, each one calls `reconcile` and turns its outcome into kopf's terms."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from trading_operator import GROUP, KIND, MANAGER, PLURAL, VERSION
from trading_operator.claims import Claimant, index_entry
from trading_operator.config import OperatorConfig
from trading_operator.decide import Plan
from trading_operator.kube import KubeApi
from trading_operator.reconcile import Deps, reconcile
from trading_operator.storage import s3_factory

CONFIG = OperatorConfig.from_env()


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.peering.standalone = True
    # Handler progress in annotations keeps `status` for what users read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # kopf's timer needs one to stop cleanly
    settings.posting.level = logging.WARNING  # our own events say what happened; kopf's chatter stays in logs
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    kube = KubeApi.connect()
    memo.deps = Deps(kube=kube, s3_for=s3_factory(kube), config=CONFIG, emit=post_event)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_via_client(**kwargs)


def _raise_for(plan: Plan | None, retry: int) -> None:
    if plan is None:
        return
    if plan.retryable:
        delay = min(CONFIG.retry_base_seconds * 2**retry, CONFIG.retry_max_seconds)
        raise kopf.TemporaryError(plan.message, delay=delay)
    if plan.permanent:
        raise kopf.PermanentError(plan.message)


@kopf.index(GROUP, VERSION, PLURAL)
def tradingmodel_claims(body: kopf.Body, **_: Any) -> dict[str, Claimant]:
    """Who claims which stage, kept up to date from the watch: no pass lists the cluster
    ({} for a TradingModel that claims nothing, never None: see claims.index_entry)."""
    return index_entry(dict(body))


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-on-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-on-create")
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="reconcile-on-update")
def on_spec(namespace: str, name: str, memo: kopf.Memo, retry: int, tradingmodel_claims: kopf.Index, **_: Any) -> None:
    _raise_for(reconcile(namespace, name, memo.deps, tradingmodel_claims), retry)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.drift_check_seconds, initial_delay=CONFIG.drift_check_seconds)
def drift_check(namespace: str, name: str, memo: kopf.Memo, tradingmodel_claims: kopf.Index, **_: Any) -> None:
    """Someone edited the stage prefix by hand, a claim was released, a retry is due: converge."""
    reconcile(namespace, name, memo.deps, tradingmodel_claims)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.deep_check_seconds, initial_delay=CONFIG.deep_check_seconds)
def deep_check(namespace: str, name: str, memo: kopf.Memo, tradingmodel_claims: kopf.Index, **_: Any) -> None:
    """Less often: hash every file of the stage against its manifest (an edit that kept the ETag)."""
    reconcile(namespace, name, memo.deps, tradingmodel_claims, deep=True)


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGER})
def on_deployment(body: kopf.Body, memo: kopf.Memo, tradingmodel_claims: kopf.Index, **_: Any) -> None:
    """Rollout progress of an owned Deployment moves the owner's Ready condition."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            namespace = body.metadata.namespace or "default"
            reconcile(namespace, ref["name"], memo.deps, tradingmodel_claims, rollout_only=True)
