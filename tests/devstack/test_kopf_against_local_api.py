"""A minimal real kopf operator against the local API: it reacts to create and update and patches status."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner

from devstack.kube_api import LocalKubeAPI
from helpers.kube import HttpApi, wait_for

WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"

OPERATOR = textwrap.dedent("""
    import json
    import os
    import urllib.request

    import kopf

    URL = os.environ["LOCAL_KUBE_URL"]


    def post(path, body):
        request = urllib.request.Request(URL + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()


    @kopf.on.login()
    def login(**_):
        return kopf.ConnectionInfo(server=URL, insecure=True)


    @kopf.on.startup()
    def configure(settings, **_):
        settings.peering.standalone = True
        settings.watching.server_timeout = 30


    @kopf.on.create("example.com", "v1", "widgets")
    def created(body, spec, meta, patch, **_):
        kopf.info(body, reason="Painted", message=f"painted {spec['color']}")
        patch.status["phase"] = "Ready"
        patch.status["observedGeneration"] = meta["generation"]
        child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{meta['name']}-config"},
                 "data": {"color": spec["color"]}}
        kopf.adopt(child)
        post(f"/api/v1/namespaces/{meta['namespace']}/configmaps", child)
        return {"child": child["metadata"]["name"]}


    @kopf.on.update("example.com", "v1", "widgets", field="spec")
    def updated(spec, meta, patch, **_):
        patch.status["observedGeneration"] = meta["generation"]
        patch.status["color"] = spec["color"]


    @kopf.on.delete("example.com", "v1", "widgets")
    def deleted(body, **_):
        kopf.info(body, reason="Cleaned", message="cleaned up")
""")


@pytest.fixture(scope="module")
def operator(widgets: LocalKubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KopfRunner]:
    path = tmp_path_factory.mktemp("kopf") / "operator.py"
    path.write_text(OPERATOR)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("LOCAL_KUBE_URL", widgets.url)
    with KopfRunner(["run", "--standalone", "--namespace=default", str(path)], timeout=60) as runner:
        yield runner
    monkeypatch.undo()
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


def status_of(api: HttpApi, name: str) -> dict[str, Any]:
    return api.get(f"{WIDGETS}/{name}").get("status") or {}


def test_kopf_handles_create_and_patches_status(operator: KopfRunner, widgets: LocalKubeAPI) -> None:
    api = HttpApi(widgets.url)
    api.ok("POST", WIDGETS, {"metadata": {"name": "kopfed"}, "spec": {"color": "blue"}})

    status = wait_for(
        lambda: status_of(api, "kopfed").get("phase") and status_of(api, "kopfed"), what="kopf to patch the status"
    )

    assert status["phase"] == "Ready" and status["observedGeneration"] == 1
    assert status["created"] == {"child": "kopfed-config"}
    config = api.get("/api/v1/namespaces/default/configmaps/kopfed-config")
    assert config["metadata"]["ownerReferences"][0]["name"] == "kopfed"
    messages = wait_for(
        lambda: [
            e["message"]
            for e in api.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dkopfed")["items"]
        ],
        what="kopf's event",
    )
    assert messages == ["painted blue"]


def test_kopf_sees_spec_updates_with_the_new_generation(operator: KopfRunner, widgets: LocalKubeAPI) -> None:
    api = HttpApi(widgets.url)
    api.ok("POST", WIDGETS, {"metadata": {"name": "repainted"}, "spec": {"color": "red"}})
    wait_for(lambda: status_of(api, "repainted").get("phase"), what="the create handler")

    api.merge(f"{WIDGETS}/repainted", {"spec": {"color": "green"}})

    status = wait_for(
        lambda: status_of(api, "repainted").get("color") and status_of(api, "repainted"), what="the update handler"
    )
    assert status["color"] == "green" and status["observedGeneration"] == 2


def test_deletion_waits_for_kopfs_finalizer_then_collects_adopted_objects(
    operator: KopfRunner, widgets: LocalKubeAPI
) -> None:
    api = HttpApi(widgets.url)
    api.ok("POST", WIDGETS, {"metadata": {"name": "doomed"}, "spec": {"color": "red"}})
    wait_for(
        lambda: api.call("GET", "/api/v1/namespaces/default/configmaps/doomed-config")[0] == 200,
        what="the adopted ConfigMap",
    )
    assert api.get(f"{WIDGETS}/doomed")["metadata"]["finalizers"]  # kopf guards its delete handler

    marked = api.ok("DELETE", f"{WIDGETS}/doomed")

    assert marked["metadata"]["deletionTimestamp"]
    wait_for(lambda: api.call("GET", f"{WIDGETS}/doomed")[0] == 404, what="kopf to release the widget")
    assert api.call("GET", "/api/v1/namespaces/default/configmaps/doomed-config")[0] == 404
    wait_for(
        lambda: (
            "cleaned up"
            in [
                e["message"]
                for e in api.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Ddoomed")[
                    "items"
                ]
            ]
        ),
        what="the delete handler's event",
    )
