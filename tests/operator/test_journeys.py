"""The user's day, end to end: the real kopf operator (a subprocess) against the local Kubernetes
API over HTTP, a moto S3 server over HTTP (and SeaweedFS for the promote/rollback journey), and
real serving processes started for the Deployments.

One stack per module; each test uses its own ticker so tests do not depend on each other's state.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devstack.demo_model import DemoModel
from devstack.s3_servers import S3Server
from devstack.stack import NAMESPACE, predict_at, running_notes
from devstack.stack import LocalStack as Stack
from devstack.stack import tradingmodel as tradingmodel_object
from helpers.gitops import argocd_health, kstatus
from model_store.layout import MANIFEST_NAME, METADATA, MODEL_NATIVE, ModelLocation, Stage
from model_store.manifest import Manifest
from model_store.promotion import stage_manifest
from model_store.publish import publish_version
from model_store.registry import deployment_history

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def operator_alive(stack: Stack) -> None:
    """After the operator died, each journey fails at once with its exit code and the end of its log."""
    stack.check_operator()


def tradingmodel(name: str, ticker: str, version: str, stack: Stack) -> dict[str, Any]:
    return tradingmodel_object(name, ticker, version, stack.s3_endpoint)


def objects(stack: Stack, prefix: str) -> dict[str, bytes]:
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: stack.s3.get_object(Bucket=stack.bucket, Key=o["Key"])["Body"].read() for o in listing
    }


def event_reasons(stack: Stack, name: str) -> set[str]:
    return {e.get("reason", "") for e in stack.events_for(name)}


def publish(stack: Stack, ticker: str, version: str) -> None:
    """Publish the files of v1.0 again under a new version (its metadata names the new version)."""
    files = objects(stack, f"etfs/{ticker}/archive/v1.0/")
    files.pop(MANIFEST_NAME)
    files[METADATA] = json.dumps({**json.loads(files[METADATA]), "version": version}).encode()
    publish_version(stack.s3, stack.bucket, ModelLocation.of(ticker, "etf"), version, files)


def deployment(stack: Stack, name: str, check: Any) -> dict[str, Any]:
    return stack.wait_until(
        lambda: (d := stack.get("apps/v1", "deployments", name)) is not None and check(d) and d,
        f"Deployment {name}",
    )


def deployment_env(stack: Stack, name: str) -> dict[str, str]:
    dep = stack.get("apps/v1", "deployments", name)
    assert dep is not None, f"no Deployment {name}"
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", "") for e in env}


def production(stack: Stack, ticker: str) -> Manifest | None:
    return stage_manifest(stack.s3, stack.bucket, ModelLocation.of(ticker, "etf"), Stage.PRODUCTION)


def reason(tm: dict[str, Any], type_: str = "Ready") -> str | None:
    for c in (tm.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c["reason"]
    return None


def test_apply_promotes_rolls_out_and_reports_ready(stack: Stack) -> None:
    started = time.monotonic()
    stack.kubectl("apply", "-f", "-", input=tradingmodel("spy-production", "SPY", "v1.0", stack))
    tm = stack.wait_for("spy-production", lambda tm: tm["status"].get("phase") == "Ready")
    apply_to_ready = time.monotonic() - started
    print(f"\napply -> Ready: {apply_to_ready:.2f} s")

    status = tm["status"]
    assert status["activeVersion"] == "v1.0" and status["observedGeneration"] == tm["metadata"]["generation"]
    assert status["readyReplicas"] == status["replicas"] == 1
    manifest = production(stack, "SPY")
    assert manifest is not None and manifest.version == "v1.0" and manifest.digest == status["digest"]
    env = deployment_env(stack, "spy-production")
    assert (env["MODEL_VERSION"], env["MODEL_DIGEST"]) == ("v1.0", status["digest"])
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "VersionVerified": "True",
        "Promoted": "True",
        "RegistrySynced": "True",
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }
    assert argocd_health(tm) == ("Healthy", "1/1 pods serve v1.0") and kstatus(tm) == "Current"
    # the pod really serves that version
    answer = stack.predict("spy-production", "SPY")
    assert answer["model_version"] == "v1.0"
    assert event_reasons(stack, "spy-production") >= {"Promoted", "Ready"}


@pytest.mark.s3_stores
def test_new_version_promotes_and_rolls_out_then_rollback(
    stack: Stack, s3_server: S3Server, s3: Any, bucket: str, demo_v1: DemoModel, demo_v2: DemoModel
) -> None:
    """On moto and on SeaweedFS: spec.storage names the store's endpoint, its keys come from a
    Secret, and the operator and the serving pods sign their requests with them."""
    name, qqq = f"qqq-{s3_server.kind}", ModelLocation.of("QQQ", "etf")
    publish_version(s3, bucket, qqq, "v1.0", demo_v1.files)
    publish_version(s3, bucket, qqq, "v1.1", demo_v2.files)
    assert stack.kube is not None
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-s3", "namespace": NAMESPACE},
              "stringData": s3_server.credentials}  # fmt: skip
    stack.kube.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    storage = {"bucket": bucket, "endpoint": s3_server.endpoint, "secretRef": {"name": f"{name}-s3"}}
    stack.kubectl("apply", "-f", "-", input=tradingmodel_object(name, "QQQ", "v1.0", s3_server.endpoint,
                                                                storage=storage))  # fmt: skip
    stack.wait_for(name, lambda tm: tm["status"].get("phase") == "Ready")

    stack.kubectl("patch", "tm", name, "--type", "merge", "-p", '{"spec": {"version": "v1.1"}}')
    tm = stack.wait_for(
        name, lambda tm: tm["status"].get("activeVersion") == "v1.1" and tm["status"].get("phase") == "Ready"
    )
    assert tm["status"]["previousVersion"] == "v1.0"
    assert stage_manifest(s3, bucket, qqq, Stage.PRODUCTION).version == "v1.1"  # type: ignore[union-attr]
    assert deployment_env(stack, name)["MODEL_VERSION"] == "v1.1"
    assert stack.predict(name, "QQQ")["model_version"] == "v1.1"
    assert [h["action"] for h in tm["status"]["history"]] == ["promote", "promote"]

    stack.kubectl("patch", "tm", name, "--type", "merge", "-p", '{"spec": {"version": "v1.0"}}')
    tm = stack.wait_for(
        name, lambda tm: tm["status"].get("activeVersion") == "v1.0" and tm["status"].get("phase") == "Ready"
    )
    assert tm["status"]["history"][-1]["action"] == "rollback"
    assert stage_manifest(s3, bucket, qqq, Stage.PRODUCTION).version == "v1.0"  # type: ignore[union-attr]
    assert stack.predict(name, "QQQ")["model_version"] == "v1.0"
    audit = [(e["action"], e["from_version"], e["to_version"]) for e in deployment_history(s3, bucket)]
    assert audit == [("promote", None, "v1.0"), ("promote", "v1.0", "v1.1"), ("rollback", "v1.1", "v1.0")]


def test_the_service_url_up_prints_keeps_answering_through_a_rollout(stack: Stack) -> None:
    stack.kubectl("apply", "-f", "-", input=tradingmodel("xle-production", "XLE", "v1.0", stack))
    stack.wait_for("xle-production", lambda tm: tm["status"].get("phase") == "Ready")
    printed = [
        line.split(": ", 1)[1]
        for line in running_notes(stack, ["xle-production"])
        if line.strip().startswith("xle-production: ")
    ]
    assert printed == [stack.service_url("xle-production")], printed
    url, pods = printed[0], stack.endpoints("xle-production")
    assert url not in pods  # the Service's own address, not a pod's
    assert predict_at(url, "XLE")["model_version"] == "v1.0"

    stack.kubectl("patch", "tm", "xle-production", "--type", "merge", "-p", '{"spec": {"version": "v1.1"}}')
    stack.wait_for(
        "xle-production",
        lambda tm: tm["status"].get("activeVersion") == "v1.1" and tm["status"].get("phase") == "Ready",
    )
    stack.wait_until(
        lambda: (now := stack.endpoints("xle-production")) and not set(now) & set(pods),
        "the rollout to replace the pods",
    )
    assert stack.service_url("xle-production") == url  # pod URLs went stale; this one did not
    assert [predict_at(url, "XLE")["model_version"] for _ in range(5)] == ["v1.1"] * 5


def test_missing_version_is_reported_and_production_untouched(stack: Stack) -> None:
    stack.kubectl("apply", "-f", "-", input=tradingmodel("iwm-production", "IWM", "v1.0", stack))
    stack.wait_for("iwm-production", lambda tm: tm["status"].get("phase") == "Ready")
    before = objects(stack, "etfs/IWM/production/")

    stack.kubectl("patch", "tm", "iwm-production", "--type", "merge", "-p", '{"spec": {"version": "v9.9"}}')
    tm = stack.wait_for("iwm-production", lambda tm: reason(tm, "VersionVerified") == "VersionNotFound")
    message = next(c["message"] for c in tm["status"]["conditions"] if c["type"] == "VersionVerified")
    assert "v9.9 is not published" in message and "v1.0" in message  # names what exists
    assert tm["status"]["phase"] == "Failed" and tm["status"]["activeVersion"] == "v1.0"
    assert argocd_health(tm)[0] == "Degraded" and kstatus(tm) == "InProgress"  # retried: may heal
    assert objects(stack, "etfs/IWM/production/") == before
    assert deployment_env(stack, "iwm-production")["MODEL_VERSION"] == "v1.0"
    assert stack.predict("iwm-production", "IWM")["model_version"] == "v1.0"

    # publishing the version later heals it without anyone touching the TradingModel
    publish(stack, "IWM", "v9.9")
    stack.wait_for(
        "iwm-production",
        lambda tm: tm["status"].get("activeVersion") == "v9.9" and tm["status"].get("phase") == "Ready",
    )


def test_a_refused_version_set_back_is_served_again(stack: Stack) -> None:
    """A spec set back to one handled before is a new generation: it gets its own pass (kopf's update
    handler, which compared with the last handled spec, ran none, and only the drift timer converged it)."""
    stack.kubectl("apply", "-f", "-", input=tradingmodel("xlu-production", "XLU", "v1.0", stack))
    stack.wait_for("xlu-production", lambda tm: tm["status"].get("phase") == "Ready")
    stack.kubectl("patch", "tm", "xlu-production", "--type", "merge", "-p", '{"spec": {"version": "v9.9"}}')
    stack.wait_for("xlu-production", lambda tm: reason(tm) == "VersionNotFound")
    stack.kubectl("patch", "tm", "xlu-production", "--type", "merge", "-p", '{"spec": {"version": "v1.0"}}')
    tm = stack.wait_for(
        "xlu-production",
        lambda tm: (
            tm["status"].get("phase") == "Ready"
            and tm["status"].get("observedGeneration") == tm["metadata"]["generation"]
        ),
    )
    assert tm["status"]["activeVersion"] == "v1.0"


def test_digest_mismatch_is_refused_and_production_untouched(stack: Stack) -> None:
    stack.kubectl("apply", "-f", "-", input=tradingmodel("xlf-production", "XLF", "v1.0", stack))
    stack.wait_for("xlf-production", lambda tm: tm["status"].get("phase") == "Ready")
    before = objects(stack, "etfs/XLF/production/")
    stack.s3.put_object(Bucket=stack.bucket, Key=f"etfs/XLF/archive/v1.1/{MODEL_NATIVE}", Body=b"tree\ntampered")

    stack.kubectl("patch", "tm", "xlf-production", "--type", "merge", "-p", '{"spec": {"version": "v1.1"}}')
    tm = stack.wait_for("xlf-production", lambda tm: reason(tm, "VersionVerified") == "DigestMismatch")
    message = next(c["message"] for c in tm["status"]["conditions"] if c["type"] == "VersionVerified")
    assert "lightgbm_model.txt" in message and "bytes" in message
    assert objects(stack, "etfs/XLF/production/") == before
    assert deployment_env(stack, "xlf-production")["MODEL_VERSION"] == "v1.0"
    assert "Failed" in event_reasons(stack, "xlf-production")


def test_second_claim_on_a_stage_is_a_conflict_and_touches_nothing(stack: Stack) -> None:
    stack.kubectl("apply", "-f", "-", input=tradingmodel("smh-production", "SMH", "v1.0", stack))
    stack.wait_for("smh-production", lambda tm: tm["status"].get("phase") == "Ready")
    before = objects(stack, "etfs/SMH/production/")

    stack.kubectl("apply", "-f", "-", input=tradingmodel("smh-rival", "SMH", "v1.1", stack))
    tm = stack.wait_for("smh-rival", lambda tm: tm["status"].get("phase") == "Conflict")
    assert "smh-production" in next(c["message"] for c in tm["status"]["conditions"] if c["type"] == "Ready")
    assert argocd_health(tm)[0] == "Degraded" and kstatus(tm) == "Failed"
    assert stack.get("apps/v1", "deployments", "smh-rival") is None
    assert objects(stack, "etfs/SMH/production/") == before
    assert production(stack, "SMH").version == "v1.0"  # type: ignore[union-attr]


def test_archived_scales_to_zero_and_keeps_the_archive(stack: Stack) -> None:
    stack.kubectl("apply", "-f", "-", input=tradingmodel("dia-production", "DIA", "v1.0", stack))
    stack.wait_for("dia-production", lambda tm: tm["status"].get("phase") == "Ready")
    archive = objects(stack, "etfs/DIA/archive/")

    stack.kubectl("patch", "tm", "dia-production", "--type", "merge", "-p", '{"spec": {"stage": "Archived"}}')
    tm = stack.wait_for("dia-production", lambda tm: tm["status"].get("phase") == "Archived")
    assert tm["status"]["history"][-1]["action"] == "archive"
    dep = deployment(stack, "dia-production", lambda d: (d.get("status") or {}).get("replicas", 0) == 0)
    assert dep["spec"]["replicas"] == 0
    assert objects(stack, "etfs/DIA/archive/") == archive
    assert deployment_history(stack.s3, stack.bucket)[-1]["action"] == "archive"

    # back to Production: serving comes back at the spec's replicas
    stack.kubectl("patch", "tm", "dia-production", "--type", "merge", "-p", '{"spec": {"stage": "Production"}}')
    tm = stack.wait_for("dia-production", lambda tm: tm["status"].get("phase") == "Ready")
    assert tm["status"]["readyReplicas"] == tm["status"]["replicas"] == 1
    assert stack.predict("dia-production", "DIA")["model_version"] == "v1.0"

    stack.kubectl("delete", "tm", "dia-production")
    stack.wait_until(lambda: stack.get("apps/v1", "deployments", "dia-production") is None, "Deployment collected")
    assert objects(stack, "etfs/DIA/archive/") == archive  # deleting never deletes versions


def test_hand_edit_of_production_is_repaired_by_the_drift_check(stack: Stack) -> None:
    stack.kubectl("apply", "-f", "-", input=tradingmodel("eem-production", "EEM", "v1.0", stack))
    stack.wait_for("eem-production", lambda tm: tm["status"].get("phase") == "Ready")
    good = objects(stack, "etfs/EEM/production/")
    stack.s3.put_object(Bucket=stack.bucket, Key=f"etfs/EEM/production/{MODEL_NATIVE}", Body=b"edited by hand")

    tm = stack.wait_for("eem-production", lambda tm: tm["status"]["history"][-1]["action"] == "repair")
    assert objects(stack, "etfs/EEM/production/")[MODEL_NATIVE] == good[MODEL_NATIVE]
    assert json.loads(objects(stack, "etfs/EEM/production/")[MANIFEST_NAME])["version"] == "v1.0"
    assert tm["status"]["activeVersion"] == "v1.0"


def test_a_bad_manifest_is_refused_at_apply_and_names_the_field(stack: Stack) -> None:
    bad = tradingmodel("spy-bad", "spy", "1.2", stack)
    out = stack.kubectl("apply", "-f", "-", input=bad, check=False)
    assert "spec.ticker" in out and "spec.version" in out, out
    assert stack.tradingmodel("spy-bad") is None


def test_prometheus_scrapes_the_serving_pods(stack: Stack) -> None:
    if stack.prometheus is None:
        pytest.skip("no prometheus binary (Debian package 'prometheus'; .ci/run installs it)")
    stack.kubectl("apply", "-f", "-", input=tradingmodel("gld-production", "GLD", "v1.0", stack))
    stack.wait_for("gld-production", lambda tm: tm["status"].get("phase") == "Ready")
    for _ in range(5):
        stack.predict("gld-production", "GLD")
    promql = 'sum(tradingmodel_requests_total{tradingmodel="gld-production", endpoint="predict", code="200"})'
    result = stack.wait_until(
        lambda: [r for r in stack.prometheus.query(promql) if float(r["value"][1]) >= 5] if stack.prometheus else [],
        "Prometheus to scrape 5 predictions",
        timeout=60,
    )
    assert float(result[0]["value"][1]) >= 5
    info = stack.prometheus.query('tradingmodel_model_info{tradingmodel="gld-production"}')
    assert info and info[0]["metric"]["version"] == "v1.0" and info[0]["metric"]["ticker"] == "GLD"


def test_a_rollout_under_keep_alive_load_fails_no_request(stack: Stack) -> None:
    """Two replicas behind their Service, hammered by keep-alive clients through a version change:
    every request answers 200, from the old version or the new one, never an error."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    from devstack.demo_model import feature_names

    manifest = tradingmodel_object("tlt-production", "TLT", "v1.0", stack.s3_endpoint, serving={"replicas": 2})
    stack.kubectl("apply", "-f", "-", input=manifest)
    stack.wait_for("tlt-production", lambda tm: tm["status"].get("phase") == "Ready")
    stack.wait_until(lambda: len(stack.endpoints("tlt-production")) == 2, "two ready replicas")
    old_pods = set(stack.endpoints("tlt-production"))
    url = stack.service_url("tlt-production")
    assert url is not None
    address = urlsplit(url)
    body = json.dumps({"ticker": "TLT", "features": {n: 0.1 * (i % 7) for i, n in enumerate(feature_names())}})

    stop = threading.Event()
    lock = threading.Lock()
    versions: dict[str, int] = {}
    failures: list[str] = []
    closes = [0]

    def client() -> None:
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=15)
        while not stop.is_set():
            try:
                conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
                reply = conn.getresponse()
                data = reply.read()
                outcome = json.loads(data)["model_version"] if reply.status == 200 else f"HTTP {reply.status}"
                if reply.getheader("connection") == "close":
                    with lock:
                        closes[0] += 1
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
                conn.close()
            with lock:
                if outcome.startswith("v"):
                    versions[outcome] = versions.get(outcome, 0) + 1
                else:
                    failures.append(outcome)
        conn.close()

    clients = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.0)
        stack.kubectl("patch", "tm", "tlt-production", "--type", "merge", "-p", '{"spec": {"version": "v1.1"}}')
        stack.wait_for(
            "tlt-production",
            lambda tm: tm["status"].get("activeVersion") == "v1.1" and tm["status"].get("phase") == "Ready",
            timeout=120,
        )
        stack.wait_until(
            lambda: len(now := stack.endpoints("tlt-production")) == 2 and not set(now) & old_pods,
            "the rollout to replace both pods",
            timeout=120,
        )
        time.sleep(15)  # the old pods' preStop pause and drain end while the clients keep asking
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)
    total = sum(versions.values()) + len(failures)
    print(f"\nrollout under load: {total} requests, {len(failures)} failed, by version {versions}, "
          f"{closes[0]} answers with Connection: close")  # fmt: skip
    assert not failures, failures[:5]
    assert set(versions) == {"v1.0", "v1.1"}
    assert total > 200


