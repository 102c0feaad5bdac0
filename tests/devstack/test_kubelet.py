"""The local kubelet and Deployment controller: real processes for Deployments in the local API."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.kube_api import BackgroundLoop, LocalKubeAPI
from devstack.kubelet import LocalKubelet
from helpers.kube import STANDIN, HttpApi, Kubectl, wait_for

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
PODS = "/api/v1/namespaces/default/pods"


def command_for(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The stand-in server, except for pods labelled to run elsewhere (none) or with a broken command."""
    labels = pod["metadata"]["labels"]
    if "elsewhere" in labels:
        return []
    if "broken" in labels:
        return ["/nonexistent/serving-binary"]
    return [sys.executable, str(STANDIN)]


@pytest.fixture(scope="module")
def kubelet(
    kube_api: LocalKubeAPI, background_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalKubelet]:
    kubelet = LocalKubelet(
        kube_api.url,
        state_dir=tmp_path_factory.mktemp("kubelet"),
        command_factory=command_for,
        grace_seconds=3.0,
        max_backoff_seconds=1.0,
        config_retry_seconds=0.2,
    )
    background_loop.run(kubelet.start())
    yield kubelet
    pids = pids_of_all(HttpApi(kube_api.url))
    background_loop.run(kubelet.stop())
    assert not [pid for pid in pids if alive(pid)], "processes survived the kubelet's shutdown"


@pytest.fixture(scope="module")
def api(kube_api: LocalKubeAPI, kubelet: LocalKubelet) -> HttpApi:
    api = HttpApi(kube_api.url)
    api.ok(
        "POST",
        "/api/v1/namespaces/default/secrets",
        {"metadata": {"name": "s3-credentials"}, "stringData": {"AWS_ACCESS_KEY_ID": "AKIALOCAL"}},
    )
    return api


def deployment(
    name: str,
    *,
    replicas: int = 1,
    version: str = "v1",
    extra_env: dict[str, str] | None = None,
    secret: str = "s3-credentials",
) -> dict[str, Any]:
    env = [
        {"name": "MODEL_VERSION", "value": version},
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "MODEL_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *({"name": k, "value": v} for k, v in (extra_env or {}).items()),
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "serving",
                            "image": "ignored:latest",
                            "env": env,
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/v2/health/ready", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}},
                        }
                    ]
                },
            },
        },
    }


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pods_of(api: HttpApi, app: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"{PODS}?labelSelector=app%3D{app}")["items"]
    return items


def pids_of(pods: list[dict[str, Any]]) -> list[int]:
    ids = [s.get("containerID", "") for p in pods for s in (p.get("status") or {}).get("containerStatuses") or []]
    return [int(i.removeprefix("local://")) for i in ids if i.startswith("local://")]


def pids_of_all(api: HttpApi) -> list[int]:
    return pids_of(api.get("/api/v1/pods")["items"])


def envs(kubelet: LocalKubelet, name: str, count: int) -> list[dict[str, str]]:
    urls = wait_for(
        lambda: len(found := kubelet.endpoints("default", name)) == count and found,
        what=f"{count} ready endpoints of {name}",
    )
    return [get_json(f"{url}/env") for url in urls]


def container_status(api: HttpApi, app: str) -> dict[str, Any] | None:
    """The first container status of the (single) pod of an app, once the kubelet reported one."""
    pods = pods_of(api, app)
    statuses = (pods[0].get("status") or {}).get("containerStatuses") if pods else None
    return statuses[0] if statuses else None


def status_of(api: HttpApi, name: str) -> dict[str, Any]:
    status: dict[str, Any] = api.get(f"{DEPLOYMENTS}/{name}").get("status") or {}
    return status


def reasons(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["reason"] for c in status.get("conditions") or []}


