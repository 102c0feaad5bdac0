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
from devstack.stack import NAMESPACE, predict_at, running_notes
from devstack.stack import LocalStack as Stack
from devstack.stack import tradingmodel as tradingmodel_object
from helpers.gitops import argocd_health, kstatus
from helpers.s3_servers import S3Server
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
    """kopf runs no update handler for a spec set back to the last one it handled: the drift timer's
    pass is what converges it (a timer that waited for 'the update pass' would wait for ever)."""
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