# -- pod safety: a rollout that cannot finish, the owned budget and policy, the watched Deployments --


def owned_by(obj: dict[str, Any] | None, tm: dict[str, Any]) -> bool:
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
    return any(ref["uid"] == tm["metadata"]["uid"] and ref.get("controller") for ref in refs)


def test_a_version_whose_pods_never_come_is_stalled_and_the_old_one_keeps_serving(stack: Stack) -> None:
    """A PR moves to v1.1 and names a ServiceAccount that does not exist yet: the API server refuses
    every new pod (FailedCreate), the rollout makes no progress, and after progressDeadlineSeconds the
    TradingModel says so while the v1.0 pods serve on. Creating the account lets it finish."""
    name = "xlk-production"
    manifest = tradingmodel_object(name, "XLK", "v1.0", stack.s3_endpoint,
                                   serving={"replicas": 2, "progressDeadlineSeconds": 5})  # fmt: skip
    stack.kubectl("apply", "-f", "-", input=manifest)
    stack.wait_for(name, lambda tm: tm["status"].get("phase") == "Ready")
    stack.wait_until(lambda: len(stack.endpoints(name)) == 2, "two ready replicas")

    change = {"spec": {"version": "v1.1", "serving": {"serviceAccountName": "xlk-serving"}}}
    stack.kubectl("patch", "tm", name, "--type", "merge", "-p", json.dumps(change))
    tm = stack.wait_for(name, lambda tm: reason(tm) == "ProgressDeadlineExceeded", timeout=120)
    status = tm["status"]
    assert status["phase"] == "Failed" and reason(tm, "Stalled") == "ProgressDeadlineExceeded"
    assert kstatus(tm) == "Failed" and argocd_health(tm)[0] == "Degraded"
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Ready")
    assert "v1.1 made no progress for 5 s: 0/2 new pods ready" in message, message
    assert "2 pod(s) of v1.0 keep serving" in message, message
    stalls = [e for e in stack.events_for(name) if e.get("reason") == "ProgressDeadlineExceeded"]
    assert [e["type"] for e in stalls] == ["Warning"] and "v1.1" in stalls[0]["message"]
    refusals = [e["message"] for e in _events(stack) if e.get("reason") == "FailedCreate" and name in e["message"]]
    assert refusals and 'serviceaccount "xlk-serving" not found' in refusals[0]
    assert [predict_at(url, "XLK")["model_version"] for url in stack.endpoints(name)] == ["v1.0", "v1.0"]

    # no spec change needed: once the account exists the rollout goes on and ends Ready
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "xlk-serving", "namespace": NAMESPACE},
    }
    stack.kubectl("apply", "-f", "-", input=account)
    tm = stack.wait_for(
        name, lambda tm: tm["status"].get("phase") == "Ready" and tm["status"].get("activeVersion") == "v1.1"
    )
    assert reason(tm, "Stalled") == "NotStalled" and kstatus(tm) == "Current"
    stack.wait_until(lambda: len(stack.endpoints(name)) == 2, "two ready replicas of v1.1")
    assert {predict_at(url, "XLK")["model_version"] for url in stack.endpoints(name)} == {"v1.1"}


