"""A local kubelet and Deployment/ReplicaSet controller: Deployments become processes on a laptop.

It talks to a Kubernetes API over HTTP (the local API, or any other), like the real
components do:

- Deployment controller: one ReplicaSet per pod template, surge rollouts that retire old
  ReplicaSets only when every new pod is ready; Deployment status (observedGeneration,
  replicas, updated/ready/available, Available and Progressing conditions).
- ReplicaSet controller: Pods owned by their ReplicaSet (so garbage collection of a deleted
  Deployment removes them), status counts.
- Kubelet: for each Pod, the first container runs as a local process (the image is ignored):
  ``sys.executable -m model_serving`` unless a ``command_factory`` or the
  ``LOCAL_KUBELET_COMMAND`` variable says otherwise (an empty command leaves the pod Pending,
  e.g. for an operator Deployment that runs elsewhere); env resolved from the pod spec and
  Secrets/ConfigMaps in the API, plus ``PORT`` (a free local port) and ``MODEL_CACHE_DIR``;
  readiness and liveness probes; restarts with back-off; output in one log file per pod
  (``kubectl logs`` reads it through the local API); on stop: not ready at once, the preStop
  pause (``sleep`` hooks), then SIGTERM and SIGKILL after terminationGracePeriodSeconds. With
  ``run_pods=False`` pods are hollow: Running and Ready at once, no process (for benchmarks).
- Services: a stable local proxy URL per Service (annotation ``local-stack.trading.io/url``)
  and ``endpoints(namespace, name)`` for the ready pod URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import pathlib
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from devstack import annotation_keys, autoscalers, deployments, kube_events
from devstack.kube_client import KubeApiError, KubeClient, resource_path, retry_forever
from devstack.pod_env import POD_IP, EnvError, resolve_env
from devstack.pod_runtime import ContainerProcess, Probe, free_ports
from devstack.service_proxy import ServiceProxy

log = logging.getLogger(__name__)

CommandFactory = Callable[[Mapping[str, Any], Mapping[str, Any]], Sequence[str]]
COMMAND_ENV = "LOCAL_KUBELET_COMMAND"
# Host variables a process needs to run at all; everything else comes from the pod spec, as in a container.
_INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "TZ",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "SYSTEMROOT",
)
_DEPLOYMENTS = "/apis/apps/v1/deployments"
_REPLICA_SETS = "/apis/apps/v1/replicasets"
_PODS = "/api/v1/pods"
_SERVICES = "/api/v1/services"
_FULL_PASS_SECONDS = 10.0  # every object, not only the changed ones (progress deadlines are time-based)
_CONCURRENT_SYNCS = 16  # objects worked on at once in a pass (kube-controller-manager's --concurrent-*-syncs)


async def _each(items: Iterable[Any], writes: Callable[[Any], Awaitable[None] | None]) -> None:
    """The writes each item needs: writes(item) decides at once (None: nothing to write), and what it
    returns runs with at most _CONCURRENT_SYNCS at once. One object's API calls stay in order; different
    objects do not wait for each other. Most objects of a pass need no write: they cost no task."""
    pending = [work for work in map(writes, items) if work is not None]
    if not pending:
        return
    limit = asyncio.Semaphore(_CONCURRENT_SYNCS)

    async def one(work: Awaitable[None]) -> None:
        async with limit:
            await work

    await asyncio.gather(*map(one, pending))


def default_command(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    """``$LOCAL_KUBELET_COMMAND`` (shell words) if set, else ``sys.executable -m model_serving``."""
    override = os.environ.get(COMMAND_ENV)
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "model_serving"]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _timestamp(moment: datetime.datetime | None = None) -> str:
    return (moment or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _name_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return _meta(obj).get("namespace") or "", _meta(obj)["name"]


def _owner_uids(obj: Mapping[str, Any]) -> list[str]:
    return [ref["uid"] for ref in _meta(obj).get("ownerReferences") or [] if ref.get("uid")]


class _Informer:
    """A local copy of one collection: listed once, then kept by a watch, and updated at once by
    our own writes (so a pass never acts twice on what it already did), like client-go's informers.
    It keeps an owner index with every change, so that a pass looks up what an object owns instead
    of indexing the whole collection again."""

    def __init__(self, on_change: Callable[[dict[str, Any]], None]) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # uid -> object
        self.synced = False
        self._owned: dict[str, dict[str, dict[str, Any]]] = {}  # owner uid -> uid -> object
        self._gone: set[str] = set()  # uids deleted (a uid never comes back)
        self._on_change = on_change

    def replace(self, items: list[dict[str, Any]]) -> None:
        before = self.objects
        self.objects, self._owned = {}, {}
        for obj in items:
            if _meta(obj).get("uid"):
                self._put(_meta(obj)["uid"], obj)
        self.synced = True
        for uid, obj in before.items():
            if uid not in self.objects:  # deleted while no watch was running: its owners must hear of it
                self._on_change(obj)
        for obj in items:
            self._on_change(obj)

    def apply(self, obj: Mapping[str, Any] | None, *, deleted: bool = False) -> None:
        """Take in a watch event or what our own write returned; either comes twice (the watch
        echoes our writes), so what is already here changes nothing and makes no pass look again."""
        if not isinstance(obj, dict) or not _meta(obj).get("uid"):
            return
        uid = _meta(obj)["uid"]
        if uid in self._gone:
            return  # a uid never comes back: its deletion was taken in already
        if deleted:
            self._gone.add(uid)
            self._put(uid, None)
        else:
            current = self.objects.get(uid)
            if current is not None and _rv(obj) and _rv(current) >= _rv(obj):
                return  # older than what we have, or the echo of what our own write returned
            self._put(uid, obj)
        self._on_change(obj)

    def _put(self, uid: str, obj: dict[str, Any] | None) -> None:
        """Store obj under uid (None: drop it), moving it in the owner index (its ownerReferences may change)."""
        old = self.objects.pop(uid, None) if obj is None else self.objects.get(uid)
        for owner in _owner_uids(old or {}):
            owned = self._owned.get(owner, {})
            owned.pop(uid, None)
            if not owned:
                self._owned.pop(owner, None)
        if obj is not None:
            self.objects[uid] = obj
            for owner in _owner_uids(obj):
                self._owned.setdefault(owner, {})[uid] = obj

    def owned_by(self, owner_uid: str) -> list[dict[str, Any]]:
        """What owner_uid owns, in name order: plans break ties by list order (which pod to delete)."""
        return sorted(self._owned.get(owner_uid, {}).values(), key=_name_key)


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int(_meta(obj).get("resourceVersion") or 0)
    except ValueError:
        return 0


class PodWorker:
    """Runs, probes and restarts the first container of one pod; reports pod status to the API."""

    def __init__(self, kubelet: LocalKubelet, pod: Mapping[str, Any]) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = _meta(pod)
        self.uid: str = meta["uid"]
        self.namespace: str = meta.get("namespace") or "default"
        self.name: str = meta["name"]
        self.container: Mapping[str, Any] = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        self.port: int | None = None
        self.ready = False
        self.restart_count = 0
        self.process: ContainerProcess | None = None
        self.task: asyncio.Task[None] | None = None
        self._ready_since: str | None = None
        self._pre_stop = True  # stop(pre_stop=False): the stack's own shutdown skips the preStop pause
        self._last_state: dict[str, Any] = {}
        self._started_at = _timestamp()
        self._status_path = resource_path("v1", "pods", self.namespace, self.name, "status")
        self._pod_path = resource_path("v1", "pods", self.namespace, self.name)

    @property
    def log_file(self) -> pathlib.Path:
        return self.kubelet.log_dir / f"{self.namespace}_{self.name}.log"

    def start(self) -> None:
        """Run the container; a hollow pod runs nothing (the pass that starts it calls report_hollow)."""
        if self.kubelet.run_pods:
            self.task = asyncio.create_task(self._run(), name=f"pod:{self.namespace}/{self.name}")

    async def report_hollow(self) -> None:
        """A hollow pod is Running and Ready at once, with no process."""
        self._set_ready(True)
        await self._report()

    async def stop(self, *, pre_stop: bool = True) -> None:
        """Not ready at once (the Service stops sending new connections), then the container's preStop
        pause (sleep only), then SIGTERM and SIGKILL after terminationGracePeriodSeconds (what is left
        of it), as a kubelet does. The stack's own shutdown skips the preStop pause."""
        self._pre_stop = pre_stop
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def _pre_stop_seconds(self) -> float:
        hook = ((self.container.get("lifecycle") or {}).get("preStop")) or {}
        if "sleep" in hook:
            return float((hook["sleep"] or {}).get("seconds", 0))
        command = (hook.get("exec") or {}).get("command") or []
        if len(command) == 2 and command[0].rsplit("/", 1)[-1] == "sleep":
            return float(command[1])
        if hook:
            log.warning(
                "event=pre_stop_unsupported pod=%s/%s hook=%s (only sleep runs locally)",
                self.namespace,
                self.name,
                hook,
            )
        return 0.0

    def _grace_seconds(self, spent: float) -> float:
        spec = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        if spec is None:
            return self.kubelet.grace_seconds
        return max(1.0, float(spec) - spent)

    async def _run(self) -> None:
        try:
            if not self.kubelet.command_factory(self.pod, self.container):
                await self._report(
                    waiting=("NotRunLocally", "the local kubelet has no command for this container"), phase="Pending"
                )
                await asyncio.Event().wait()  # until the pod goes away
            while True:
                try:
                    env = await self.kubelet.container_env(self.pod, self.container)
                except EnvError as exc:
                    log.warning("event=container_config_error pod=%s/%s error=%s", self.namespace, self.name, exc)
                    await self._report(waiting=("CreateContainerConfigError", str(exc)), phase="Pending")
                    await self.kubelet.record(self.pod, "Failed", f"Error: {exc}", warning=True)
                    await asyncio.sleep(self.kubelet.config_retry_seconds)
                    continue
                except (KubeApiError, aiohttp.ClientError, OSError) as exc:  # the API is away for a moment
                    log.warning("event=container_env_unavailable pod=%s/%s error=%r", self.namespace, self.name, exc)
                    await asyncio.sleep(self.kubelet.config_retry_seconds)
                    continue
                try:
                    exit_code = await self._run_once(env)
                except OSError as exc:  # the command itself cannot start (not found, not executable)
                    log.error("event=container_start_failed pod=%s/%s error=%s", self.namespace, self.name, exc)
                    await self.kubelet.record(
                        self.pod, "Failed", f"Error: cannot start the container: {exc}", warning=True
                    )
                    exit_code = 127
                self.restart_count += 1
                delay = min(self.kubelet.max_backoff_seconds, 2.0 ** (self.restart_count - 1))
                log.warning(
                    "event=container_exited pod=%s/%s exit_code=%s restart_in=%.0fs log=%s",
                    self.namespace,
                    self.name,
                    exit_code,
                    delay,
                    self.log_file,
                )
                await self._report(
                    waiting=(
                        "CrashLoopBackOff",
                        f"back-off {delay:.0f}s restarting failed "
                        f"container={self.container.get('name')} "
                        f"pod={self.name}",
                    )
                )
                await self.kubelet.record(
                    self.pod,
                    "BackOff",
                    f"Back-off restarting failed container "
                    f"{self.container.get('name')} (exit code {exit_code}); "
                    f"output in {self.log_file}",
                    warning=True,
                )
                await asyncio.sleep(delay)
        finally:
            if self.process is not None:
                self._set_ready(False)
                await self.kubelet.record(self.pod, "Killing", f"Stopping container {self.container.get('name')}")
                pause = self._pre_stop_seconds() if self._pre_stop else 0.0
                if pause:
                    log.info("event=pre_stop pod=%s/%s sleep=%.0fs", self.namespace, self.name, pause)
                    await asyncio.sleep(pause)
                await self.process.stop(self._grace_seconds(pause))
                log.info("event=container_stopped pod=%s/%s", self.namespace, self.name)

    async def _run_once(self, env: dict[str, str]) -> int:
        ports = free_ports(2)
        self.port = self.port or ports[0]  # kept across restarts; the gRPC port is new each time
        grpc_port = next(port for port in ports if port != self.port)
        cache_dir = self.kubelet.cache_dir_for(self.namespace, self.name)
        cache_dir.mkdir(parents=True, exist_ok=True)
        full_env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        full_env.update(self.kubelet.extra_env)
        full_env.update({"HOSTNAME": self.name, "MODEL_CACHE_DIR": str(cache_dir)})
        full_env.update(env)
        full_env["PORT"] = str(self.port)  # the port we chose wins: pods share 127.0.0.1
        full_env["GRPC_PORT"] = str(grpc_port)  # the contract's fixed gRPC port would collide the same way
        command = list(self.kubelet.command_factory(self.pod, self.container))
        workdir = self.kubelet.state_dir / "pods" / f"{self.namespace}_{self.name}"
        self.process = await ContainerProcess.start(command, env=full_env, log_file=self.log_file, cwd=workdir)
        self._started_at = _timestamp()
        log.info(
            "event=container_started pod=%s/%s pid=%s port=%s", self.namespace, self.name, self.process.pid, self.port
        )
        with contextlib.suppress(KubeApiError, aiohttp.ClientError):  # the process runs even if the API blinks
            await self.kubelet.client.patch(
                self._pod_path,
                {
                    "metadata": {
                        "annotations": {
                            annotation_keys.PORT: str(self.port),
                            annotation_keys.LOG_FILE: str(self.log_file),
                        }
                    }
                },
            )
        await self._report()
        await self.kubelet.record(
            self.pod,
            "Started",
            f"Started container {self.container.get('name')} (pid {self.process.pid}, port {self.port})",
        )
        try:
            exit_code = await self._supervise(self.process)
        finally:
            self._set_ready(False)
        self._last_state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": self._started_at,
                "finishedAt": _timestamp(),
            }
        }
        self.process = None
        return exit_code

    async def _supervise(self, process: ContainerProcess) -> int:
        """Probe until the process exits (or fails its liveness probe and is stopped); its exit code."""
        cap = self.kubelet.max_probe_period
        readiness = Probe.from_spec(self.container.get("readinessProbe"), max_period=cap)
        liveness = Probe.from_spec(self.container.get("livenessProbe"), max_period=cap)
        loop = asyncio.get_running_loop()
        started = loop.time()
        exited = asyncio.ensure_future(process.wait())
        readiness_failures = liveness_failures = 0
        next_liveness = started + (liveness.initial_delay if liveness else 0)
        if readiness is None:
            await self._set_ready_and_report(True)
        try:
            while True:
                interval = cap if self.ready else self.kubelet.fast_probe_seconds
                if self.ready and readiness is not None:
                    interval = readiness.period
                done, _ = await asyncio.wait({exited}, timeout=interval)
                if done:
                    return exited.result()
                now = loop.time()
                assert self.port is not None
                if readiness is not None and now - started >= readiness.initial_delay:
                    if await readiness.check(self.kubelet.http, self.port):
                        readiness_failures = 0
                        if not self.ready:
                            await self._set_ready_and_report(True)
                    else:
                        readiness_failures += 1
                        if self.ready and readiness_failures >= readiness.failure_threshold:
                            await self.kubelet.record(self.pod, "Unhealthy", "Readiness probe failed", warning=True)
                            await self._set_ready_and_report(False)
                if liveness is not None and now >= next_liveness:
                    next_liveness = now + liveness.period
                    alive = await liveness.check(self.kubelet.http, self.port)
                    liveness_failures = 0 if alive else liveness_failures + 1
                    if liveness_failures >= liveness.failure_threshold:
                        log.warning("event=liveness_failed pod=%s/%s", self.namespace, self.name)
                        await self.kubelet.record(
                            self.pod, "Unhealthy", "Liveness probe failed, restarting", warning=True
                        )
                        return await process.stop(self.kubelet.grace_seconds)
        finally:
            if not exited.done():
                exited.cancel()

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self._ready_since = _timestamp()

    async def _set_ready_and_report(self, ready: bool) -> None:
        self._set_ready(ready)
        log.info("event=pod_readiness pod=%s/%s ready=%s", self.namespace, self.name, ready)
        await self._report()
        self.kubelet.wake()

    async def _report(self, *, waiting: tuple[str, str] | None = None, phase: str = "Running") -> None:
        ready = "True" if self.ready else "False"
        since = self._ready_since or self._started_at
        if waiting is not None:
            state: dict[str, Any] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        else:
            state = {"running": {"startedAt": self._started_at}}
        container_status = {
            "name": self.container.get("name", "main"),
            "image": self.container.get("image", ""),
            "imageID": "",
            "containerID": f"local://{self.process.pid}" if self.process is not None else "",
            "ready": self.ready,
            "started": waiting is None,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self._last_state,
        }
        status = {
            "phase": phase,
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "hostIP": POD_IP,
            "startTime": _meta(self.pod).get("creationTimestamp") or self._started_at,
            "qosClass": "BestEffort",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": self._started_at},
                {"type": "Initialized", "status": "True", "lastTransitionTime": self._started_at},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": since},
                {"type": "Ready", "status": ready, "lastTransitionTime": since},
            ],
            "containerStatuses": [container_status],
        }
        try:
            reported = await self.kubelet.client.patch(self._status_path, {"status": status})
        except (KubeApiError, aiohttp.ClientError) as exc:
            log.debug("event=pod_status_failed pod=%s/%s error=%s", self.namespace, self.name, exc)
            return
        self.kubelet._wrote(_PODS, reported)  # the statuses of its ReplicaSet and Deployment follow it now


