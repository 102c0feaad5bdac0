"""``/openapi/v3`` documents, just enough for kubectl (pure functions).

kubectl 1.27+ validates with ``--validate=strict`` by default. It asks ``/openapi/v3`` whether
the PATCH operation of a kind accepts the ``fieldValidation`` query parameter; when it does,
kubectl sends ``fieldValidation=Strict`` and leaves validation to the server (where our CRD
schema checks run) instead of downloading protobuf ``/openapi/v2``. The CRD schemas are
published as components too, so ``kubectl explain tradingmodel.spec`` works. Built-in kinds
get no schema component: kubectl then falls back to its compiled-in types for strategic merge
patches, which is what we want.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from devstack.kinds import ResourceType

_OBJECT_META = {
    "type": "object",
    "description": "Standard object's metadata. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
}
_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def group_version_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def schema_name(rt: ResourceType) -> str:
    """The component name, reversed-domain style like the real server's (io.trading.v1alpha1.TradingModel)."""
    reversed_group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{reversed_group}.{rt.version}.{rt.kind}"


def _gvk(rt: ResourceType) -> dict[str, str]:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def _object_path(rt: ResourceType) -> str:
    prefix = "/" + group_version_path(rt.group, rt.version)
    scope = "/namespaces/{namespace}" if rt.namespaced else ""
    return f"{prefix}{scope}/{rt.plural}/{{name}}"


def _operation(rt: ResourceType, action: str, ref: str | None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": "OK"}
    if ref:
        response["content"] = {"application/json": {"schema": {"$ref": ref}}}
    operation: dict[str, Any] = {
        "operationId": f"{action}{rt.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(rt),
        "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}} for p in _QUERY_PARAMS],
        "responses": {"200": response},
    }
    if action == "patch":
        operation["requestBody"] = {
            "content": {
                media: {"schema": {"type": "object"}}
                for media in (
                    "application/merge-patch+json",
                    "application/json-patch+json",
                    "application/strategic-merge-patch+json",
                    "application/apply-patch+yaml",
                )
            }
        }
    return operation


def _component(rt: ResourceType) -> dict[str, Any]:
    schema = copy.deepcopy(dict(rt.schema or {}))
    properties = schema.setdefault("properties", {})
    properties["metadata"] = dict(_OBJECT_META)
    properties.setdefault(
        "apiVersion",
        {"type": "string", "description": "APIVersion defines the versioned schema of this representation."},
    )
    properties.setdefault(
        "kind",
        {
            "type": "string",
            "description": "Kind is a string value representing the REST resource this object represents.",
        },
    )
    schema["x-kubernetes-group-version-kind"] = [_gvk(rt)]
    return schema


def group_version_document(types: Iterable[ResourceType], server_version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in sorted(types, key=lambda t: t.plural):
        ref = None
        if rt.schema:
            schemas[schema_name(rt)] = _component(rt)
            ref = f"#/components/schemas/{schema_name(rt)}"
        paths[_object_path(rt)] = {
            action_method: _operation(rt, action, ref)
            for action_method, action in (("get", "get"), ("put", "put"), ("patch", "patch"), ("delete", "delete"))
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": server_version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def document_hash(document: Mapping[str, Any]) -> str:
    """The cache key kubectl stores documents under; it changes whenever the document does."""
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest().upper()[:64]


def root_document(hashes: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    return {
        "paths": {
            group_version_path(group, version): {
                "serverRelativeURL": f"/openapi/v3/{group_version_path(group, version)}?hash={digest}"
            }
            for (group, version), digest in sorted(hashes.items())
        }
    }