def test_a_deployment_runs_ready_processes_with_its_env(api: HttpApi, kubelet: LocalKubelet) -> None:
    created = api.ok("POST", DEPLOYMENTS, deployment("spy", replicas=2))

    environments = envs(kubelet, "spy", 2)

    for url, env in zip(kubelet.endpoints("default", "spy"), environments, strict=True):
        assert url.endswith(f":{env['PORT']}")
        assert env["MODEL_VERSION"] == "v1" and env["AWS_ACCESS_KEY_ID"] == "AKIALOCAL"
        assert env["MODEL_NAME"] == env["HOSTNAME"] and env["MODEL_NAME"].startswith("spy-")
        assert os.path.isdir(env["MODEL_CACHE_DIR"])
    assert len({env["MODEL_CACHE_DIR"] for env in environments}) == 2  # one cache per pod by default
    status = wait_for(
        lambda: status_of(api, "spy").get("availableReplicas") == 2 and status_of(api, "spy"),
        what="the deployment status",
    )
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (2, 2, 2)
    assert reasons(status) == {"Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}
    for pod in pods_of(api, "spy"):
        assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"] == "127.0.0.1"
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert pod["metadata"]["labels"]["pod-template-hash"]


def test_kubectl_shows_the_pods_and_their_logs(api: HttpApi, kubelet: LocalKubelet, kubectl: Kubectl) -> None:
    api.ok("POST", DEPLOYMENTS, deployment("logged"))
    envs(kubelet, "logged", 1)
    pod = pods_of(api, "logged")[0]["metadata"]["name"]

    listing = kubectl.run("get", "pods", "-l", "app=logged").stdout
    assert listing.splitlines()[1].split()[:3] == [pod, "1/1", "Running"]
    assert f"as {pod}" in kubectl.run("logs", pod).stdout
    assert "successfully rolled out" in kubectl.run("rollout", "status", "deploy/logged", "--timeout=30s").stdout
    assert "ScalingReplicaSet" in kubectl.run("describe", "deploy", "logged").stdout.split("Events:")[1]
    pod_events = kubectl.run("describe", "pod", pod).stdout.split("Events:")[1]
    assert "Started" in pod_events and "local-kubelet" in pod_events


def test_a_template_change_rolls_to_new_processes(api: HttpApi, kubelet: LocalKubelet) -> None:
    api.ok("POST", DEPLOYMENTS, deployment("roll", replicas=2))
    envs(kubelet, "roll", 2)
    old_pids = pids_of(pods_of(api, "roll"))

    api.merge(f"{DEPLOYMENTS}/roll", {"spec": {"template": deployment("roll", version="v2")["spec"]["template"]}})

    wait_for(
        lambda: (
            sorted(e["MODEL_VERSION"] for e in envs(kubelet, "roll", 2)) == ["v2", "v2"]
            and len(pods_of(api, "roll")) == 2
        ),
        what="the rollout to v2",
    )
    wait_for(lambda: not any(alive(pid) for pid in old_pids), what="the old processes to stop")
    status = wait_for(
        lambda: reasons(s := status_of(api, "roll")).get("Progressing") == "NewReplicaSetAvailable" and s,
        what="the rollout to complete",
    )
    assert (status["updatedReplicas"], status["readyReplicas"]) == (2, 2)


def test_a_version_that_never_gets_ready_leaves_the_old_one_serving(api: HttpApi, kubelet: LocalKubelet) -> None:
    good = deployment("stuck", version="good")
    api.ok("POST", DEPLOYMENTS, good)
    envs(kubelet, "stuck", 1)
    serving = kubelet.endpoints("default", "stuck")

    bad_template = deployment("stuck", version="bad", extra_env={"STANDIN_NEVER_READY": "1"})["spec"]["template"]
    api.merge(f"{DEPLOYMENTS}/stuck", {"spec": {"template": bad_template}})

    def new_pod_running_unready() -> bool:
        statuses = [p.get("status") or {} for p in pods_of(api, "stuck")]
        return (
            len(statuses) == 2
            and sum(
                s.get("phase") == "Running" and not s["containerStatuses"][0]["ready"]
                for s in statuses
                if s.get("containerStatuses")
            )
            == 1
        )

    wait_for(new_pod_running_unready, what="the new, never-ready pod")
    assert kubelet.endpoints("default", "stuck") == serving
    assert get_json(f"{serving[0]}/env")["MODEL_VERSION"] == "good"
    wait_for(lambda: reasons(status_of(api, "stuck")).get("Progressing") == "ReplicaSetUpdated",
             what="the rollout to be reported in progress")  # fmt: skip

    api.merge(f"{DEPLOYMENTS}/stuck", {"spec": {"template": good["spec"]["template"]}})  # roll back

    wait_for(lambda: len(pods_of(api, "stuck")) == 1, what="the bad pod to go")
    assert kubelet.endpoints("default", "stuck") == serving  # the good pod was never replaced


def test_a_rollout_without_progress_past_its_deadline_is_reported_like_the_real_controller(
    api: HttpApi, kubelet: LocalKubelet
) -> None:
    """Progressing=False, reason ProgressDeadlineExceeded, once progressDeadlineSeconds pass without
    progress; found by a pass of its own (no event happens when nothing progresses)."""
    good = deployment("deadline", version="good")
    good["spec"]["progressDeadlineSeconds"] = 2
    api.ok("POST", DEPLOYMENTS, good)
    envs(kubelet, "deadline", 1)
    serving = kubelet.endpoints("default", "deadline")
    # The pod turns ready before the controller writes the Deployment's status: wait for it.
    wait_for(lambda: reasons(status_of(api, "deadline")).get("Progressing") == "NewReplicaSetAvailable",
             what="the first rollout to complete")  # fmt: skip

    bad_template = deployment("deadline", version="bad", extra_env={"STANDIN_NEVER_READY": "1"})["spec"]["template"]
    api.merge(f"{DEPLOYMENTS}/deadline", {"spec": {"template": bad_template}})
    wait_for(lambda: reasons(status_of(api, "deadline")).get("Progressing") == "ProgressDeadlineExceeded",
             what="ProgressDeadlineExceeded")  # fmt: skip
    progressing = next(c for c in status_of(api, "deadline")["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "False" and progressing["message"].endswith("has timed out progressing.")
    assert kubelet.endpoints("default", "deadline") == serving  # maxUnavailable 0: the old pod serves on
    assert get_json(f"{serving[0]}/env")["MODEL_VERSION"] == "good"

    api.merge(f"{DEPLOYMENTS}/deadline", {"spec": {"template": good["spec"]["template"]}})  # roll back
    wait_for(lambda: reasons(status_of(api, "deadline")).get("Progressing") == "NewReplicaSetAvailable",
             what="the rollback to complete")  # fmt: skip


def test_scaling_to_zero_stops_the_processes(api: HttpApi, kubelet: LocalKubelet) -> None:
    api.ok("POST", DEPLOYMENTS, deployment("scaled", replicas=2))
    envs(kubelet, "scaled", 2)
    pids = pids_of(pods_of(api, "scaled"))

    api.merge(f"{DEPLOYMENTS}/scaled", {"spec": {"replicas": 0}})

    wait_for(lambda: not pods_of(api, "scaled"), what="the pods to go")
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the processes to stop")
    assert kubelet.endpoints("default", "scaled") == []
    status = wait_for(
        lambda: status_of(api, "scaled").get("replicas") == 0 and status_of(api, "scaled"),
        what="the status to say zero",
    )
    assert reasons(status)["Available"] == "MinimumReplicasAvailable"


def test_deleting_the_deployment_stops_its_processes(api: HttpApi, kubelet: LocalKubelet) -> None:
    api.ok("POST", DEPLOYMENTS, deployment("doomed"))
    envs(kubelet, "doomed", 1)
    pids = pids_of(pods_of(api, "doomed"))

    api.ok("DELETE", f"{DEPLOYMENTS}/doomed")

    assert not pods_of(api, "doomed")  # garbage collection: Deployment -> ReplicaSet -> Pods
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the process to stop")


def test_a_crashing_container_is_restarted_with_back_off(api: HttpApi, kubelet: LocalKubelet) -> None:
    api.ok("POST", DEPLOYMENTS, deployment("crashy", extra_env={"STANDIN_EXIT_CODE": "3"}))

    def crash_looping() -> dict[str, Any] | None:
        status = container_status(api, "crashy")
        return status if status and status["restartCount"] >= 2 and "waiting" in status["state"] else None

    container = wait_for(crash_looping, what="two restarts")
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["lastState"]["terminated"]["exitCode"] == 3
    assert kubelet.endpoints("default", "crashy") == []


def test_a_missing_secret_holds_the_pod_until_it_exists(api: HttpApi, kubelet: LocalKubelet) -> None:
    api.ok("POST", DEPLOYMENTS, deployment("patient", secret="late-secret"))

    def waiting_reason() -> str | None:
        status = container_status(api, "patient")
        waiting = status["state"].get("waiting") if status else None
        return f"{waiting['reason']}: {waiting['message']}" if waiting else None

    assert wait_for(waiting_reason, what="the config error") == (
        'CreateContainerConfigError: secret "late-secret" not found'
    )
    api.ok(
        "POST",
        "/api/v1/namespaces/default/secrets",
        {"metadata": {"name": "late-secret"}, "stringData": {"AWS_ACCESS_KEY_ID": "LATE"}},
    )

    assert envs(kubelet, "patient", 1)[0]["AWS_ACCESS_KEY_ID"] == "LATE"


def test_an_empty_command_leaves_the_pod_pending(api: HttpApi, kubelet: LocalKubelet) -> None:
    manifest = deployment("remote")
    manifest["spec"]["template"]["metadata"]["labels"]["elsewhere"] = "yes"
    api.ok("POST", DEPLOYMENTS, manifest)

    def waiting() -> str | None:
        status = container_status(api, "remote")
        return status["state"].get("waiting", {}).get("reason") if status else None

    assert wait_for(waiting, what="the pod status") == "NotRunLocally"
    assert pods_of(api, "remote")[0]["status"]["phase"] == "Pending"
    assert kubelet.endpoints("default", "remote") == []


def test_a_command_that_cannot_start_is_reported(api: HttpApi, kubelet: LocalKubelet) -> None:
    manifest = deployment("broken")
    manifest["spec"]["template"]["metadata"]["labels"]["broken"] = "yes"
    api.ok("POST", DEPLOYMENTS, manifest)

    def failure_messages() -> list[str]:
        events = api.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.kind%3DPod")["items"]
        return [
            e["message"]
            for e in events
            if e["involvedObject"]["name"].startswith("broken-") and e["reason"] == "Failed"
        ]

    messages = wait_for(failure_messages, what="the Failed event")
    assert "cannot start the container" in messages[0] and "/nonexistent/serving-binary" in messages[0]
    assert (
        wait_for(lambda: (s := container_status(api, "broken")) and s["restartCount"] >= 1 and s, what="a restart")[
            "state"
        ]["waiting"]["reason"]
        == "CrashLoopBackOff"
    )


def test_a_service_gets_a_stable_local_url(api: HttpApi, kubelet: LocalKubelet) -> None:
    api.ok("POST", DEPLOYMENTS, deployment("svc", replicas=2))
    api.ok(
        "POST",
        "/api/v1/namespaces/default/services",
        {
            "metadata": {"name": "svc-http"},
            "spec": {"selector": {"app": "svc"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    )
    envs(kubelet, "svc", 2)

    url = wait_for(
        lambda: (api.get("/api/v1/namespaces/default/services/svc-http")["metadata"].get("annotations") or {}).get(
            "local-stack.trading.io/url"
        ),
        what="the service URL",
    )

    assert kubelet.service_url("default", "svc-http") == url
    assert sorted(kubelet.endpoints("default", "svc-http")) == sorted(kubelet.endpoints("default", "svc"))
    hostnames = {get_json(f"{url}/env")["HOSTNAME"] for _ in range(4)}
    assert hostnames == {p["metadata"]["name"] for p in pods_of(api, "svc")}  # spread over both pods
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get_json(f"{url}/nowhere")  # the answer comes from a pod, not from the proxy
