"""The API server's defaults for the built-in kinds the stack uses (pure).

A real API server fills in probe timings, restart policies, Service types and rollout
strategies on every write. Clients see them on read: an operator that compares its desired
Deployment with the live one meets the same defaults here as on a cluster, and
``kubectl describe`` prints real values instead of zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_PROBE_DEFAULTS = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}


def _set(obj: dict[str, Any], key: str, value: Any) -> Any:
    if obj.get(key) is None:
        obj[key] = value
    return obj[key]


def _probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    for key, value in _PROBE_DEFAULTS.items():
        _set(probe, key, value)
    if isinstance(probe.get("httpGet"), dict):
        _set(probe["httpGet"], "scheme", "HTTP")


def _container(container: Any) -> None:
    if not isinstance(container, dict):
        return
    image = str(container.get("image", ""))
    latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
    _set(container, "imagePullPolicy", "Always" if latest else "IfNotPresent")
    _set(container, "terminationMessagePath", "/dev/termination-log")
    _set(container, "terminationMessagePolicy", "File")
    _set(container, "resources", {})
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            _set(port, "protocol", "TCP")
    for name in ("readinessProbe", "livenessProbe", "startupProbe"):
        _probe(container.get(name))


def pod_spec(spec: Any) -> None:
    if not isinstance(spec, dict):
        return
    _set(spec, "restartPolicy", "Always")
    _set(spec, "terminationGracePeriodSeconds", 30)
    _set(spec, "dnsPolicy", "ClusterFirst")
    _set(spec, "schedulerName", "default-scheduler")
    _set(spec, "securityContext", {})
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            _container(container)


def _template(spec: dict[str, Any]) -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        pod_spec(template.get("spec"))


def deployment(obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    _set(spec, "replicas", 1)
    _set(spec, "revisionHistoryLimit", 10)
    _set(spec, "progressDeadlineSeconds", 600)
    strategy = _set(spec, "strategy", {})
    if isinstance(strategy, dict):
        _set(strategy, "type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = _set(strategy, "rollingUpdate", {})
            _set(rolling, "maxSurge", "25%")
            _set(rolling, "maxUnavailable", "25%")
    _template(spec)


def replica_set(obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if isinstance(spec, dict):
        _set(spec, "replicas", 1)
        _template(spec)


def pod(obj: dict[str, Any]) -> None:
    pod_spec(obj.get("spec"))


def service(obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    _set(spec, "type", "ClusterIP")
    _set(spec, "sessionAffinity", "None")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            _set(port, "protocol", "TCP")
            _set(port, "targetPort", port.get("port"))


BY_KIND: dict[tuple[str, str], Callable[[dict[str, Any]], None]] = {
    ("apps", "Deployment"): deployment,
    ("apps", "ReplicaSet"): replica_set,
    ("", "Pod"): pod,
    ("", "Service"): service,
}


def apply(group: str, kind: str, obj: dict[str, Any]) -> None:
    """Fill in the defaults of a built-in kind in place (other kinds are left alone)."""
    defaulter = BY_KIND.get((group, kind))
    if defaulter is not None:
        defaulter(obj)
