"""The kopf handlers: thin, each one calls `reconcile` and turns its outcome into kopf's terms."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf

from trading_operator import GROUP, KIND, MANAGER, PLURAL, VERSION, metrics, peering
from trading_operator.builders import before_new_pods, rollout_ended, rollout_progress
from trading_operator.claims import Claimant, claims_of
from trading_operator.config import OperatorConfig
from trading_operator.decide import Plan
from trading_operator.kube import Forbidden, KubeApi
from trading_operator.pacing import Changes, drift_seconds, seconds_left, settled, when_idle
from trading_operator.reconcile import Claims, Deps, reconcile
from trading_operator.rollouts import RolloutQueue
from trading_operator.storage import s3_factory
from trading_operator.sweep import Sweep

CONFIG = OperatorConfig.from_env()
OWNED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGER}"
# kopf passes its indexes as keyword arguments its handler protocols do not name: hence the default.
NO_CLAIMS: Claims = {}
# Rollout passes are short (no S3 once promoted) and what moves a TradingModel to Ready: a lane
# of their own, so that they never queue behind a thousand promotions in kopf's pool.
ROLLOUT_LANE = max(2, CONFIG.workers // 4)
_rollout_lane = ThreadPoolExecutor(ROLLOUT_LANE, thread_name_prefix="rollout")
# The timers' passes too: with a thousand TradingModels the drift timer alone fills any pool, and
# a spec change (what someone waits for) must not queue behind a minute's worth of drift checks.
TIMER_LANE = max(2, CONFIG.workers // 4)
_timer_lane = ThreadPoolExecutor(TIMER_LANE, thread_name_prefix="timers")
CHANGES = Changes()  # spec and rollout passes running: drift passes wait for them (pacing.py)


async def _in_lane(lane: ThreadPoolExecutor, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking pass in `lane` with kopf's context (kopf.event reads its settings from it)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(lane, context.run, functools.partial(fn, *args, **kwargs))


def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message[:1000])  # a dict works


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Several replicas, one acting (trading_operator/peering.py); `tmctl operator` passes the
    # namespace it watches in the memo (its --namespace flag wins over WATCH_NAMESPACE).
    peering.configure_peering(settings, name=CONFIG.peering_name, lifetime=CONFIG.peering_lifetime_seconds,
                              standalone=CONFIG.standalone, priority=peering.new_priority())  # fmt: skip
    # Watching one namespace, the operator needs nothing cluster-scoped (overlays/namespaced grants a
    # Role only): no scan of the cluster's CRDs or namespaces, the resource is found once at startup.
    settings.scanning.disabled = bool(CONFIG.watch_namespace)
    # Handler progress in annotations keeps `status` for what users read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # No handler needs a finalizer (no timers: see Periodic); kopf removes the one older releases set.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # our own events say what happened; kopf's chatter stays in logs
    settings.execution.max_workers = CONFIG.workers
    settings.watching.server_timeout = 300
    # Asked of the API server: kopf applies a handler's `labels=` on its side, after the whole
    # cluster's Deployments were streamed to it (and kept in memory).
    settings.watching.label_selectors["apps", "v1", "deployments"] = OWNED_SELECTOR
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    # A TradingModel deleted while its drift pass runs (or waits for a thread) keeps kopf's
    # finalizer until kopf looks again at its timer: every 60 s by default, a minute-long delete.
    settings.background.cancellation_polling = 2
    # After kopf patches its annotations (last handled spec), it waits this long for the watch to
    # bring that version before it handles the events before it (our own status writes, which
    # still show the old annotations and so a spec change to handle). The default 5 s is shorter
    # than the watch's lag when a thousand TradingModels change at once: the spec handler then ran
    # two or three times per change. Waiting costs nothing: newer events end the wait at once.
    settings.persistence.consistency_timeout = 60
    threads = CONFIG.workers + ROLLOUT_LANE + TIMER_LANE
    kube = KubeApi.connect(pool=threads)
    if not CONFIG.standalone:
        namespace = None if settings.peering.clusterwide else memo.get("watch_namespace", CONFIG.watch_namespace)
        try:
            peering.ensure_peering_object(kube, CONFIG.peering_name, namespace or None)
        except peering.PeeringUnavailable as exc:
            raise kopf.PermanentError(str(exc)) from None
    memo.deps = Deps(kube=kube, s3_for=s3_factory(kube, threads), config=CONFIG, emit=post_event)
    memo.periodic = Periodic()
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


@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile-on-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile-on-create")
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="reconcile-on-update")
def on_spec(*, namespace: str | None, name: str, memo: Any, retry: int, reason: str,
            tradingmodel_claims: Claims = NO_CLAIMS, **_: Any) -> None:  # fmt: skip
    """An update whose generation a pass already promoted (its status says so) is kopf running the
    handler again for a change handled before its own annotation came back through the watch:
    that pass follows the rollout only, as a Deployment event does (no S3; drift is the sweep's)."""
    with CHANGES.running(), metrics.timed_pass("spec") as record:
        try:
            plan = reconcile(namespace or "default", name, memo.deps, tradingmodel_claims,
                             rollout_only=reason == kopf.Reason.UPDATE)  # fmt: skip
        except Forbidden as exc:  # logged and posted as an Event in RBAC's words, retried
            raise kopf.TemporaryError(str(exc), delay=CONFIG.retry_max_seconds) from exc
        record.ended_with(plan)
    if plan is not None and not plan.retryable:
        memo.periodic.checked((namespace or "default", name))
    _raise_for(plan, retry)


class Periodic:
    """The drift and deep checks of every TradingModel (sweep.py: kopf's timers would put a finalizer
    on each one). Started from the first watch event, so that its passes run in kopf's per-object
    context (kopf.event needs it); kopf's claims index is live, so the one seen first is kept."""

    def __init__(self) -> None:
        base = CONFIG.drift_check_seconds
        self.drift = Sweep(base, functools.partial(self._pass, "drift"), self._drift_seconds)
        self.deep = Sweep(CONFIG.deep_check_seconds, functools.partial(self._pass, "deep", deep=True))
        self._tasks: list[asyncio.Task[None]] = []
        self._deps: Deps | None = None
        self._claims: Claims = NO_CLAIMS
        self._settled: dict[Any, bool] = {}  # from the watch: settled ones are checked at a pace (pacing.py)
        self._checked: dict[Any, float] = {}  # when a spec pass last checked it (time.monotonic)

    def saw(self, key: Any, body: dict[str, Any] | None) -> None:
        """The watch showed this TradingModel (None: deleted)."""
        if body is None:
            self._settled.pop(key, None)
            self._checked.pop(key, None)
        else:
            self._settled[key] = settled(body)
        for sweep in (self.drift, self.deep):
            if body is None:
                sweep.forget(key)
            else:
                sweep.track(key)

    def checked(self, key: Any) -> None:
        """A spec pass converged this TradingModel (from any thread): it did all a drift pass does."""
        self._checked[key] = time.monotonic()

    def _drift_seconds(self, key: Any) -> float:
        return drift_seconds(
            self._settled.get(key, False), CONFIG.drift_check_seconds, len(self.drift), CONFIG.drift_checks_per_second
        )

    def start(self, deps: Deps, claims: Claims) -> None:
        if not self._tasks:
            self._deps, self._claims = deps, claims
            self._tasks = [asyncio.create_task(sweep.run()) for sweep in (self.drift, self.deep)]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _pass(self, trigger: str, key: Any, **options: Any) -> None:
        """Someone edited the stage prefix by hand, a claim was released, a retry is due: converge.
        Also when a spec change looks pending: kopf runs no update handler for a spec set back to
        the last one it handled (e.g. a refused version reverted), so only this pass converges it.
        The deep pass hashes every file of the stage against its manifest (an edit that kept the ETag)."""
        namespace, name = key
        if trigger == "drift":
            await when_idle(CHANGES, longest=self._drift_seconds(key))
            # A spec pass converged it since (a mass change does that to all): due an interval after that.
            while (left := seconds_left(self._checked.get(key), self._drift_seconds(key))) > 0:
                await asyncio.sleep(left)
        await _in_lane(_timer_lane, _timed, trigger, namespace, name, self._deps, self._claims, **options)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def schedule_checks(
    *, type: str | None, body: kopf.Body, memo: Any, tradingmodel_claims: Claims = NO_CLAIMS, **_: Any
) -> None:
    periodic: Periodic = memo.periodic
    periodic.start(memo.deps, tradingmodel_claims)
    key = (body.metadata.namespace or "default", body.metadata.name)
    periodic.saw(key, None if type == "DELETED" else dict(body))


@kopf.on.cleanup()
def stop_checks(memo: Any, **_: Any) -> None:
    periodic: Periodic | None = getattr(memo, "periodic", None)
    if periodic is not None:
        periodic.stop()
    ROLLOUTS.cancel()


def _timed(trigger: str, namespace: str, name: str, deps: Deps, claims: Claims, **options: Any) -> None:
    with metrics.timed_pass(trigger) as record:
        record.ended_with(reconcile(namespace, name, deps, claims, **options))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_tradingmodel(*, type: str | None, body: kopf.Body, **_: Any) -> None:
    """The models-by-phase gauge follows what the watch shows (deletions included): no API call."""
    namespace, name = body.metadata.namespace or "default", body.metadata.name or ""
    if type == "DELETED":
        metrics.MODEL_STATUS.forget(namespace, name)
    else:
        metrics.MODEL_STATUS.saw(namespace, name, dict(body.get("status") or {}))


_progress_seen: dict[str, tuple[int, ...]] = {}  # Deployment uid -> the rollout progress last passed on
ROLLOUTS = RolloutQueue(CONFIG.rollout_settle_seconds)  # a rollout's burst of events: one pass


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGER})  # and OWNED_SELECTOR
async def on_deployment(
    *, type: str | None, body: kopf.Body, memo: Any, tradingmodel_claims: Claims = NO_CLAIMS, **_: Any
) -> None:
    """Rollout progress of an owned Deployment moves the owner's Ready condition.

    A rollout is a stream of Deployment events (our own write, the controller observing it, each
    pod created, ready, retired…); only those that change what the owner's status shows queue a
    pass (`RolloutQueue`): a status that has not observed the Deployment's spec yet, or shows the
    same progress as the last one passed on, is skipped here, in the event loop. A deleted
    Deployment always queues one (it is re-created)."""
    owner = next(
        (ref["name"] for ref in body.metadata.get("ownerReferences") or []
         if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/")),
        None,
    )  # fmt: skip
    if owner is None:
        return
    seen = None  # a deleted one is read (and found gone: re-created)
    if type == "DELETED":
        _progress_seen.pop(str(body.metadata.get("uid") or ""), None)
    else:
        seen = dict(body)
        progress = rollout_progress(seen)
        if progress is None or _progress_seen.get(_uid(seen)) == progress or before_new_pods(seen):
            return
    namespace = body.metadata.namespace or "default"
    deps = memo.deps

    async def rollout_pass(deployment: dict[str, Any] | None) -> None:
        with CHANGES.running():
            await _in_lane(_rollout_lane, _timed, "rollout", namespace, owner, deps, tradingmodel_claims,
                           rollout_only=True, deployment=deployment)  # fmt: skip
        if deployment is not None and (passed := rollout_progress(deployment)) is not None:
            _progress_seen[_uid(deployment)] = passed

    ROLLOUTS.offer((namespace, owner), seen, seen is None or rollout_ended(seen), rollout_pass)


def _uid(deployment: dict[str, Any]) -> str:
    return str((deployment.get("metadata") or {}).get("uid") or "")
