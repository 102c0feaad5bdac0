"""The kopf handlers: thin; the passes they start call `reconcile` and turn its outcome into when to pass again."""

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
from trading_operator.reconcile import Claims, Deps, forget_written, reconcile
from trading_operator.rollouts import RolloutQueue
from trading_operator.spec_queue import Attempt, SpecQueue
from trading_operator.storage import s3_factory
from trading_operator.sweep import Sweep

log = logging.getLogger(__name__)
CONFIG = OperatorConfig.from_env()
OWNED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGER}"
# kopf passes its indexes as keyword arguments its handler protocols do not name: hence the default.
NO_CLAIMS: Claims = {}
# Spec passes (spec_queue.py): what a change starts, the promotions.
_spec_lane = ThreadPoolExecutor(CONFIG.workers, thread_name_prefix="spec")
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
    # No handler asks kopf what changed (spec passes follow generations: spec_queue.py), so kopf keeps
    # no last-handled spec: see NoDiffBase. Progress would go to annotations, keeping `status` for
    # what users read (no handler has progress to keep today).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
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
    threads = CONFIG.workers + ROLLOUT_LANE + TIMER_LANE
    kube = KubeApi.connect(pool=threads)
    if not CONFIG.standalone:
        namespace = None if settings.peering.clusterwide else memo.get("watch_namespace", CONFIG.watch_namespace)
        try:
            peering.ensure_peering_object(kube, CONFIG.peering_name, namespace or None)
        except peering.PeeringUnavailable as exc:
            raise kopf.PermanentError(str(exc)) from None
    memo.deps = Deps(kube=kube, s3_for=s3_factory(kube, threads, lean=CONFIG.lean_s3), config=CONFIG, emit=post_event)
    memo.periodic = Periodic()
    memo.specs = SpecQueue(functools.partial(_queued_spec_pass, memo), retry_delay)
    metrics.serve(CONFIG.metrics_port)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf diffs every event's object (a deep copy of all but its status) against the last handled
    one, for handlers that ask what changed; none here does. So: nothing built, kept or read."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: kopf.Body) -> Any:
        return None

    def store(self, *, body: kopf.Body, patch: Any, essence: Any) -> None:
        pass


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_via_client(**kwargs)


def retry_delay(retry: int) -> float:
    """Seconds before the next try of a pass that asked for one (or failed) `retry` times before."""
    return float(min(CONFIG.retry_base_seconds * 2**retry, CONFIG.retry_max_seconds))


@kopf.index(GROUP, VERSION, PLURAL)
async def tradingmodel_claims(body: kopf.Body, **_: Any) -> dict[str, Claimant]:
    """Who claims which stage, kept up to date from the watch: no pass lists the cluster. Never
    None: kopf keeps an object's previous entries when an index function returns None, so a
    released stage would stay held; an empty mapping makes kopf drop them. Async: kopf runs a sync
    function in a thread, a hop per event for a few dict lookups."""
    return claims_of(dict(body))


async def _queued_spec_pass(memo: Any, key: Any, attempt: Attempt) -> float | None:
    periodic: Periodic = memo.periodic
    delay = await _in_lane(_spec_lane, _spec_pass, key, attempt, memo.deps, periodic.claims, periodic)
    return cast(float | None, delay)


