"""A 403 from the API server reaches the user as a permissions problem in RBAC's words: the verb,
the resource and the namespace, and where to grant it. Through the real client over HTTP, against a
server that refuses everything as an API server without the right Role would."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes
import pytest

from trading_operator.kube import Forbidden, KubeApi, forbidden_message


class Refuse(BaseHTTPRequestHandler):
    def _refuse(self) -> None:
        status = {
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
            "message": 'pods is forbidden: User "system:serviceaccount:tradingmodel-system:tradingmodel-operator" '
                       'cannot list resource "pods" in API group "" in the namespace "trading"',
        }  # fmt: skip
        body = json.dumps(status).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def kube() -> Iterator[KubeApi]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_port}"
    yield KubeApi(kubernetes.client.ApiClient(configuration))
    server.shutdown()
    server.server_close()


def test_a_refused_list_names_verb_resource_and_namespace(kube: KubeApi) -> None:
    with pytest.raises(Forbidden) as refused:
        kube.count_ready_pods("trading", {"app.kubernetes.io/instance": "spy-production"})
    message = str(refused.value)
    assert message.startswith("the operator may not list pods in namespace trading (403 Forbidden)")
    assert "manifests/rbac/role.yaml" in message and 'cannot list resource "pods"' in message
    assert refused.value.status == 403  # still an ApiException: callers that handle those keep working


def test_a_refused_write_names_the_group_and_subresource(kube: KubeApi) -> None:
    with pytest.raises(Forbidden, match=r"may not patch tradingmodels/status \(API group trading.io\) in namespace t"):
        kube.patch_tradingmodel_status("t", "spy", {"phase": "Ready"})
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "namespace": "t"}}
    with pytest.raises(Forbidden, match=r"may not create deployments \(API group apps\) in namespace t"):
        kube.create(deployment)


def test_cluster_wide_and_watch_calls() -> None:
    assert forbidden_message("GET", "/apis/apps/v1/deployments?watch=true").startswith(
        "the operator may not watch deployments (API group apps) cluster-wide"
    )
    assert "may not get secrets in namespace a" in forbidden_message("GET", "/api/v1/namespaces/a/secrets/s3")
