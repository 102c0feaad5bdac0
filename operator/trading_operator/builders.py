"""Pure builders of the Kubernetes objects a TradingModel owns: no I/O, unit-tested as dicts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from model_store.layout import Stage
from pod_contract import GRPC_PORT, MODEL_CACHE_DIR, PRESTOP_SECONDS, PodModel, render_env, termination_grace_seconds
from trading_operator import MANAGER
from trading_operator.spec import TradingModelSpec

SERVING_APP = "tradingmodel-serving"
CACHE_DIR = MODEL_CACHE_DIR.default
SPEC_HASH_ANNOTATION = "trading.io/spec-hash"
# V2 inference over gRPC: the container port the pod contract gives it, and the Service port (KServe's
# and MLServer's gRPC port too). appProtocol tells meshes and ingresses it is HTTP/2 without TLS.
SERVING_GRPC_PORT = int(GRPC_PORT.default)
GRPC_APP_PROTOCOL = "kubernetes.io/h2c"
DEFAULT_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


def labels(name: str, model: TradingModelSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": SERVING_APP,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGER,
        "trading.io/ticker": model.ticker,
        "trading.io/stage": model.stage.lower(),
    }


def selector(name: str) -> dict[str, str]:
    # Immutable in a Deployment, so it holds only what never changes for this TradingModel.
    return {"app.kubernetes.io/name": SERVING_APP, "app.kubernetes.io/instance": name}


def serving_env(name: str, model: TradingModelSpec, digest: str, port: int) -> list[dict[str, Any]]:
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
    )
    return render_env(pod, model.secret_name)


def build_deployment(
    name: str, namespace: str, model: TradingModelSpec, digest: str, image: str, port: int
) -> dict[str, Any]:
    """The serving Deployment: pods pin the exact version and digest, so a promotion is an
    ordinary rollout and readiness means "this model is loaded and verified"."""
    replicas = 0 if model.archived else model.replicas
    pod_labels = {**labels(name, model), "trading.io/version": model.version}
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    container = {
        "name": "serving",
        "image": model.image or image,
        "command": ["python", "-m", "model_serving"],
        "ports": [
            {"name": "http", "containerPort": port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": SERVING_GRPC_PORT, "protocol": "TCP"},
        ],
        "env": serving_env(name, model, digest, port),
        "resources": model.resources or DEFAULT_RESOURCES,
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
    spec = {
        "replicas": replicas,
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": selector(name)},
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
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "fsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "terminationGracePeriodSeconds": termination_grace_seconds(),
                "volumes": [
                    {"name": "model-cache", "emptyDir": {"sizeLimit": "2Gi"}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                ],
            },
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(name, model),
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(spec)},
        },
        "spec": spec,
    }


def build_service(name: str, namespace: str, model: TradingModelSpec, port: int) -> dict[str, Any]:
    spec = {
        "type": "ClusterIP",
        "selector": selector(name),
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
    return (observed, int(deployment.get("spec", {}).get("replicas", 1)), *(int(status.get(f) or 0) for f in fields))


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
