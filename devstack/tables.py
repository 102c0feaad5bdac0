"""Server-side Table responses (``Accept: application/json;as=Table;g=meta.k8s.io``), pure.

kubectl asks the server how to print a list; the server answers with columns: for custom
resources they come from the CRD's ``additionalPrinterColumns``, for built-in kinds from the
printers the real API server compiles in (a few are reproduced here).
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devstack import jsonpath
from devstack.selectors import format_label_selector, selector_from_label_selector

_NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources "
    "may allow a client to request the generation of an appropriate name automatically."
)
_AGE_DESCRIPTION = "CreationTimestamp is a timestamp representing the server time when this object was created."


@dataclass(frozen=True)
class Column:
    name: str
    type: str = "string"  # string | integer | number | boolean | date
    description: str = ""
    priority: int = 0
    format: str = ""
    json_path: str | None = None  # CRD columns
    compute: Callable[[Mapping[str, Any]], Any] | None = None  # built-in columns

    def definition(self) -> dict[str, Any]:
        # Date columns are rendered as ages on the server, so kubectl sees strings.
        return {
            "name": self.name,
            "type": "string" if self.type == "date" else self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }

    def cell(self, obj: Mapping[str, Any], now: datetime.datetime) -> Any:
        if self.compute is not None:
            value = self.compute(obj)
        elif self.json_path is not None:
            try:
                found = jsonpath.find(self.json_path, obj)
            except jsonpath.JSONPathError:
                found = []
            found = [v for v in found if v is not None]
            if not found:
                return None
            value = found[0] if len(found) == 1 else " ".join(_to_text(v) for v in found)
        else:
            return None
        if self.type == "date":
            return age(value, now) if value else None
        if self.type == "string" and value is not None and not isinstance(value, str):
            return _to_text(value)
        return value


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery's duration.HumanDuration: 45s, 3m20s, 15m, 5h3m, 3d4h, 2y10d."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    total = int(seconds)
    if total < 120:
        return f"{total}s"
    minutes = total // 60
    if minutes < 10:
        rest = total % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_timestamp(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


def age(timestamp: Any, now: datetime.datetime) -> str | None:
    parsed = parse_timestamp(timestamp) if isinstance(timestamp, str) else None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return human_duration((now - parsed).total_seconds())


def _get(obj: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


NAME = Column("Name", format="name", description=_NAME_DESCRIPTION, compute=lambda o: _get(o, "metadata", "name"))
AGE = Column("Age", type="date", description=_AGE_DESCRIPTION, json_path=".metadata.creationTimestamp")


def crd_columns(printer_columns: Sequence[Mapping[str, Any]]) -> list[Column]:
    """Name plus the CRD's additionalPrinterColumns (or Name, Age when it declares none)."""
    if not printer_columns:
        return [NAME, AGE]
    return [NAME] + [
        Column(
            name=spec["name"],
            type=spec.get("type", "string"),
            description=spec.get("description", ""),
            priority=int(spec.get("priority", 0)),
            format=spec.get("format", ""),
            json_path=spec["jsonPath"],
        )
        for spec in printer_columns
    ]


