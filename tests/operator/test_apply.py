"""The thin apply of a pass against the local Kubernetes API over HTTP: which reads and writes a
pass sends for its TradingModel and the objects it owns (counted by the API server, as the scale
benchmark counts them)."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from devstack.demo_model import DemoModel
from devstack.kube_api import REQUEST_COUNTS_PATH, BackgroundLoop, LocalKubeAPI
from devstack.stack import CRDS
from model_store.layout import ModelLocation
from model_store.promotion import PromotionResult
from model_store.publish import publish_version
from model_store.registry import deployment_history
from trading_operator import MANAGER
from trading_operator.bodies import Bodies
from trading_operator.config import OperatorConfig
from trading_operator.decide import StoreOutcome, View, decide
from trading_operator.kube import MERGE_PATCH, KubeApi
from trading_operator.reconcile import Deps, _apply, forget_written, reconcile

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


def apply_version(
    kube: KubeApi, body: dict[str, Any], version: str, *, trust_written: bool, deps: Deps | None = None
) -> None:
    """A spec pass's apply after S3 was brought to `version`."""
    body = copy.deepcopy(body)
    body["spec"]["version"] = version
    deployment = kube.get("apps/v1", "Deployment", NAMESPACE, body["metadata"]["name"])  # as the pass reads it
    view = View(body=body, config=OperatorConfig(), now="2026-11-28T03:00:00Z", deployment=deployment)
    move = {"id": version, "at": view.now, "action": "promote", "from_version": None, "to_version": version,
            "digest": DIGEST}  # fmt: skip
    outcome = StoreOutcome(result=PromotionResult(True, True, version, DIGEST, move))
    deps = deps or Deps(kube=kube, s3_for=lambda *_: None, config=OperatorConfig(), emit=lambda *_: None)
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

    deps = Deps(kube=kube, s3_for=lambda *_: None, config=OperatorConfig(deep_check_seconds=0), emit=lambda *_: None)
    apply_version(kube, body, "v1.1", trust_written=True, deps=deps)  # trusted for a deep interval only
    assert reads(kube)["services"] == after["services"] + 1

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


def test_a_pass_starts_from_the_body_it_wrote_and_one_changed_since_is_read_again(kube: KubeApi) -> None:
    """No read when this process wrote the status last; a status write over a body someone changed
    since is refused by its resourceVersion (409), and the pass runs again from a fresh read."""
    created = tradingmodel(kube, "dia-apply")
    deps = Deps(kube=kube, s3_for=lambda *_: None, config=OperatorConfig(), emit=lambda *_: None)
    key = (NAMESPACE, "dia-apply")
    view = View(body=created, config=OperatorConfig(), now="2026-11-28T03:00:00Z")
    move = {"id": "m1", "at": view.now, "action": "promote", "from_version": None, "to_version": "v1.0",
            "digest": DIGEST}  # fmt: skip
    promoted = decide(view, StoreOutcome(result=PromotionResult(True, True, "v1.0", DIGEST, move))).status
    deps.bodies.wrote(key, kube.patch_tradingmodel_status(NAMESPACE, "dia-apply", promoted))

    before = reads(kube)["tradingmodels"]
    plan = reconcile(NAMESPACE, "dia-apply", deps, {}, rollout_only=True)  # S3 as promoted: no S3
    assert plan is not None and plan.phase == "RollingOut"
    assert reads(kube)["tradingmodels"] == before  # it started from what it wrote

    labelled = {"metadata": {"labels": {"team": "rates"}}}  # someone else writes: the body known is old
    kube.request("PATCH", kube.tradingmodel_path(NAMESPACE, "dia-apply"), labelled, content_type=MERGE_PATCH)
    rolled_out(kube, "dia-apply")  # so the pass has a status to write: Ready
    plan = reconcile(NAMESPACE, "dia-apply", deps, {}, rollout_only=True)
    assert plan is not None and plan.phase == "Ready"
    assert reads(kube)["tradingmodels"] == before + 1  # refused once, then read
    live = kube.get_tradingmodel(NAMESPACE, "dia-apply") or {}
    assert live["status"]["phase"] == "Ready" and live["metadata"]["labels"]["team"] == "rates"


def test_a_drift_pass_reads_the_tradingmodel_and_restores_a_status_changed_by_hand(kube: KubeApi) -> None:
    created = tradingmodel(kube, "iwm-apply")
    deps = Deps(kube=kube, s3_for=lambda *_: None, config=OperatorConfig(), emit=lambda *_: None)
    view = View(body=created, config=OperatorConfig(), now="2026-11-28T03:00:00Z")
    move = {"id": "m1", "at": view.now, "action": "promote", "from_version": None, "to_version": "v1.0",
            "digest": DIGEST}  # fmt: skip
    promoted = decide(view, StoreOutcome(result=PromotionResult(True, True, "v1.0", DIGEST, move))).status
    kube.patch_tradingmodel_status(NAMESPACE, "iwm-apply", promoted)
    reconcile(NAMESPACE, "iwm-apply", deps, {}, rollout_only=True)
    by_hand = {"status": {"phase": "Pending"}}
    kube.request("PATCH", kube.tradingmodel_path(NAMESPACE, "iwm-apply") + "/status", by_hand, content_type=MERGE_PATCH)

    reconcile(NAMESPACE, "iwm-apply", deps, {}, rollout_only=True)  # from what it wrote: sees nothing to do
    assert (kube.get_tradingmodel(NAMESPACE, "iwm-apply") or {})["status"]["phase"] == "Pending"
    reconcile(NAMESPACE, "iwm-apply", deps, {}, rollout_only=True, fresh=True)  # as the drift pass does
    assert (kube.get_tradingmodel(NAMESPACE, "iwm-apply") or {})["status"]["phase"] == "RollingOut"


