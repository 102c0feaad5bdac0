"""Pure builders of the Kubernetes objects a TradingModel owns: no I/O, unit-tested as dicts."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_store.layout import Stage
from pod_contract import (
    GRPC_PORT,
    MODEL_CACHE_DIR,
    PRESTOP_SECONDS,
    PodModel,
    ShadowPin,
    render_env,
    termination_grace_seconds,
)
from trading_operator import GROUP, MANAGER
from trading_operator.quantity import InvalidQuantity, parse_quantity
from trading_operator.spec import TradingModelSpec

SERVING_APP = "tradingmodel-serving"
CACHE_DIR = MODEL_CACHE_DIR.default
SPEC_HASH_ANNOTATION = "trading.io/spec-hash"
# The TradingModel owning an object. Not app.kubernetes.io/instance: Argo CD tracks (and prunes)
# what carries that label with an Application's name, and a TradingModel may share one's name.
NAME_LABEL = f"tradingmodel.{GROUP}/name"
DROPPED_LABELS = ("app.kubernetes.io/instance",)  # earlier versions of this operator set it on the owned objects
CACHE_SIZE, TMP_SIZE = "2Gi", "256Mi"
# Limits on every resource (a platform's LimitRange/admission policies ask for them); the disk
# limit covers the model cache and /tmp emptyDirs plus the container's logs.
# The per-pod rate of prediction requests, as a metrics adapter (prometheus-adapter) serves it from
# the pods' tradingmodel_requests_total: see manifests/prometheus/adapter-rules.yaml.
REQUESTS_PER_SECOND_METRIC = "tradingmodel_requests_per_second"
# V2 inference over gRPC: the container port the pod contract gives it, and the Service port (KServe's
# and MLServer's gRPC port too). appProtocol tells meshes and ingresses it is HTTP/2 without TLS.
SERVING_GRPC_PORT = int(GRPC_PORT.default)
GRPC_APP_PROTOCOL = "kubernetes.io/h2c"
DEFAULT_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "256Mi"},
    "limits": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "3Gi"},
}
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600  # Kubernetes' own default


def labels(name: str, model: TradingModelSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": SERVING_APP,
        "app.kubernetes.io/managed-by": MANAGER,
        NAME_LABEL: name,
        "trading.io/ticker": model.ticker,
        "trading.io/stage": model.stage.lower(),
    }


def selector(name: str) -> dict[str, str]:
    # Immutable in a Deployment, so it holds only what never changes for this TradingModel.
    return {"app.kubernetes.io/name": SERVING_APP, NAME_LABEL: name}


def live_selector(name: str, live: Mapping[str, Any] | None) -> dict[str, str]:
    """The pods' selector: a Deployment's is immutable, so one made by an older operator (which
    selected on app.kubernetes.io/instance) keeps its own; every other object follows it."""
    match = ((live or {}).get("spec") or {}).get("selector", {}).get("matchLabels")
    return dict(match) if match else selector(name)


def serving_resources(custom: Mapping[str, Any]) -> dict[str, Any]:
    """spec.serving.resources over the defaults, key by key. A default never contradicts what was
    given: one below a given request, or above a given limit, takes that value (a cluster refuses
    a request above its limit). spec.py has refused unparseable or contradictory given values."""
    given_requests, given_limits = dict(custom.get("requests") or {}), dict(custom.get("limits") or {})
    requests = {**DEFAULT_RESOURCES["requests"], **given_requests}
    limits = {**DEFAULT_RESOURCES["limits"], **given_limits}
    for key in requests.keys() & limits.keys():
        with contextlib.suppress(InvalidQuantity):
            if parse_quantity(requests[key]) <= parse_quantity(limits[key]):
                continue
            if key in given_requests and key not in given_limits:
                limits[key] = requests[key]
            elif key in given_limits and key not in given_requests:
                requests[key] = limits[key]
    return {**custom, "requests": requests, "limits": limits}


def pod_identity(model: TradingModelSpec) -> dict[str, Any]:
    """No API token in the pods (they never call the API); the service account only when named,
    e.g. for IRSA, and the pull secrets of a private registry."""
    identity: dict[str, Any] = {"automountServiceAccountToken": False}
    if model.service_account:
        identity["serviceAccountName"] = model.service_account
    if model.image_pull_secrets:
        identity["imagePullSecrets"] = [{"name": secret} for secret in model.image_pull_secrets]
    return identity


def spread(match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """Replicas on different nodes where there are any (a drain or a lost node takes one), but
    scheduled anyway on a single-node cluster; counted per revision during a rollout."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(match_labels)},
            "matchLabelKeys": ["pod-template-hash"],
        }
    ]


