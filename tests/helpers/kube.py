"""For the devstack tests: an HTTP client, a kubectl runner, a sample CRD, polling."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

HERE = pathlib.Path(__file__).parent
STANDIN = HERE / "standin_server.py"
T = TypeVar("T")

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Note", "type": "string", "jsonPath": ".spec.note", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["color"],
                                "properties": {
                                    "color": {"type": "string", "enum": ["red", "green", "blue"]},
                                    "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
                                    "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                                    "note": {"type": "string"},
                                    "extras": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                    "limits": {
                                        "type": "object",
                                        "default": {},
                                        "properties": {"cpu": {"type": "string", "default": "100m"}},
                                    },
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def wait_for(check: Callable[[], T | None], *, timeout: float = 30.0, what: str = "condition") -> T:
    """Poll until check() returns something truthy; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class HttpApi:
    """Plain JSON-over-HTTP calls to the API: what any client sees on the wire."""

    url: str

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": content_type, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        return status, json.loads(text) if text.startswith(("{", "[")) else text

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, payload = self.call(method, path, body, **kwargs)
        assert status < 400, f"{method} {path} -> {status}: {payload}"
        return payload

    def get(self, path: str) -> Any:
        return self.ok("GET", path)

    def merge(self, path: str, patch: Any) -> Any:
        return self.ok("PATCH", path, patch, content_type="application/merge-patch+json")


@dataclass
class Kubectl:
    binary: str
    kubeconfig: pathlib.Path
    cache_dir: pathlib.Path

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECACHEDIR": str(self.cache_dir), "KUBECONFIG": str(self.kubeconfig)}
        result = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def apply(self, manifest: str) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-f", "-", stdin=manifest)