def _containers(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _get(obj, "spec", "template", "spec", "containers", default=[]) or []


def _selector(obj: Mapping[str, Any]) -> str:
    try:
        return format_label_selector(selector_from_label_selector(_get(obj, "spec", "selector")))
    except (ValueError, KeyError, AttributeError):
        return ""


def _pod_status(pod: Mapping[str, Any]) -> str:
    if _get(pod, "metadata", "deletionTimestamp"):
        return "Terminating"
    for status in _get(pod, "status", "containerStatuses", default=[]) or []:
        state = status.get("state") or {}
        reason = (state.get("waiting") or {}).get("reason") or (state.get("terminated") or {}).get("reason")
        if reason:
            return str(reason)
    return str(_get(pod, "status", "phase", default="Pending"))


def _pod_ready(pod: Mapping[str, Any]) -> str:
    statuses = _get(pod, "status", "containerStatuses", default=[]) or []
    total = len(_get(pod, "spec", "containers", default=[]) or []) or len(statuses)
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _service_ports(svc: Mapping[str, Any]) -> str:
    ports = _get(svc, "spec", "ports", default=[]) or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _event_object(event: Mapping[str, Any]) -> str:
    involved = event.get("involvedObject") or event.get("regarding") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


def _event_last_seen(event: Mapping[str, Any]) -> Any:
    return (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or _get(event, "series", "lastObservedTime")
        or _get(event, "metadata", "creationTimestamp")
    )


def _hpa_reference(hpa: Mapping[str, Any]) -> str:
    ref = _get(hpa, "spec", "scaleTargetRef", default={}) or {}
    return f"{ref.get('kind')}/{ref.get('name')}"


def _hpa_targets(hpa: Mapping[str, Any]) -> str:
    """As kubectl shows them: "cpu: <unknown>/80%" (no metrics server here measures anything)."""
    shown = []
    for metric in _get(hpa, "spec", "metrics", default=[]) or []:
        source = metric.get(str(metric.get("type", "")).lower()) or {}
        target = source.get("target") or {}
        name = source.get("name") or (source.get("metric") or {}).get("name") or "?"
        if "averageUtilization" in target:
            shown.append(f"{name}: <unknown>/{target['averageUtilization']}%")
        else:
            shown.append(f"{name}: <unknown>/{target.get('averageValue', target.get('value', '?'))}")
    return ", ".join(shown) or "<none>"


def _wide(name: str, compute: Callable[[Mapping[str, Any]], Any]) -> Column:
    return Column(name, priority=1, compute=compute)


# The -o wide columns of the kinds with a pod template.
_TEMPLATE_WIDE = [
    _wide("Containers", lambda o: ",".join(str(c.get("name")) for c in _containers(o))),
    _wide("Images", lambda o: ",".join(str(c.get("image")) for c in _containers(o))),
    _wide("Selector", _selector),
]


_BUILTIN: dict[str, list[Column]] = {
    "Deployment": [
        NAME,
        Column(
            "Ready",
            compute=lambda o: (
                f"{_get(o, 'status', 'readyReplicas', default=0) or 0}/{_get(o, 'spec', 'replicas', default=1)}"
            ),
        ),
        Column("Up-to-date", type="integer", compute=lambda o: _get(o, "status", "updatedReplicas", default=0)),
        Column("Available", type="integer", compute=lambda o: _get(o, "status", "availableReplicas", default=0)),
        AGE,
        *_TEMPLATE_WIDE,
    ],
    "ReplicaSet": [
        NAME,
        Column("Desired", type="integer", compute=lambda o: _get(o, "spec", "replicas", default=1)),
        Column("Current", type="integer", compute=lambda o: _get(o, "status", "replicas", default=0)),
        Column("Ready", type="integer", compute=lambda o: _get(o, "status", "readyReplicas", default=0)),
        AGE,
        *_TEMPLATE_WIDE,
    ],
    "Pod": [
        NAME,
        Column("Ready", compute=_pod_ready),
        Column("Status", compute=_pod_status),
        Column(
            "Restarts",
            type="integer",
            compute=lambda o: sum(
                int(s.get("restartCount", 0)) for s in _get(o, "status", "containerStatuses", default=[]) or []
            ),
        ),
        AGE,
        _wide("IP", lambda o: _get(o, "status", "podIP")),
        _wide("Node", lambda o: _get(o, "spec", "nodeName")),
    ],
    "Service": [
        NAME,
        Column("Type", compute=lambda o: _get(o, "spec", "type", default="ClusterIP")),
        Column("Cluster-IP", compute=lambda o: _get(o, "spec", "clusterIP", default="<none>")),
        Column("External-IP", compute=lambda o: "<none>"),
        Column("Port(s)", compute=_service_ports),
        AGE,
        _wide("Selector", lambda o: ",".join(f"{k}={v}" for k, v in (_get(o, "spec", "selector") or {}).items())),
    ],
    "HorizontalPodAutoscaler": [
        NAME,
        Column("Reference", compute=_hpa_reference),
        Column("Targets", compute=_hpa_targets),
        Column("MinPods", type="integer", compute=lambda o: _get(o, "spec", "minReplicas", default=1)),
        Column("MaxPods", type="integer", compute=lambda o: _get(o, "spec", "maxReplicas")),
        Column("Replicas", type="integer", compute=lambda o: _get(o, "status", "currentReplicas", default=0)),
        AGE,
    ],
    "Namespace": [NAME, Column("Status", compute=lambda o: _get(o, "status", "phase", default="Active")), AGE],
    "Secret": [
        NAME,
        Column("Type", compute=lambda o: o.get("type", "Opaque")),
        Column("Data", type="integer", compute=lambda o: len(o.get("data") or {})),
        AGE,
    ],
    "ConfigMap": [
        NAME,
        Column("Data", type="integer", compute=lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
        AGE,
    ],
    "Event": [
        Column("Last Seen", type="date", compute=_event_last_seen),
        Column("Type", compute=lambda o: o.get("type")),
        Column("Reason", compute=lambda o: o.get("reason")),
        Column("Object", compute=_event_object),
        Column("Message", compute=lambda o: o.get("message") or o.get("note")),
        _wide("Source", lambda o: _get(o, "source", "component") or o.get("reportingController")),
        _wide("Count", lambda o: o.get("count") or _get(o, "series", "count")),
        _wide("Name", lambda o: _get(o, "metadata", "name")),
    ],
    "CustomResourceDefinition": [
        NAME,
        Column("Created At", format="date-time", compute=lambda o: _get(o, "metadata", "creationTimestamp")),
    ],
}


def builtin_columns(kind: str) -> list[Column]:
    return _BUILTIN.get(kind, [NAME, AGE])


@functools.lru_cache(maxsize=256)
def wants_table(accept: str | None) -> str | None:
    """The meta.k8s.io Table version the client accepts first (v1, v1beta1), or None (remembered: it
    is asked for every response, and clients send the same few Accept headers)."""
    for media in (accept or "").split(","):
        params = dict(part.strip().split("=", 1) for part in media.split(";")[1:] if "=" in part)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return params.get("v", "v1")
    return None


def to_table(
    objects: Iterable[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    resource_version: str,
    include_object: str = "Metadata",
    version: str = "v1",
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    now = now or datetime.datetime.now(datetime.UTC)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [column.cell(obj, now) for column in columns]}
        if include_object == "Object":
            row["object"] = dict(obj)
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": f"meta.k8s.io/{version}",
                "metadata": dict(obj.get("metadata") or {}),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [column.definition() for column in columns],
        "rows": rows,
    }
