"""The thin apply of a pass against the local Kubernetes API over HTTP: which reads and writes a
pass sends for the objects it owns (counted by the API server, as the scale benchmark counts them)."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from devstack.kube_api import REQUEST_COUNTS_PATH, BackgroundLoop, LocalKubeAPI
from devstack.stack import CRDS
from model_store.promotion import PromotionResult
from trading_operator import MANAGER
from trading_operator.config import OperatorConfig
from trading_operator.decide import StoreOutcome, View, decide
from trading_operator.kube import KubeApi
from trading_operator.reconcile import Deps, _apply, forget_written

NAMESPACE = "default"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    with BackgroundLoop() as loop:
        local = LocalKubeAPI(port=0, crds=CRDS)
        loop.run(local.start())
        config = local.write_kubeconfig(Path(tmp_path_factory.mktemp("kube")) / "kubeconfig")
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(config), client_configuration=configuration)
        client = kubernetes.client.ApiClient(configuration)
        client.user_agent = MANAGER  # as KubeApi.connect names the operator
        yield KubeApi(client)
        loop.run(local.stop())


def tradingmodel(kube: KubeApi, name: str) -> dict[str, Any]:
    body = {
        "apiVersion": "trading.io/v1alpha1",
        "kind": "TradingModel",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"ticker": "SPY", "version": "v1.0", "stage": "Production", "storage": {"bucket": "models"}},
    }
    return kube.request("POST", kube.tradingmodel_path(NAMESPACE), body) or {}


def apply_version(kube: KubeApi, body: dict[str, Any], version: str, *, trust_written: bool) -> None:
    """A spec pass's apply after S3 was brought to `version`."""
    body = copy.deepcopy(body)
    body["spec"]["version"] = version
    deployment = kube.get("apps/v1", "Deployment", NAMESPACE, body["metadata"]["name"])  # as the pass reads it
    view = View(body=body, config=OperatorConfig(), now="2026-11-28T03:00:00Z", deployment=deployment)
    move = {"id": version, "at": view.now, "action": "promote", "from_version": None, "to_version": version,
            "digest": DIGEST}  # fmt: skip
    outcome = StoreOutcome(result=PromotionResult(True, True, version, DIGEST, move))
    deps = Deps(kube=kube, s3_for=lambda *_: None, config=OperatorConfig(), emit=lambda *_: None)
    _apply(view, decide(view, outcome), deps, trust_written)


def reads(kube: KubeApi) -> Counter[str]:
    rows = kube.request("GET", REQUEST_COUNTS_PATH) or []
    return Counter({r["resource"]: r["count"] for r in rows if r["client"] == MANAGER and r["verb"] == "get"})


def test_a_version_change_trusts_what_the_pass_wrote_and_a_drift_pass_restores_a_deleted_service(
    kube: KubeApi,
) -> None:
    body = tradingmodel(kube, "spy-apply")
    apply_version(kube, body, "v1.0", trust_written=True)  # nothing written yet: read, then created
    service = kube.get("v1", "Service", NAMESPACE, "spy-apply")
    assert service is not None and kube.get("networking.k8s.io/v1", "NetworkPolicy", NAMESPACE, "spy-apply")

    before = reads(kube)
    apply_version(kube, body, "v1.1", trust_written=True)
    after = reads(kube)
    assert after["services"] == before["services"] and after["networkpolicies"] == before["networkpolicies"]
    deployment = kube.get("apps/v1", "Deployment", NAMESPACE, "spy-apply") or {}
    assert deployment["spec"]["template"]["metadata"]["labels"]["trading.io/version"] == "v1.1"  # the rest is written

    kube.delete("v1", "Service", NAMESPACE, "spy-apply")  # by hand
    apply_version(kube, body, "v1.2", trust_written=True)
    assert kube.get("v1", "Service", NAMESPACE, "spy-apply") is None  # trusted: a spec pass does not look
    apply_version(kube, body, "v1.2", trust_written=False)  # the drift pass looks
    assert kube.get("v1", "Service", NAMESPACE, "spy-apply") is not None


def test_a_tradingmodel_created_again_under_its_name_is_read_afresh(kube: KubeApi) -> None:
    first = tradingmodel(kube, "qqq-apply")
    apply_version(kube, first, "v1.0", trust_written=False)
    kube.request("DELETE", kube.tradingmodel_path(NAMESPACE, "qqq-apply"))
    kube.delete("v1", "Service", NAMESPACE, "qqq-apply")  # garbage collected on a cluster
    second = tradingmodel(kube, "qqq-apply")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    apply_version(kube, second, "v1.0", trust_written=True)
    assert kube.get("v1", "Service", NAMESPACE, "qqq-apply") is not None

    forget_written(NAMESPACE, "qqq-apply")  # deleted: what was written is forgotten, and read again
    kube.delete("v1", "Service", NAMESPACE, "qqq-apply")
    apply_version(kube, second, "v1.0", trust_written=True)
    assert kube.get("v1", "Service", NAMESPACE, "qqq-apply") is not None