def _spec_pass(key: Any, attempt: Attempt, deps: Deps, claims: Claims, periodic: Periodic) -> float | None:
    """A pass for a TradingModel's spec (spec_queue.py); seconds until the next try, None when done.

    A pass that is not the first for its TradingModel nor a retry trusts S3 as converged when the
    status says a pass of this generation promoted: that is a newer generation seen during the pass
    that handled it (a first pass after a restart, or a retry, checks S3 in full). Such a pass also
    trusts the owned objects this process wrote (`reconcile`'s `trust_written`)."""
    namespace, name = key
    try:
        with CHANGES.running():
            again = not attempt.first and not attempt.retry
            plan = _timed("spec", namespace, name, deps, claims, rollout_only=again, trust_written=again)
    except Forbidden as exc:  # logged and posted as an Event in RBAC's words, retried
        log.error("%s; retrying in %d s", exc, CONFIG.retry_max_seconds, extra={"tradingmodel": name})
        post_event(attempt.body, "Warning", "Forbidden", str(exc))
        return float(CONFIG.retry_max_seconds)
    log.debug("spec pass ended", extra={"tradingmodel": name, "namespace": namespace,
                                         "outcome": metrics.outcome_of(plan)})  # fmt: skip
    if plan is None:
        return None
    if not plan.retryable:
        periodic.checked(key)
        return None
    return retry_delay(attempt.retry)


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
        self._specs: SpecQueue | None = None
        self._deferred: set[Any] = set()  # drift passes put off once for a spec pass (see _pass)
        self.claims: Claims = NO_CLAIMS
        self._settled: dict[Any, bool] = {}  # from the watch: settled ones are checked at a pace (pacing.py)
        self._checked: dict[Any, float] = {}  # when a spec pass last checked it (time.monotonic)

    def saw(self, key: Any, body: dict[str, Any] | None) -> None:
        """The watch showed this TradingModel (None: deleted)."""
        if body is None:
            self._settled.pop(key, None)
            self._checked.pop(key, None)
            self._deferred.discard(key)
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

    def start(self, deps: Deps, claims: Claims, specs: SpecQueue) -> None:
        if not self._tasks:
            self._deps, self.claims, self._specs = deps, claims, specs
            self._tasks = [asyncio.create_task(sweep.run()) for sweep in (self.drift, self.deep)]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _pass(self, trigger: str, key: Any, **options: Any) -> None:
        """Someone edited the stage prefix by hand, a claim was released: converge. The deep pass
        hashes every file of the stage against its manifest (an edit that kept the ETag)."""
        namespace, name = key
        if trigger == "drift":
            await when_idle(CHANGES, longest=self._drift_seconds(key))
            # A spec pass converged it since (a mass change does that to all): due an interval after that.
            while (left := seconds_left(self._checked.get(key), self._drift_seconds(key))) > 0:
                await asyncio.sleep(left)
            if self._specs is not None and self._specs.in_pass(key) and key not in self._deferred:
                # Its spec pass is queued or running (a mass change longer than the interval): a drift
                # pass now would wait for that pass's lock and repeat its S3 reads. Put off once,
                # to an interval from now (a spec pass that converges puts it off again: checked);
                # never twice in a row, so edits by hand are still repaired while specs keep changing.
                self._deferred.add(key)
                return
            self._deferred.discard(key)
        await _in_lane(_timer_lane, _timed, trigger, namespace, name, self._deps, self.claims, fresh=True, **options)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_tradingmodel(
    *, type: str | None, body: kopf.Body, memo: Any, tradingmodel_claims: Claims = NO_CLAIMS, **_: Any
) -> None:
    """Every TradingModel event: a spec pass when its generation is new (spec_queue.py), its drift
    and deep checks, and the models-by-phase gauge (no API call). One handler: kopf's handler
    machinery costs more per event than what each of these does."""
    periodic: Periodic = memo.periodic
    periodic.start(memo.deps, tradingmodel_claims, memo.specs)
    key = (body.metadata.namespace or "default", body.metadata.name or "")
    if type == "DELETED":
        memo.specs.forget(key)
        memo.deps.bodies.forget(key)
        forget_written(*key)
        periodic.saw(key, None)
        metrics.MODEL_STATUS.forget(*key)
        return
    seen = dict(body)
    memo.deps.bodies.seen(key, seen, listed=type is None)  # kopf: no event type for a listing
    if not body.metadata.get("deletionTimestamp"):
        memo.specs.offer(key, seen)
    periodic.saw(key, seen)
    metrics.MODEL_STATUS.saw(*key, dict(body.get("status") or {}))


@kopf.on.cleanup()
def stop_checks(memo: Any, **_: Any) -> None:
    periodic: Periodic | None = getattr(memo, "periodic", None)
    if periodic is not None:
        periodic.stop()
    ROLLOUTS.cancel()
    specs: SpecQueue | None = getattr(memo, "specs", None)
    if specs is not None:
        specs.cancel()


def _timed(trigger: str, namespace: str, name: str, deps: Deps, claims: Claims, **options: Any) -> Plan | None:
    """`reconcile`, counted and timed by trigger in the operator's metrics."""
    with metrics.timed_pass(trigger) as record:
        plan = reconcile(namespace, name, deps, claims, **options)
        record.ended_with(plan)
        return plan


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