def serving_env(
    name: str, model: TradingModelSpec, digest: str, port: int, shadow: ShadowPin | None = None
) -> list[dict[str, Any]]:
    pod = PodModel(
        bucket=model.bucket,
        endpoint_url=model.endpoint,
        region=model.region,
        ticker=model.ticker,
        asset_class=model.location.asset_class,
        stage=Stage.PRODUCTION if model.archived else model.s3_stage,  # archived: zero pods anyway
        version=model.version,
        digest=digest,
        model_name=name,
        cache_dir=Path(CACHE_DIR),
        port=port,
        grpc_port=SERVING_GRPC_PORT,
        tickers=model.tickers,
        shadow=shadow,
    )
    return render_env(pod, model.secret_name)


def build_deployment(
    name: str,
    namespace: str,
    model: TradingModelSpec,
    digest: str,
    image: str,
    port: int,
    shadow: ShadowPin | None = None,
    *,
    match_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The serving Deployment: pods pin the exact version and digest, so a promotion is an
    ordinary rollout and readiness means "this model is loaded and verified". A shadow challenger
    is pinned the same way (a new challenger is a rollout too)."""
    replicas = 0 if model.archived else model.replicas
    match = dict(match_labels or selector(name))
    pod_labels = {**labels(name, model), **match, "trading.io/version": model.version}
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    container = {
        "name": "serving",
        "image": model.image or image,
        # Every start checks the registry: a re-pushed tag is seen, and a pod pulls only with the
        # pull secrets it is given (IfNotPresent would run an image another pod pulled).
        "imagePullPolicy": "Always",
        "command": ["python", "-m", "model_serving"],
        "ports": [
            {"name": "http", "containerPort": port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": SERVING_GRPC_PORT, "protocol": "TCP"},
        ],
        "env": serving_env(name, model, digest, port, shadow),
        "resources": serving_resources(model.resources),
        "readinessProbe": probe,
        "startupProbe": {**probe, "failureThreshold": 60, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
        # A stopping pod keeps answering while the endpoints drop it; then SIGTERM drains it (pod_contract).
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "volumeMounts": [{"name": "model-cache", "mountPath": CACHE_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    spec: dict[str, Any] = {
        "replicas": replicas,
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": model.progress_deadline_seconds or DEFAULT_PROGRESS_DEADLINE_SECONDS,
        "selector": {"matchLabels": match},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    "trading.io/digest": digest,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(port),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": {
                "containers": [container],
                **pod_identity(model),
                "topologySpreadConstraints": spread(match),
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "fsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "terminationGracePeriodSeconds": termination_grace_seconds(),
                "volumes": [
                    {"name": "model-cache", "emptyDir": {"sizeLimit": CACHE_SIZE}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
                ],
            },
        },
    }
    if model.autoscaling is not None and not model.archived:
        del spec["replicas"]  # the HorizontalPodAutoscaler's to set (build_autoscaler)
    return _owned("apps/v1", "Deployment", name, namespace, model, spec)


def build_autoscaler(name: str, namespace: str, model: TradingModelSpec) -> dict[str, Any] | None:
    """The HorizontalPodAutoscaler of the serving Deployment (autoscaling/v2), or None when the
    spec asks for none or the model is archived (archived serves nothing)."""
    scaling = model.autoscaling
    if scaling is None or model.archived:
        return None
    if scaling.requests_per_second is not None:
        metric: dict[str, Any] = {
            "type": "Pods",
            "pods": {
                "metric": {"name": REQUESTS_PER_SECOND_METRIC},
                "target": {"type": "AverageValue", "averageValue": quantity(scaling.requests_per_second)},
            },
        }
    else:
        target = {"type": "Utilization", "averageUtilization": scaling.cpu_utilization}
        metric = {"type": "Resource", "resource": {"name": "cpu", "target": target}}
    spec = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": [metric],
    }
    return _owned("autoscaling/v2", "HorizontalPodAutoscaler", name, namespace, model, spec)


def quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as they are, fractions in thousandths ("2500m")."""
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def selector_text(name: str) -> str:
    """The serving pods' selector as a label selector string (the scale subresource's status.selector)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector(name).items()))


def build_service(
    name: str, namespace: str, model: TradingModelSpec, port: int, *, match_labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    spec = {
        "type": "ClusterIP",
        "selector": dict(match_labels or selector(name)),
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {
                "name": "grpc",
                "port": SERVING_GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": GRPC_APP_PROTOCOL,
            },
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(name, model),
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(spec), "trading.io/target-port": str(port)},
        },
        "spec": spec,
    }


def build_disruption_budget(
    name: str, namespace: str, model: TradingModelSpec, *, match_labels: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """With two replicas or more, a node drain evicts one serving pod at a time; None below two (a
    budget over one pod would block every drain). Pods that are not ready (a stuck rollout) may
    always be evicted: they serve nothing, and keeping them would block the drain for ever."""
    if model.archived or model.replicas < 2:
        return None
    spec = {
        "maxUnavailable": 1,
        "selector": {"matchLabels": dict(match_labels or selector(name))},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    return _owned("policy/v1", "PodDisruptionBudget", name, namespace, model, spec)


def build_network_policy(
    name: str, namespace: str, model: TradingModelSpec, port: int, *, match_labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Ingress to the serving pods on their HTTP port (predictions, health, /metrics) and their gRPC
    port only, from anywhere: clients and Prometheus live in namespaces we cannot name. Egress stays
    open (S3)."""
    spec = {
        "podSelector": {"matchLabels": dict(match_labels or selector(name))},
        "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": port}, {"protocol": "TCP", "port": SERVING_GRPC_PORT}]}],
    }
    return _owned("networking.k8s.io/v1", "NetworkPolicy", name, namespace, model, spec)