class LocalKubelet:
    """Runs the Deployments of a Kubernetes API as local processes (``async with`` or start/stop)."""

    def __init__(
        self,
        api_url: str,
        *,
        node_name: str = "local",
        state_dir: str | pathlib.Path | None = None,
        log_dir: str | pathlib.Path | None = None,
        cache_dir: str | pathlib.Path | None = None,
        command_factory: CommandFactory = default_command,
        extra_env: Mapping[str, str] | None = None,
        grace_seconds: float = 5.0,
        resync_seconds: float = 2.0,
        max_probe_period: float = 2.0,
        fast_probe_seconds: float = 0.25,
        max_backoff_seconds: float = 30.0,
        config_retry_seconds: float = 2.0,
        service_proxies: bool = True,
        run_pods: bool = True,
    ) -> None:
        self.api_url = api_url
        self.node_name = node_name
        self.state_dir = pathlib.Path(state_dir or tempfile.mkdtemp(prefix="local-kubelet-"))
        self.log_dir = pathlib.Path(log_dir) if log_dir else self.state_dir / "logs"
        self.shared_cache_dir = pathlib.Path(cache_dir) if cache_dir else None
        self.command_factory = command_factory
        self.extra_env = dict(extra_env or {})
        self.grace_seconds = grace_seconds
        self.resync_seconds = resync_seconds
        self.max_probe_period = max_probe_period
        self.fast_probe_seconds = fast_probe_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.config_retry_seconds = config_retry_seconds
        self.service_proxies = service_proxies
        # False: "hollow" pods (as kubemark's hollow nodes) that report Running and Ready without
        # a process, so that a benchmark measures the operator and the API, not a thousand servers.
        self.run_pods = run_pods
        self._client: KubeClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._workers: dict[str, PodWorker] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._proxies: dict[str, ServiceProxy] = {}
        # Deployment uid -> (template hash, progress seen, when it last progressed), and the timer that
        # looks at it again once its progress deadline has passed
        self._rollouts: dict[str, tuple[str, tuple[int, ...], datetime.datetime]] = {}
        self._deadline_timers: dict[str, asyncio.TimerHandle] = {}
        self._informers = {
            path: _Informer(self._mark_dirty) for path in (_DEPLOYMENTS, _REPLICA_SETS, _PODS, _SERVICES)
        }
        # uids of the objects a watch event or our own write may concern (a pod, its ReplicaSet, its Deployment)
        self._dirty: set[str] = set()
        self._last_full_pass = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            raise RuntimeError("the kubelet is not started")
        return self._client

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the kubelet is not started")
        return self._http

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._wake = asyncio.Event()
        self._client = await KubeClient(self.api_url).__aenter__()
        self._http = aiohttp.ClientSession()
        self._tasks = [
            asyncio.create_task(self._control_loop(), name="kubelet-control"),
            # The HorizontalPodAutoscaler controller's share that needs no metrics (devstack/autoscalers.py).
            asyncio.create_task(autoscalers.run(self._client, self.resync_seconds), name="local-hpa"),
        ]
        for path in self._informers:
            self._informers[path] = _Informer(self._mark_dirty)
            self._tasks.append(
                asyncio.create_task(retry_forever(path, lambda p=path: self._watch(p)), name=f"kubelet-watch:{path}")
            )
        log.info("event=kubelet_started api=%s state_dir=%s", self.api_url, self.state_dir)

    async def stop(self) -> None:
        for timer in self._deadline_timers.values():
            timer.cancel()
        self._deadline_timers.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(
            *(worker.stop(pre_stop=False) for worker in self._workers.values()), return_exceptions=True
        )
        self._workers.clear()
        await asyncio.gather(*self._stopping, return_exceptions=True)
        await asyncio.gather(*(proxy.stop() for proxy in self._proxies.values()), return_exceptions=True)
        self._proxies.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None
        log.info("event=kubelet_stopped")

    async def __aenter__(self) -> LocalKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def wake(self) -> None:
        self._wake.set()

    async def record(self, obj: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        """Post an Event about obj (best effort: a lost event must not stop a pod)."""
        event = kube_events.event_for(
            obj,
            reason,
            message,
            type_="Warning" if warning else "Normal",
            component="local-kubelet",
            host=self.node_name,
        )
        try:
            await self.client.create(resource_path("v1", "events", _meta(obj).get("namespace") or "default"), event)
        except (KubeApiError, aiohttp.ClientError, RuntimeError) as exc:
            log.debug("event=record_failed reason=%s error=%s", reason, exc)

    # -- queries --------------------------------------------------------------------------

    def endpoints(self, namespace: str, name: str) -> list[str]:
        """URLs of the ready pods behind a Service or, when no Service has that name, a Deployment."""
        selector = self._selector_of(namespace, name)
        if selector is None:
            return []
        pods = self._informers[_PODS].objects
        urls = []
        for worker in list(self._workers.values()):  # a copy: tests call this from another thread
            pod = pods.get(worker.uid)
            if pod is None or not worker.ready or not worker.port:
                continue
            meta = _meta(pod)
            if meta.get("namespace") == namespace and deployments.selector_matches(selector, meta.get("labels")):
                urls.append(f"http://127.0.0.1:{worker.port}")
        return sorted(urls)

    def service_url(self, namespace: str, name: str) -> str | None:
        """The stable proxy URL of a Service (it answers 503 while no pod is ready)."""
        service = self._named(_SERVICES, namespace, name)
        proxy = self._proxies.get(_meta(service)["uid"]) if service is not None else None
        return proxy.url if proxy is not None else None

    async def wait_ready(self, namespace: str, name: str, *, count: int = 1, timeout: float = 60.0) -> list[str]:
        """Wait until a Service or Deployment has at least ``count`` ready endpoints; return them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(urls := self.endpoints(namespace, name)) < count:
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{namespace}/{name} has {len(urls)} ready endpoints, wanted {count}; logs are in {self.log_dir}"
                )
            await asyncio.sleep(0.1)
        return urls

    def cache_dir_for(self, namespace: str, name: str) -> pathlib.Path:
        if self.shared_cache_dir is not None:
            return self.shared_cache_dir
        return self.state_dir / "cache" / f"{namespace}_{name}"

    def _named(self, path: str, namespace: str, name: str) -> dict[str, Any] | None:
        objects = list(self._informers[path].objects.values())  # a copy: tests call the queries from another thread
        return next((obj for obj in objects if _name_key(obj) == (namespace, name)), None)

    def _selector_of(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        service = self._named(_SERVICES, namespace, name)
        if service is not None:
            labels = (service.get("spec") or {}).get("selector")
            return {"matchLabels": dict(labels)} if labels else None
        deployment = self._named(_DEPLOYMENTS, namespace, name)
        return (deployment.get("spec") or {}).get("selector") if deployment is not None else None

    async def container_env(self, pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        namespace = _meta(pod).get("namespace") or "default"
        secrets = await self.client.list(resource_path("v1", "secrets", namespace))
        config_maps = await self.client.list(resource_path("v1", "configmaps", namespace))
        return resolve_env(
            container,
            pod,
            secrets={_meta(s)["name"]: s for s in secrets},
            config_maps={_meta(c)["name"]: c for c in config_maps},
            node_name=self.node_name,
        )

    # -- reconciliation -------------------------------------------------------------------

    async def _watch(self, path: str) -> None:
        """List, then follow the watch from the listing's resourceVersion (list again when it ends)."""
        informer = self._informers[path]
        listing = await self.client.get(path)
        informer.replace(listing.get("items") or [])
        self._wake.set()
        params = {
            "watch": "true",
            "resourceVersion": listing["metadata"]["resourceVersion"],
            "allowWatchBookmarks": "true",
        }
        async with self.client.session.get(self.client.base_url + path, params=params) as response:
            if response.status >= 400:
                raise KubeApiError(response.status, await response.text())
            async for line in response.content:
                if not line.strip():
                    continue
                event = orjson.loads(line)
                if event.get("type") == "ERROR":
                    raise KubeApiError(int((event.get("object") or {}).get("code") or 500), event.get("object") or {})
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):  # a change wakes the loop (_mark_dirty)
                    informer.apply(event.get("object"), deleted=event["type"] == "DELETED")

    def _mark_dirty(self, obj: Mapping[str, Any]) -> None:
        """A change to obj may move its own rollout and its owners' (a pod -> its ReplicaSet -> its
        Deployment): the next pass looks at them (at once if none is running)."""
        meta = _meta(obj)
        self._dirty.add(meta.get("uid", ""))
        for ref in meta.get("ownerReferences") or []:
            self._dirty.add(ref.get("uid", ""))
            owner = self._informers[_REPLICA_SETS].objects.get(ref.get("uid", ""))
            for owner_ref in _meta(owner or {}).get("ownerReferences") or []:
                self._dirty.add(owner_ref.get("uid", ""))
        self._wake.set()

    def _wrote(self, path: str, obj: Any) -> None:
        """What our own write returned goes into the local copy at once."""
        self._informers[path].apply(obj)

    async def _control_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError) as exc:  # the API is away; the next pass tries again
                log.warning("event=kubelet_api_unreachable api=%s error=%r", self.api_url, exc)
            except Exception:  # keep running: the next pass starts from the API state again
                log.exception("event=kubelet_reconcile_failed")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that comes with a wake,
            # and stop() would then wait for this loop forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.resync_seconds):
                    await self._wake.wait()

    async def _reconcile(self) -> None:
        """One pass over what changed since the last (every object now and then, for time-based
        conditions): the work of a pass follows the changes, not the size of the cluster."""
        if not all(informer.synced for informer in self._informers.values()):
            return
        loop = asyncio.get_running_loop()
        full = loop.time() - self._last_full_pass >= max(self.resync_seconds, _FULL_PASS_SECONDS)
        if full:
            self._last_full_pass = loop.time()
        dirty, self._dirty = self._dirty, set()
        only = None if full else dirty
        try:
            rolled = self._live(_DEPLOYMENTS, only)
            await _each(rolled, self._rollout_writes)
            await _each(self._live(_REPLICA_SETS, only), self._pod_writes)
            # with self._dirty: the pods this pass created (our writes mark them) start now, not a pass later
            started = self._sync_workers(None if only is None else only | self._dirty)
            if not self.run_pods:  # hollow pods are Ready before the statuses below count them
                await _each(started, PodWorker.report_hollow)
            await self._report_statuses(only, {_meta(obj)["uid"]: _meta(obj).get("generation") for obj in rolled})
            if self.service_proxies:
                await self._sync_proxies(only)
        except BaseException:
            self._dirty |= dirty  # what this pass did not finish, the next one does
            raise

    def _handled(self, path: str, only: set[str] | None) -> list[dict[str, Any]]:
        """The objects of a collection a pass works on: all of them (only=None: a full pass), else those
        whose uids are in only, in name order (a set's order changes from run to run)."""
        objects = self._informers[path].objects
        if only is None:
            return list(objects.values())
        return sorted((objects[uid] for uid in only if uid in objects), key=_name_key)

    def _live(self, path: str, only: set[str] | None) -> list[dict[str, Any]]:
        """_handled without the objects being deleted (nothing to roll out or create for them)."""
        return [obj for obj in self._handled(path, only) if not deployments.is_deleting(obj)]

    def _pods_of(self, replica_sets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [pod for rs in replica_sets for pod in self._informers[_PODS].owned_by(_meta(rs)["uid"])]

    def _rollout_writes(self, deployment: dict[str, Any]) -> Awaitable[None] | None:
        """The Deployment controller's writes for deployment (a ReplicaSet to create or scale), or None."""
        owned = self._informers[_REPLICA_SETS].owned_by(_meta(deployment)["uid"])
        plan = deployments.plan_rollout(deployment, owned, self._pods_of(owned))
        if plan.create is None and not plan.scale:
            return None
        return self._roll(deployment, plan)

    async def _roll(self, deployment: dict[str, Any], plan: deployments.ReplicaSetPlan) -> None:
        namespace = _meta(deployment).get("namespace")
        if plan.create is not None:
            with contextlib.suppress(KubeApiError):  # 409: made by an earlier pass
                created = await self.client.create(resource_path("apps/v1", "replicasets", namespace), plan.create)
                self._wrote(_REPLICA_SETS, created)
                log.info("event=replicaset_created name=%s/%s", namespace, plan.create["metadata"]["name"])
                await self.record(
                    deployment,
                    "ScalingReplicaSet",
                    f"Scaled up replica set "
                    f"{plan.create['metadata']['name']} from 0 to {plan.create['spec']['replicas']}",
                )
        for name, replicas in plan.scale.items():
            self._wrote(
                _REPLICA_SETS,
                await self.client.patch(
                    resource_path("apps/v1", "replicasets", namespace, name), {"spec": {"replicas": replicas}}
                ),
            )
            log.info("event=replicaset_scaled name=%s/%s replicas=%d", namespace, name, replicas)
            await self.record(deployment, "ScalingReplicaSet", f"Scaled replica set {name} to {replicas}")

    def _pod_writes(self, replica_set: dict[str, Any]) -> Awaitable[None] | None:
        """The ReplicaSet controller's writes for replica_set (pods to create or delete), or None."""
        plan = deployments.plan_pods(replica_set, self._informers[_PODS].owned_by(_meta(replica_set)["uid"]))
        if not plan.create and not plan.delete:
            return None
        return self._create_and_delete_pods(replica_set, plan)

    async def _create_and_delete_pods(self, replica_set: dict[str, Any], plan: deployments.PodPlan) -> None:
        namespace = _meta(replica_set).get("namespace")
        for _ in range(plan.create):
            try:
                created = await self.client.create(
                    resource_path("v1", "pods", namespace), deployments.new_pod(replica_set, self.node_name)
                )
            except KubeApiError as exc:  # refused (e.g. its service account is missing): tried again later
                said = str(exc).split(": ", 1)[-1]  # without KubeApiError's "HTTP 403: "
                await self.record(replica_set, "FailedCreate", f"Error creating: {said}", warning=True)
                return
            self._wrote(_PODS, created)
            await self.record(replica_set, "SuccessfulCreate", f"Created pod: {_meta(created)['name']}")
        for name in plan.delete:
            deleted = await self.client.delete(resource_path("v1", "pods", namespace, name))
            if deleted is not None:
                # Gone at once unless the API only marked it (a finalizer, a grace period): the status
                # this pass writes counts the pods that are left, not one the watch has yet to take away.
                self._informers[_PODS].apply(deleted, deleted=not deployments.is_deleting(deleted))
            await self.record(replica_set, "SuccessfulDelete", f"Deleted pod: {name}")

    def _sync_workers(self, only: set[str] | None) -> list[PodWorker]:
        """A worker for each live pod of this node, none for the others: for the pods whose uids are in
        only (those that changed or went away), or with None for every pod and worker. The workers it
        started."""
        pods = self._informers[_PODS].objects
        started = []
        for uid in pods.keys() | self._workers.keys() if only is None else only:
            pod = pods.get(uid)
            node = (pod.get("spec") or {}).get("nodeName") if pod is not None else None
            if pod is not None and (node not in (None, "", self.node_name) or deployments.is_deleting(pod)):
                pod = None  # not one to run here (any more)
            worker = self._workers.get(uid)
            if pod is not None and worker is None:
                self._workers[uid] = worker = PodWorker(self, pod)
                worker.start()
                started.append(worker)
            elif pod is None and worker is not None:
                del self._workers[uid]
                log.info("event=pod_stopping pod=%s/%s", worker.namespace, worker.name)
                # In the background: a stopping pod's preStop pause and drain must not hold up the rollout.
                stopping = asyncio.create_task(worker.stop(), name=f"stop:{worker.namespace}/{worker.name}")
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopping.discard)
        return started

    async def _report_statuses(self, only: set[str] | None, rolled: Mapping[str, Any]) -> None:
        """Status of the ReplicaSets and Deployments of this pass; rolled: the generation of each Deployment
        that this pass's rollout phase saw. A generation that came in after it waits for the next pass
        (its event made it dirty): like the real controller, a status observes a generation only once
        the ReplicaSet for its template exists."""
        await _each(self._handled(_REPLICA_SETS, only), self._replica_set_status_write)
        now = _now()
        await _each(
            (obj for obj in self._handled(_DEPLOYMENTS, only)
             if deployments.is_deleting(obj) or rolled.get(_meta(obj)["uid"]) == _meta(obj).get("generation")),
            lambda obj: self._deployment_status_write(obj, now),
        )  # fmt: skip
        # A deleted Deployment's uid is dirty (its delete event): the next pass forgets its rollout.
        live = self._informers[_DEPLOYMENTS].objects
        for uid in [uid for uid in (self._rollouts if only is None else only) if uid not in live]:
            self._rollouts.pop(uid, None)
            timer = self._deadline_timers.pop(uid, None)
            if timer is not None:
                timer.cancel()

    def _replica_set_status_write(self, replica_set: dict[str, Any]) -> Awaitable[None] | None:
        status = deployments.replica_set_status(replica_set, self._informers[_PODS].owned_by(_meta(replica_set)["uid"]))
        if not _differs(replica_set.get("status"), status):
            return None
        meta = _meta(replica_set)
        path = resource_path("apps/v1", "replicasets", meta.get("namespace"), meta["name"], "status")
        return self._write_status(_REPLICA_SETS, path, replica_set, status)

    def _deployment_status_write(self, deployment: dict[str, Any], now: datetime.datetime) -> Awaitable[None] | None:
        meta = _meta(deployment)
        uid = meta["uid"]
        hash_ = deployments.spec_template_hash(deployment)
        owned = self._informers[_REPLICA_SETS].owned_by(uid)
        owned_pods = self._pods_of(owned)
        # Like the real controller, the deadline counts from the last progress (a new pod
        # created, one more ready), not from the start of the rollout.
        progress = deployments.rollout_progress(deployment, owned, owned_pods)
        seen = self._rollouts.get(uid)
        if seen is None or seen[:2] != (hash_, progress):
            seen = self._rollouts[uid] = (hash_, progress, now)
        status = deployments.deployment_status(deployment, owned, owned_pods, rollout_started=seen[2], now=now)
        self._look_again_at_deadline(deployment, seen[2], now)
        if not _differs(deployment.get("status"), status):
            return None
        path = resource_path("apps/v1", "deployments", meta.get("namespace"), meta["name"], "status")
        return self._write_status(_DEPLOYMENTS, path, deployment, status)

    async def _write_status(self, collection: str, path: str, obj: Mapping[str, Any], status: dict[str, Any]) -> None:
        self._wrote(collection, await self.client.patch(path, {"status": _replacing(obj.get("status"), status)}))

    def _look_again_at_deadline(self, deployment: Mapping[str, Any], since: datetime.datetime,
                                now: datetime.datetime) -> None:  # fmt: skip
        """A rollout without progress gets a pass when its deadline passes (no event would start one)."""
        uid = _meta(deployment)["uid"]
        timer = self._deadline_timers.pop(uid, None)
        if timer is not None:
            timer.cancel()
        deadline = float((deployment.get("spec") or {}).get("progressDeadlineSeconds", 600))
        remaining = deadline - (now - since).total_seconds()
        if remaining < 0:
            return

        def look() -> None:
            self._deadline_timers.pop(uid, None)
            self._dirty.add(uid)
            self._wake.set()

        self._deadline_timers[uid] = asyncio.get_running_loop().call_later(remaining + 0.1, look)

    async def _sync_proxies(self, only: set[str] | None) -> None:
        """A proxy for each Service with a selector, its URL in an annotation: for the Services whose uids
        are in only (those that changed or went away), or with None for every Service and proxy."""
        services = self._informers[_SERVICES].objects
        for uid in services.keys() | self._proxies.keys() if only is None else only:
            service = services.get(uid)
            if service is None or not (service.get("spec") or {}).get("selector") or deployments.is_deleting(service):
                if uid in self._proxies:
                    await self._proxies.pop(uid).stop()
                continue
            meta = _meta(service)
            namespace, name = meta.get("namespace") or "default", meta["name"]
            if uid not in self._proxies:
                proxy = ServiceProxy(
                    lambda ns=namespace, n=name: [int(u.rsplit(":", 1)[1]) for u in self.endpoints(ns, n)]
                )
                await proxy.start()
                self._proxies[uid] = proxy
                log.info("event=service_proxy_started service=%s/%s url=%s", namespace, name, proxy.url)
            url = self._proxies[uid].url
            if (meta.get("annotations") or {}).get(annotation_keys.URL) != url:
                await self.client.patch(
                    resource_path("v1", "services", namespace, name),
                    {"metadata": {"annotations": {annotation_keys.URL: url}}},
                )


def _differs(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    return dict(current or {}) != dict(desired)


def _replacing(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch body that turns current into desired: keys that went away are set to null."""
    return {**{key: None for key in (current or {}) if key not in desired}, **desired}
