"""A container's environment as the kubelet resolves it (pure).

``value`` (with ``$(VAR)`` expansion of earlier variables), ``valueFrom.secretKeyRef``,
``valueFrom.configMapKeyRef``, ``valueFrom.fieldRef`` (metadata.name, metadata.namespace,
metadata.uid, metadata.labels['k'], metadata.annotations['k'], spec.nodeName, status.podIP,
status.hostIP, spec.serviceAccountName) and ``envFrom`` (secretRef, configMapRef, prefix).
A missing Secret, ConfigMap or key that is not ``optional`` is a ``CreateContainerConfigError``,
as on a real node; the message says which one.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

POD_IP = "127.0.0.1"
_EXPANSION_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")
_FIELD_RE = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


class EnvError(Exception):
    """The container cannot start: a reference does not resolve (reason CreateContainerConfigError)."""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known variables are replaced, ``$$`` escapes, unknown stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _EXPANSION_RE.sub(replace, value)


def _secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode("utf-8", errors="replace")
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    return None


def _config_value(config_map: Mapping[str, Any], key: str) -> str | None:
    data = config_map.get("data") or {}
    return str(data[key]) if key in data else None


def field_ref(pod: Mapping[str, Any], path: str, node_name: str) -> str:
    meta = pod.get("metadata") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName") or node_name,
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName") or "default",
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
        "status.hostIP": POD_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    match = _FIELD_RE.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise EnvError(f"unsupported fieldRef.fieldPath {path!r}")


def _lookup(
    kind: str,
    ref: Mapping[str, Any],
    objects: Mapping[str, Mapping[str, Any]],
    read: Any,
) -> str | None:
    name = ref.get("name", "")
    key = ref.get("key", "")
    optional = bool(ref.get("optional"))
    obj = objects.get(name)
    if obj is None:
        if optional:
            return None
        raise EnvError(f'{kind} "{name}" not found')
    value = read(obj, key)
    if value is None and not optional:
        raise EnvError(f"couldn't find key {key} in {kind} {name}")
    return value


def resolve_env(
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    *,
    secrets: Mapping[str, Mapping[str, Any]],
    config_maps: Mapping[str, Mapping[str, Any]],
    node_name: str = "local",
) -> dict[str, str]:
    """The environment variables of one container, in the order Kubernetes applies them."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref_field, objects, read = (
            ("secret", "secretRef", secrets, _secret_value)
            if "secretRef" in source
            else ("configmap", "configMapRef", config_maps, _config_value)
        )
        ref = source.get(ref_field) or {}
        obj = objects.get(ref.get("name", ""))
        if obj is None:
            if not ref.get("optional"):
                raise EnvError(f'{kind} "{ref.get("name")}" not found')
            continue
        for key in {**(obj.get("data") or {}), **(obj.get("stringData") or {})}:
            env[source.get("prefix", "") + key] = read(obj, key) or ""
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        value_from = var.get("valueFrom") or {}
        if "secretKeyRef" in value_from:
            value = _lookup("secret", value_from["secretKeyRef"], secrets, _secret_value)
        elif "configMapKeyRef" in value_from:
            value = _lookup("configmap", value_from["configMapKeyRef"], config_maps, _config_value)
        elif "fieldRef" in value_from:
            value = field_ref(pod, value_from["fieldRef"].get("fieldPath", ""), node_name)
        elif "resourceFieldRef" in value_from:
            value = None  # no resource accounting on a laptop
        else:
            value = ""
        if value is not None:
            env[name] = value
    return env