def _owned(
    api_version: str, kind: str, name: str, namespace: str, model: TradingModelSpec, spec: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(name, model),
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(spec)},
        },
        "spec": spec,
    }


def spec_hash(spec: dict[str, Any]) -> str:
    """Compared with the live object's annotation, so we patch only what we changed."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def rollout_progress(deployment: dict[str, Any]) -> tuple[int, ...] | None:
    """What an owner's status follows of its Deployment (the generation its status describes,
    desired, total, updated and ready replicas), or None while the status does not describe the
    spec yet (the controller has not observed this generation: a write just made, ours or anyone's).
    With the generation in it, a rollout whose in-between states were never seen (events coalesce)
    still ends in a progress that differs from the one before it."""
    status = deployment.get("status") or {}
    generation = int(deployment.get("metadata", {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if observed < generation:
        return None
    fields = ("replicas", "updatedReplicas", "readyReplicas")
    counts = (int(status.get(f) or 0) for f in fields)
    stalled = int(progress_deadline_exceeded(deployment) is not None)  # no count moves when it stalls
    return (observed, int(deployment.get("spec", {}).get("replicas", 1)), *counts, stalled)


def before_new_pods(deployment: dict[str, Any]) -> bool:
    """The controller observed the spec but no pod of it exists yet, and the rollout is neither
    complete nor stalled: the status can only say what the pass that wrote this spec said already
    ("0/N pods ready with vX"), so no pass is needed (one Deployment event in four or five)."""
    status = deployment.get("status") or {}
    observed = int(status.get("observedGeneration") or 0) >= int(deployment.get("metadata", {}).get("generation") or 0)
    return observed and int(status.get("updatedReplicas") or 0) == 0 and not rollout_ended(deployment)


def rollout_ended(deployment: dict[str, Any]) -> bool:
    """The rollout of the Deployment's spec is complete, or stalled past its progress deadline."""
    return rollout_state(deployment)[2] or progress_deadline_exceeded(deployment) is not None


def rollout_state(deployment: dict[str, Any] | None) -> tuple[int, int, bool]:
    """(desired replicas, ready replicas, rollout complete) as the Deployment reports them."""
    if deployment is None:
        return 0, 0, False
    desired = int(deployment.get("spec", {}).get("replicas", 1))
    status = deployment.get("status") or {}
    generation = int(deployment.get("metadata", {}).get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    complete = observed >= generation and updated == desired and ready == desired and total == desired
    return desired, ready, complete


def progress_deadline_exceeded(deployment: Mapping[str, Any] | None) -> str | None:
    """The Deployment controller's message when the rollout of the Deployment's current spec made
    no progress for progressDeadlineSeconds (condition Progressing=False, ProgressDeadlineExceeded)."""
    if deployment is None:
        return None
    status = deployment.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int((deployment.get("metadata") or {}).get("generation") or 0):
        return None  # a condition about an earlier spec
    for item in status.get("conditions") or []:
        if item.get("type") == "Progressing" and item.get("reason") == "ProgressDeadlineExceeded":
            return str(item.get("message") or "progress deadline exceeded")
    return None
