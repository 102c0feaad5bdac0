"""A thin Kubernetes client that speaks plain dicts; auth and TLS come from the `kubernetes` library."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from typing import Any
from urllib.parse import urlencode

import kubernetes
from kubernetes.client.rest import ApiException

from trading_operator import GROUP, MANAGER, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
_PATH = re.compile(
    r"^/api(?:s/(?P<group>[^/]+))?/[^/]+(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<subresource>[^/]+))?)?$"
)
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class Forbidden(ApiException):  # type: ignore[misc]  # (the kubernetes library is untyped)
    """A 403, said in RBAC's words: which verb on which resource where, and where to grant it."""

    def __init__(self, message: str) -> None:
        super().__init__(status=403, reason=message)
        self.body = json.dumps({"message": message})

    def __str__(self) -> str:
        return str(self.reason)


def forbidden_message(method: str, path: str, server_message: str = "") -> str:
    """'the operator may not list pods in namespace trading ...' for a refused request."""
    found = _PATH.match(path.split("?", 1)[0])
    if found is None:
        return f"the operator may not {method} {path} (403 Forbidden): {server_message}".rstrip(": ")
    verb = _VERBS.get(method) or ("get" if found["name"] else "watch" if "watch=" in path else "list")
    resource = found["plural"] + (f"/{found['subresource']}" if found["subresource"] else "")
    group = f" (API group {found['group']})" if found["group"] else ""
    where = f"in namespace {found['namespace']}" if found["namespace"] else "cluster-wide"
    return (
        f"the operator may not {verb} {resource}{group} {where} (403 Forbidden): grant it to the operator's "
        f"service account (manifests/rbac/role.yaml){': ' + server_message if server_message else ''}"
    )


class KubeApi:
    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self._client = api_client

    @classmethod
    def connect(cls, pool: int | None = None) -> KubeApi:
        """In-cluster service account, else KUBECONFIG/~/.kube/config. `pool`: connections kept
        for reuse, at least the threads that call at once (the library keeps 5 per CPU)."""
        configuration = kubernetes.client.Configuration()
        if pool:
            configuration.connection_pool_maxsize = pool
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(client_configuration=configuration)
        client = kubernetes.client.ApiClient(configuration)
        client.user_agent = MANAGER  # how API server audit logs (and the local API's counts) name us
        return cls(client)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any] | None:
        """The response as a dict; None for 404 on GET/DELETE."""
        if query:
            path = f"{path}?{urlencode(query)}"
        try:
            response = self._client.call_api(
                path,
                method,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=30,
            )
        except ApiException as exc:
            if exc.status == 404 and method in ("GET", "DELETE"):
                return None
            if exc.status == 403:
                raise Forbidden(forbidden_message(method, path, _server_message(exc))) from exc
            raise
        raw = response.data
        return json.loads(raw) if raw else {}

    # TradingModels
    def tradingmodel_path(self, namespace: str, name: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return f"{base}/{name}" if name else base

    def get_tradingmodel(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", self.tradingmodel_path(namespace, name))

    def patch_tradingmodel_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        """The TradingModel as written; with `resource_version`, only over that version (409 if not)."""
        patch: dict[str, Any] = {"status": status}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        path = self.tradingmodel_path(namespace, name) + "/status"
        return self.request("PATCH", path, patch, content_type=MERGE_PATCH) or {}

    def count_ready_pods(self, namespace: str, labels: dict[str, str]) -> int:
        """Ready pods matching `labels` (selected by the API server)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        listing = self.request("GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": selector}) or {}
        conditions = [(pod.get("status") or {}).get("conditions") or [] for pod in listing.get("items") or []]
        return sum(any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod) for pod in conditions)

    # Owned objects
    @staticmethod
    def object_path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
        plural = {
            "Deployment": "deployments",
            "Service": "services",
            "Secret": "secrets",
            "PodDisruptionBudget": "poddisruptionbudgets",
            "NetworkPolicy": "networkpolicies",
            "HorizontalPodAutoscaler": "horizontalpodautoscalers",
        }[kind]
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        base = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", self.object_path(api_version, kind, namespace, name))

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return self.request("POST", self.object_path(obj["apiVersion"], obj["kind"], meta["namespace"]), obj) or {}

    def merge_patch(self, obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = self.object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        return self.request("PATCH", path, patch, content_type=MERGE_PATCH) or {}

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.request("DELETE", self.object_path(api_version, kind, namespace, name))

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        decoded = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        return {**decoded, **(secret.get("stringData") or {})}


def _server_message(exc: ApiException) -> str:
    body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or "")
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("message", body))
    return body
