"""Pure builders of the Kubernetes objects a TradingModel owns: no I/O, unit-tested as dicts."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trading_operator import MANAGER
from trading_operator.spec import ModelSpec

SERVING_APP = "tradingmodel-serving"
CACHE_DIR = "/var/cache/models"
SPEC_HASH_ANNOTATION = "trading.io/spec-hash"
DEFAULT_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


def labels(name: str, model: ModelSpec) -> dict[str, str]:
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


def serving_env(name: str, model: ModelSpec, digest: str, port: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "MODEL_NAME", "value": name},
        {"name": "MODEL_TICKER", "value": model.ticker},
        {"name": "MODEL_ASSET_CLASS", "value": model.asset_class},
        {"name": "MODEL_STAGE", "value": model.s3_stage.value if not model.archived else "production"},
        {"name": "MODEL_VERSION", "value": model.version},
        {"name": "MODEL_DIGEST", "value": digest},
        {"name": "S3_BUCKET", "value": model.bucket},
        {"name": "AWS_REGION", "value": model.region},
        {"name": "MODEL_CACHE_DIR", "value": CACHE_DIR},
        {"name": "PORT", "value": str(port)},
        {"name": "OMP_NUM_THREADS", "value": "1"},
    ]
    if model.endpoint:
        env.append({"name": "S3_ENDPOINT_URL", "value": model.endpoint})
    if model.secret_name:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": model.secret_name, "key": key}}})
    return env


def build_deployment(
    name: str, namespace: str, model: ModelSpec, digest: str, image: str, port: int
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
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": serving_env(name, model, digest, port),
        "resources": model.resources or DEFAULT_RESOURCES,
        "readinessProbe": probe,
        "startupProbe": {**probe, "failureThreshold": 60, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
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
                "terminationGracePeriodSeconds": 30,
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


def build_service(name: str, namespace: str, model: ModelSpec, port: int) -> dict[str, Any]:
    spec = {
        "type": "ClusterIP",
        "selector": selector(name),
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
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