def rolled_out(kube: KubeApi, name: str) -> None:
    """The Deployment controller's report of a complete rollout (no kubelet runs here)."""
    live = kube.get("apps/v1", "Deployment", NAMESPACE, name) or {}
    replicas = live["spec"]["replicas"]
    status = {"observedGeneration": live["metadata"]["generation"], "replicas": replicas,
              "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas}  # fmt: skip
    path = kube.object_path("apps/v1", "Deployment", NAMESPACE, name) + "/status"
    kube.request("PATCH", path, {"status": status}, content_type=MERGE_PATCH)


def test_the_newest_body_is_the_one_written_unless_the_watch_shows_a_newer_generation() -> None:
    bodies, key = Bodies(), (NAMESPACE, "spy")
    assert bodies.newest(key) is None
    seen = {"metadata": {"generation": 2, "resourceVersion": "10"}, "spec": {"version": "v1.1"}}
    bodies.seen(key, seen)
    assert bodies.newest(key) == seen and bodies.newest(key) is not seen  # a copy: passes may change it
    wrote = {"metadata": {"generation": 2, "resourceVersion": "12"}, "status": {"phase": "Ready"}}
    bodies.wrote(key, wrote)
    bodies.seen(key, {"metadata": {"generation": 2, "resourceVersion": "11"}})  # the watch, behind our write
    assert bodies.newest(key) == wrote
    newer = {"metadata": {"generation": 3, "resourceVersion": "13"}, "spec": {"version": "v1.2"}}
    bodies.seen(key, newer)  # a spec change
    assert bodies.newest(key) == newer

    ours = {"metadata": {"generation": 3, "resourceVersion": "14"}, "status": {"phase": "RollingOut"}}
    bodies.wrote(key, ours)
    bodies.seen(key, ours)  # the watch catches up with our write: what it shows next is newer
    labelled = {"metadata": {"generation": 3, "resourceVersion": "15", "labels": {"team": "rates"}}}
    bodies.seen(key, labelled)
    assert bodies.newest(key) == labelled
    bodies.seen(key, {"metadata": {"generation": 3, "resourceVersion": "16"}})
    bodies.wrote(key, {"metadata": {"generation": 3, "resourceVersion": "16"}})  # heard back after the watch
    bodies.seen(key, {"metadata": {"generation": 3, "resourceVersion": "17"}})
    assert (bodies.newest(key) or {})["metadata"]["resourceVersion"] == "17"

    bodies.wrote(key, {"metadata": {"generation": 3, "resourceVersion": "18"}})
    relisted = {"metadata": {"generation": 3, "resourceVersion": "20"}}
    bodies.seen(key, relisted, listed=True)  # a listing holds every write before it: ours too
    assert bodies.newest(key) == relisted

    bodies.wrote(key, {"metadata": {"uid": "a", "generation": 4, "resourceVersion": "21"}})
    again = {"metadata": {"uid": "b", "generation": 1, "resourceVersion": "30"}}
    bodies.seen(key, again)  # deleted and created again under its name (its DELETED missed)
    assert bodies.newest(key) == again

    bodies.stale(key)
    assert bodies.newest(key) is None


def test_moves_of_a_pass_whose_status_write_is_refused_reach_the_status_and_the_events(
    kube: KubeApi, s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    """A pass starts from the spec the watch showed (v1.1) and promotes it; the spec changed again
    meanwhile (back to v1.0), so its status write is refused; the pass that follows rolls back.
    Both moves are in the status history, as in the audit log, and both have their Event."""
    location = ModelLocation.of("EWZ", "etf")
    publish_version(s3, bucket, location, "v1.0", demo_v1.files)
    publish_version(s3, bucket, location, "v1.1", demo_v2.files)
    body = {"apiVersion": "trading.io/v1alpha1", "kind": "TradingModel",
            "metadata": {"name": "ewz-apply", "namespace": NAMESPACE},
            "spec": {"ticker": "EWZ", "version": "v1.0", "stage": "Production",
                     "storage": {"bucket": bucket}}}  # fmt: skip
    path = kube.tradingmodel_path(NAMESPACE, "ewz-apply")
    kube.request("POST", kube.tradingmodel_path(NAMESPACE), body)
    events: list[str] = []
    deps = Deps(kube=kube, s3_for=lambda *_: s3, config=OperatorConfig(),
                emit=lambda _body, _type, reason, message: events.append(f"{reason}: {message}"))  # fmt: skip
    key = (NAMESPACE, "ewz-apply")
    reconcile(*key, deps, {})  # v1.0 promoted; the status it wrote is the body known
    shown = kube.request("PATCH", path, {"spec": {"version": "v1.1"}}, content_type=MERGE_PATCH) or {}
    deps.bodies.seen(key, shown)  # the watch shows v1.1
    kube.request("PATCH", path, {"spec": {"version": "v1.0"}}, content_type=MERGE_PATCH)  # not shown yet
    events.clear()

    plan = reconcile(*key, deps, {})
    assert plan is not None
    audit = [(e["action"], e["from_version"], e["to_version"]) for e in deployment_history(s3, bucket)
             if e["model"] == location.model_key]  # fmt: skip
    assert audit == [("promote", None, "v1.0"), ("promote", "v1.0", "v1.1"), ("rollback", "v1.1", "v1.0")]
    live = kube.get_tradingmodel(*key) or {}
    assert [(h["action"], h["from"], h["to"]) for h in live["status"]["history"]] == audit
    assert [e.split(":")[0] for e in events if e.split(":")[0] in ("Promoted", "RolledBack")] == [
        "Promoted",
        "RolledBack",
    ]
