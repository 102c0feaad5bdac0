"""The kopf handlers: thin, each one calls `reconcile` and turns its outcome into kopf's terms."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf

from trading_operator import GROUP, KIND, MANAGER, PLURAL, VERSION, metrics
from trading_operator.builders import rollout_progress
from trading_operator.claims import Claimant, claims_of
from trading_operator.config import OperatorConfig
from trading_operator.decide import Plan
from trading_operator.kube import KubeApi
from trading_operator.pacing import drift_due
from trading_operator.reconcile import Claims, Deps, reconcile
from trading_operator.storage import s3_factory

CONFIG = OperatorConfig.from_env()
# kopf passes its indexes as keyword arguments its handler protocols do not name: hence the default.
NO_CLAIMS: Claims = {}
NO_POPULATION: kopf.Index[str, None] = cast(kopf.Index[str, None], {})
# Rollout passes are short (no S3 once promoted) and what moves a TradingModel to Ready: a lane
# of their own, so that they never queue behind a thousand promotions in kopf's pool.
ROLLOUT_LANE = max(2, CONFIG.workers // 4)
_rollout_lane = ThreadPoolExecutor(ROLLOUT_LANE, thread_name_prefix="rollout")
# The timers' passes too: with a thousand TradingModels the drift timer alone fills any pool, and
# a spec change (what someone waits for) must not queue behind a minute's worth of drift checks.
TIMER_LANE = max(2, CONFIG.workers // 4)
_timer_lane = ThreadPoolExecutor(TIMER_LANE, thread_name_prefix="timers")


async def _in_lane(lane: ThreadPoolExecutor, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking pass in `lane` with kopf's context (kopf.event reads its settings from it)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(lane, context.run, functools.partial(fn, *args, **kwargs))


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message[:1000])  # a dict works


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
    settings.execution.max_workers = CONFIG.workers
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    # After kopf patches its annotations (last handled spec), it waits this long for the watch to
    # bring that version before it handles the events before it (our own status writes, which
    # still show the old annotations and so a spec change to handle). The default 5 s is shorter
    # than the watch's lag when a thousand TradingModels change at once: the spec handler then ran
    # two or three times per change. Waiting costs nothing: newer events end the wait at once.
    settings.persistence.consistency_timeout = 60
    threads = CONFIG.workers + ROLLOUT_LANE + TIMER_LANE
    kube = KubeApi.connect(pool=threads)
    memo.deps = Deps(kube=kube, s3_for=s3_factory(kube, threads), config=CONFIG, emit=post_event)
    metrics.serve(CONFIG.metrics_port)


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
    """Who claims which stage, kept up to date from the watch: no pass lists the cluster. Never
    None: kopf keeps an object's previous entries when an index function returns None, so a
    released stage would stay held; an empty mapping makes kopf drop them."""
    return claims_of(dict(body))


@kopf.index(GROUP, VERSION, PLURAL)
def tradingmodel_population(**_: Any) -> dict[str, None]:
    """Every TradingModel under one key: how many there are, for the drift timer's pace."""
    return {"all": None}


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-on-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-on-create")
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="reconcile-on-update")
def on_spec(*, namespace: str | None, name: str, memo: Any, retry: int, reason: str,
            tradingmodel_claims: Claims = NO_CLAIMS, **_: Any) -> None:  # fmt: skip
    """An update whose generation a pass already promoted (its status says so) is kopf running the
    handler again for a change handled before its own annotation came back through the watch:
    that pass follows the rollout only, as a Deployment event does (no S3; drift is the timers')."""
    with metrics.timed_pass("spec"):
        plan = reconcile(namespace or "default", name, memo.deps, tradingmodel_claims,
                         rollout_only=reason == kopf.Reason.UPDATE)  # fmt: skip
    _raise_for(plan, retry)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.drift_check_seconds, initial_delay=CONFIG.drift_check_seconds)
async def drift_check(
    *,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    memo: Any,
    tradingmodel_claims: Claims = NO_CLAIMS,
    tradingmodel_population: kopf.Index[str, None] = NO_POPULATION,
    **_: Any,
) -> None:
    """Someone edited the stage prefix by hand, a claim was released, a retry is due: converge.
    Also when a spec change looks pending: kopf runs no update handler for a spec set back to the
    last one it handled (e.g. a refused version reverted), so only this pass converges it.
    Settled TradingModels are checked at a pace that keeps to DRIFT_CHECKS_PER_SECOND (pacing)."""
    now = time.monotonic()
    population = len(tradingmodel_population.get("all", ()))
    # kopf's memo is per object (a shallow copy of the operator's): the time of its last pass.
    last = memo.get("drift_passed_at")
    if not drift_due(dict(body), last, now, CONFIG.drift_check_seconds, population, CONFIG.drift_checks_per_second):
        return
    memo["drift_passed_at"] = now
    await _in_lane(_timer_lane, _timed, "drift", namespace or "default", name, memo.deps, tradingmodel_claims)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.deep_check_seconds, initial_delay=CONFIG.deep_check_seconds)
async def deep_check(
    *, namespace: str | None, name: str, body: kopf.Body, memo: Any, tradingmodel_claims: Claims = NO_CLAIMS, **_: Any
) -> None:
    """Less often: hash every file of the stage against its manifest (an edit that kept the ETag)."""
    where = namespace or "default"
    await _in_lane(_timer_lane, _timed, "deep", where, name, memo.deps, tradingmodel_claims, deep=True)


def _timed(trigger: str, namespace: str, name: str, deps: Deps, claims: Claims, **options: Any) -> None:
    with metrics.timed_pass(trigger):
        reconcile(namespace, name, deps, claims, **options)


_progress_seen: dict[str, tuple[int, ...]] = {}  # Deployment uid -> the rollout progress last passed on
_progress_guard = threading.Lock()


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGER})
async def on_deployment(
    *, type: str | None, body: kopf.Body, memo: Any, tradingmodel_claims: Claims = NO_CLAIMS, **_: Any
) -> None:
    """Rollout progress of an owned Deployment moves the owner's Ready condition.

    A rollout is a stream of Deployment events (our own write, the controller observing it, each
    pod created, ready, retired…); only those that change what the owner's status shows start a
    pass: a status that has not observed the Deployment's spec yet, or shows the same progress as
    the last one passed on, is skipped (here, in the event loop: no thread for them). A deleted
    Deployment always starts one (it is re-created)."""
    owner = next(
        (ref["name"] for ref in body.metadata.get("ownerReferences") or []
         if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/")),
        None,
    )  # fmt: skip
    if owner is None:
        return
    uid = str(body.metadata.get("uid") or "")
    progress = None
    if type != "DELETED":
        progress = rollout_progress(dict(body))
        if progress is None or _progress_seen.get(uid) == progress:
            return
    namespace = body.metadata.namespace or "default"
    seen = None if type == "DELETED" else dict(body)  # a deleted one is read (and found gone: re-created)
    await _in_lane(_rollout_lane, _timed, "rollout", namespace, owner, memo.deps, tradingmodel_claims,
                   rollout_only=True, deployment=seen)  # fmt: skip
    with _progress_guard:
        if progress is None:
            _progress_seen.pop(uid, None)
        else:
            _progress_seen[uid] = progress
