"""Core v1 Events about an object, as the controllers and the kubelet record them (pure)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any


def event_for(
    obj: Mapping[str, Any],
    reason: str,
    message: str,
    *,
    type_: str = "Normal",
    component: str,
    host: str = "local",
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """An Event that ``kubectl describe`` shows under the object (matched by kind, name and uid)."""
    meta = obj.get("metadata") or {}
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component, "host": host},
        "reportingComponent": component,
        "reportingInstance": host,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
