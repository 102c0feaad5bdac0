"""A thin Kubernetes client that speaks plain dicts; auth and TLS come from the `kubernetes` library."""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import urlencode

import kubernetes
from kubernetes.client.rest import ApiException

from trading_operator import GROUP, MANAGER, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"


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
            raise
        raw = response.data
        return json.loads(raw) if raw else {}

    # TradingModels
    def tradingmodel_path(self, namespace: str, name: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return f"{base}/{name}" if name else base

    def get_tradingmodel(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", self.tradingmodel_path(namespace, name))

    def patch_tradingmodel_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.request(
            "PATCH", self.tradingmodel_path(namespace, name) + "/status", {"status": status}, content_type=MERGE_PATCH
        )

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