def _events(stack: Stack) -> list[dict[str, Any]]:
    assert stack.kube is not None
    return list((stack.kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/events") or {}).get("items") or [])


def test_the_serving_pods_get_a_disruption_budget_from_two_replicas_and_a_network_policy(stack: Stack) -> None:
    name = "xlv-production"
    stack.kubectl("apply", "-f", "-", input=tradingmodel_object(name, "XLV", "v1.0", stack.s3_endpoint,
                                                                serving={"replicas": 2}))  # fmt: skip
    tm = stack.wait_for(name, lambda tm: tm["status"].get("phase") == "Ready")
    budget = stack.get("policy/v1", "poddisruptionbudgets", name)
    policy = stack.get("networking.k8s.io/v1", "networkpolicies", name)
    assert owned_by(budget, tm) and owned_by(policy, tm)
    assert budget is not None and policy is not None
    assert budget["spec"]["maxUnavailable"] == 1
    assert stack.kube is not None
    selected = {"labelSelector": f"tradingmodel.trading.io/name={name}"}
    pods = (stack.kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", query=selected) or {})["items"]
    assert len(pods) == 2
    for pod in pods:  # the budget and the policy select exactly these pods
        labels = pod["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert "app.kubernetes.io/instance" not in labels  # Argo CD's tracking label
        assert pod["spec"]["automountServiceAccountToken"] is False

    stack.kubectl("patch", "tm", name, "--type", "merge", "-p", '{"spec": {"serving": {"replicas": 1}}}')
    stack.wait_until(lambda: stack.get("policy/v1", "poddisruptionbudgets", name) is None, "the budget to go")
    assert stack.get("networking.k8s.io/v1", "networkpolicies", name) is not None


def test_kopf_is_never_sent_a_deployment_that_is_not_ours(stack: Stack) -> None:
    """The Deployments watch asks the API server for our label: a cluster's other Deployments never
    reach the operator (kopf's own `labels=` filter would apply only after receiving them all)."""
    assert stack.kube is not None
    namespace = NAMESPACE
    bystander = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bystander", "namespace": namespace, "labels": {"app": "bystander"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "bystander"}},
                 "template": {"metadata": {"labels": {"app": "bystander"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}},
    }  # fmt: skip
    stack.kube.create(bystander)
    # one of ours changes after it: once kopf has received that change, it would have had the bystander
    watched = tradingmodel_object("spy-watch", "SPY", "v1.0", stack.s3_endpoint, stage="Staging")
    stack.kubectl("apply", "-f", "-", input=watched)

    def sent_to_kopf() -> dict[str, int]:
        rows = stack.kube.request("GET", "/local-stack/sent") or []  # type: ignore[union-attr]
        return {r["object"]: r["count"] for r in rows if r["client"] == "kopf" and r["resource"] == "deployments.apps"}

    seen = stack.wait_until(lambda: (s := sent_to_kopf()).get(f"{namespace}/spy-watch") and s, "kopf to see spy-watch")
    assert f"{namespace}/bystander" not in seen, seen
    assert stack.get("apps/v1", "deployments", "bystander") is not None  # it is there, only not sent


def test_a_deployment_of_an_earlier_operator_keeps_its_selector_and_loses_the_tracking_label(stack: Stack) -> None:
    """Earlier versions labelled the owned objects app.kubernetes.io/instance=<name> and selected the
    pods by it. A Deployment's selector is immutable (the local API refuses a change with 422, as a
    cluster does): the upgraded operator keeps it, drops the label from the objects, and serves."""
    from trading_operator.builders import build_deployment, build_service, labels
    from trading_operator.reconcile import owner_reference
    from trading_operator.spec import parse_spec

    name = "xlb-production"
    stack.kill_operator()  # the "old operator" made these objects; the new one starts afterwards
    try:
        stack.kubectl("apply", "-f", "-", input=tradingmodel(name, "XLB", "v1.0", stack))
        tm = stack.tradingmodel(name)
        assert tm is not None and stack.kube is not None
        legacy = {"app.kubernetes.io/name": "tradingmodel-serving", "app.kubernetes.io/instance": name}
        model = parse_spec(tm["spec"])
        old_labels = {**labels(name, model), "app.kubernetes.io/instance": name}
        for obj in (
            build_deployment(name, NAMESPACE, model, "sha256:" + "0" * 64, "img", 8080, match_labels=legacy),
            build_service(name, NAMESPACE, model, 8080, match_labels=legacy),
        ):
            obj["metadata"]["labels"] = old_labels
            obj["metadata"]["ownerReferences"] = [owner_reference(tm)]
            stack.kube.create(obj)
    finally:
        stack.restart_operator()

    tm = stack.wait_for(name, lambda tm: tm["status"].get("phase") == "Ready")
    dep = stack.get("apps/v1", "deployments", name)
    service = stack.get("v1", "services", name)
    assert dep is not None and service is not None
    assert dep["spec"]["selector"]["matchLabels"] == legacy == service["spec"]["selector"]
    assert "app.kubernetes.io/instance" not in dep["metadata"]["labels"]
    assert "app.kubernetes.io/instance" not in service["metadata"]["labels"]
    assert dep["metadata"]["labels"]["tradingmodel.trading.io/name"] == name
    assert not [e for e in stack.events_for(name) if e.get("reason") == "Failed"]
    url = stack.service_url(name)
    assert url is not None and predict_at(url, "XLB")["model_version"] == "v1.0"
