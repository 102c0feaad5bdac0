"""What clients rely on, checked over real HTTP: metadata, generation, status subresource, GC, watches."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from devstack.kube_api import BackgroundLoop, LocalKubeAPI
from helpers.kube import HttpApi

WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
def api(widgets: LocalKubeAPI) -> HttpApi:
    return HttpApi(widgets.url)


def create_widget(api: HttpApi, name: str, **spec: Any) -> dict[str, Any]:
    return api.ok(
        "POST",
        WIDGETS,
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"color": "red", **spec},
        },
    )


def meta_of(obj: dict[str, Any]) -> tuple[int, int]:
    return obj["metadata"]["generation"], int(obj["metadata"]["resourceVersion"])


def test_generation_moves_with_the_spec_only(api: HttpApi) -> None:
    created = create_widget(api, "gen")
    generation, rv = meta_of(created)
    assert generation == 1

    labelled = api.merge(f"{WIDGETS}/gen", {"metadata": {"labels": {"team": "a"}}})
    assert meta_of(labelled)[0] == 1 and meta_of(labelled)[1] > rv
    with_status = api.merge(f"{WIDGETS}/gen/status", {"status": {"phase": "Ready"}})
    assert meta_of(with_status)[0] == 1 and meta_of(with_status)[1] > meta_of(labelled)[1]
    respecced = api.merge(f"{WIDGETS}/gen", {"spec": {"size": 4}})
    assert meta_of(respecced)[0] == 2
    unchanged = api.merge(f"{WIDGETS}/gen", {"spec": {"size": 4}})
    assert meta_of(unchanged) == meta_of(respecced)  # a no-op write is not a write


def test_status_subresource_is_separate_from_the_object(api: HttpApi) -> None:
    create_widget(api, "sub")

    main = api.merge(f"{WIDGETS}/sub", {"spec": {"size": 2}, "status": {"phase": "Sneaky"}})
    assert main["spec"]["size"] == 2 and "status" not in main
    status = api.merge(f"{WIDGETS}/sub/status", {"spec": {"size": 9}, "status": {"phase": "Ready"}})
    assert status["spec"]["size"] == 2 and status["status"] == {"phase": "Ready"}
    created_with_status = api.ok(
        "POST", WIDGETS, {"metadata": {"name": "sub2"}, "spec": {"color": "red"}, "status": {"phase": "Fake"}}
    )
    assert "status" not in created_with_status


def test_merge_patch_null_deletes_and_put_replaces(api: HttpApi) -> None:
    created = create_widget(api, "put", note="x", extras={"a": 1, "b": {"c": 2}})

    patched = api.merge(f"{WIDGETS}/put", {"spec": {"note": None, "extras": {"b": None, "d": 3}}})
    assert "note" not in patched["spec"] and patched["spec"]["extras"] == {"a": 1, "d": 3}
    replacement = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "put", "resourceVersion": patched["metadata"]["resourceVersion"]},
        "spec": {"color": "blue"},
    }
    replaced = api.ok("PUT", f"{WIDGETS}/put", replacement)
    assert replaced["spec"] == {"color": "blue", "size": 3, "limits": {"cpu": "100m"}}
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    status, stale = api.call("PUT", f"{WIDGETS}/put", replacement)  # the resourceVersion is old now
    assert status == 409 and stale["reason"] == "Conflict"


def test_json_patch_with_a_failing_test_is_unprocessable(api: HttpApi) -> None:
    create_widget(api, "jp")

    status, body = api.call(
        "PATCH",
        f"{WIDGETS}/jp",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
            {"op": "replace", "path": "/spec/color", "value": "green"},
        ],
        content_type="application/json-patch+json",
    )

    assert status == 422 and body["kind"] == "Status"
    assert api.get(f"{WIDGETS}/jp")["spec"]["color"] == "red"


def test_lists_carry_kind_version_and_filter_by_selectors(api: HttpApi) -> None:
    api.ok(
        "POST",
        WIDGETS,
        {"metadata": {"name": "sel-a", "labels": {"tier": "web", "env": "prod"}}, "spec": {"color": "red"}},
    )
    api.ok("POST", WIDGETS, {"metadata": {"name": "sel-b", "labels": {"tier": "db"}}, "spec": {"color": "red"}})

    listing = api.get(WIDGETS)
    assert listing["kind"] == "WidgetList" and listing["apiVersion"] == "example.com/v1"
    assert int(listing["metadata"]["resourceVersion"]) >= max(
        int(i["metadata"]["resourceVersion"]) for i in listing["items"]
    )

    def names(query: str) -> set[str]:
        return {item["metadata"]["name"] for item in api.get(f"{WIDGETS}?{query}")["items"]}

    assert names("labelSelector=tier%3Dweb,env") == {"sel-a"}
    assert names("labelSelector=tier%20in%20(web,db)") == {"sel-a", "sel-b"}
    assert "sel-a" not in names("labelSelector=tier!%3Dweb")
    assert names("fieldSelector=metadata.name%3Dsel-b") == {"sel-b"}


def test_owned_objects_are_garbage_collected_recursively(api: HttpApi) -> None:
    owner = create_widget(api, "owner")

    def owned_by(obj: dict[str, Any], name: str) -> dict[str, Any]:
        ref = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"],
        }
        return api.ok("POST", CONFIGMAPS, {"metadata": {"name": name, "ownerReferences": [ref]}})

    child = owned_by(owner, "child")
    owned_by(child, "grandchild")
    other_owner = api.ok("POST", CONFIGMAPS, {"metadata": {"name": "other-owner"}})
    shared = owned_by(owner, "shared")
    api.merge(
        f"{CONFIGMAPS}/shared",
        {
            "metadata": {
                "ownerReferences": [
                    *shared["metadata"]["ownerReferences"],
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "other-owner",
                        "uid": other_owner["metadata"]["uid"],
                    },
                ]
            }
        },
    )

    api.ok("DELETE", f"{WIDGETS}/owner")

    assert api.call("GET", f"{CONFIGMAPS}/child")[0] == 404
    assert api.call("GET", f"{CONFIGMAPS}/grandchild")[0] == 404
    assert api.call("GET", f"{CONFIGMAPS}/shared")[0] == 200  # another owner still lives


def test_orphan_propagation_keeps_dependents(api: HttpApi) -> None:
    owner = create_widget(api, "orphaner")
    ref = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "orphaner", "uid": owner["metadata"]["uid"]}
    api.ok("POST", CONFIGMAPS, {"metadata": {"name": "orphan", "ownerReferences": [ref]}})

    api.ok("DELETE", f"{WIDGETS}/orphaner", {"propagationPolicy": "Orphan"})

    assert "ownerReferences" not in api.get(f"{CONFIGMAPS}/orphan")["metadata"]


def test_finalizers_hold_deletion_until_removed(api: HttpApi) -> None:
    api.ok(
        "POST", WIDGETS, {"metadata": {"name": "fin", "finalizers": ["example.com/cleanup"]}, "spec": {"color": "red"}}
    )

    marked = api.ok("DELETE", f"{WIDGETS}/fin")
    assert marked["metadata"]["deletionTimestamp"]
    status, body = api.call(
        "PATCH",
        f"{WIDGETS}/fin",
        {"metadata": {"finalizers": ["a", "example.com/cleanup"]}},
        content_type="application/merge-patch+json",
    )
    assert status == 422 and "no new finalizers" in body["message"]
    api.merge(f"{WIDGETS}/fin", {"metadata": {"finalizers": None}})
    assert api.call("GET", f"{WIDGETS}/fin")[0] == 404


def watch_lines(url: str, count: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return [json.loads(response.readline()) for _ in range(count)]


def test_watch_resumes_from_a_resource_version(api: HttpApi) -> None:
    created = create_widget(api, "watched")
    rv = created["metadata"]["resourceVersion"]
    api.merge(f"{WIDGETS}/watched", {"spec": {"size": 5}})
    api.ok("DELETE", f"{WIDGETS}/watched")

    events = watch_lines(f"{api.url}{WIDGETS}?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dwatched", 2)

    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "watched"),
        ("DELETED", "watched"),
    ]
    assert events[0]["object"]["spec"]["size"] == 5


def test_watch_with_initial_events_ends_them_with_a_bookmark(api: HttpApi) -> None:
    create_widget(api, "initial")

    events = watch_lines(
        f"{api.url}{WIDGETS}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true"
        "&resourceVersionMatch=NotOlderThan&fieldSelector=metadata.name%3Dinitial",
        2,
    )

    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "initial"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_events_can_be_posted_and_found_by_object(api: HttpApi) -> None:
    owner = create_widget(api, "noisy")
    uid = owner["metadata"]["uid"]
    api.ok(
        "POST",
        "/api/v1/namespaces/default/events",
        {
            "metadata": {"generateName": "noisy-"},
            "reason": "Tested",
            "message": "hello",
            "type": "Normal",
            "involvedObject": {"kind": "Widget", "name": "noisy", "namespace": "default", "uid": uid},
        },
    )
    api.ok(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/default/events",
        {
            "metadata": {"name": "noisy-new"},
            "reason": "Tested",
            "note": "hi",
            "type": "Normal",
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "action": "Test",
            "reportingController": "tests",
            "reportingInstance": "tests-1",
            "regarding": {"kind": "Widget", "name": "noisy", "uid": uid},
        },
    )

    found = api.get(f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.uid%3D{uid}")
    assert [e["message"] for e in found["items"]] == ["hello"]
    assert api.get("/apis/events.k8s.io/v1/namespaces/default/events")["items"][0]["note"] == "hi"


def test_table_responses_follow_the_accept_header(api: HttpApi) -> None:
    create_widget(api, "tabled", size=6)
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

    table = api.ok("GET", f"{WIDGETS}?fieldSelector=metadata.name%3Dtabled", headers={"Accept": accept})

    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Color", "Size", "Ready", "Note", "Age"]
    assert table["rows"][0]["cells"][:3] == ["tabled", "red", 6]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_deleting_a_namespace_deletes_what_is_in_it(api: HttpApi) -> None:
    api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": "scratch"}})
    api.ok("POST", "/api/v1/namespaces/scratch/configmaps", {"metadata": {"name": "inside"}})

    api.ok("DELETE", "/api/v1/namespaces/scratch")

    assert api.call("GET", "/api/v1/namespaces/scratch/configmaps/inside")[0] == 404


def test_secrets_fold_string_data_into_data(api: HttpApi) -> None:
    secret = api.ok(
        "POST", "/api/v1/namespaces/default/secrets", {"metadata": {"name": "creds"}, "stringData": {"KEY": "value"}}
    )

    assert secret["data"] == {"KEY": "dmFsdWU="} and "stringData" not in secret


def test_deleting_a_crd_removes_its_objects_and_resource(kube_api: LocalKubeAPI) -> None:
    api = HttpApi(kube_api.url)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "gadgets", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }
    api.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    api.ok("POST", "/apis/example.com/v1/gadgets", {"metadata": {"name": "g1"}, "spec": {"any": "thing"}})
    assert "gadgets" in {r["name"] for r in api.get("/apis/example.com/v1")["resources"]}

    api.ok("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.example.com")

    assert "gadgets" not in {r["name"] for r in api.get("/apis/example.com/v1")["resources"]}
    assert api.call("GET", "/apis/example.com/v1/gadgets/g1")[0] == 404


def test_an_invalid_crd_is_refused(kube_api: LocalKubeAPI) -> None:
    status, body = HttpApi(kube_api.url).call(
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        {
            "metadata": {"name": "wrong.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1", "served": True, "storage": True}],
            },
        },
    )

    assert status == 422 and "things.example.com" in body["message"]


def test_test_reactions_win_over_the_store(background_loop: BackgroundLoop) -> None:
    local = LocalKubeAPI(port=0)
    background_loop.run(local.start())
    try:
        api = HttpApi(local.url)
        api.ok("POST", CONFIGMAPS, {"metadata": {"name": "flaky"}, "data": {"a": "1"}})
        local.emulator[f"get {CONFIGMAPS}/flaky"][:1] << 503  # the next read fails once, like a sick API

        assert api.call("GET", f"{CONFIGMAPS}/flaky")[0] == 503
        assert api.get(f"{CONFIGMAPS}/flaky")["data"] == {"a": "1"}  # then the store answers again
        assert api.get(CONFIGMAPS)["kind"] == "ConfigMapList"  # other requests never noticed
    finally:
        background_loop.run(local.stop())


# -- built-in kinds: what a real API server refuses in the fields the operator sets ---------------

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def deployment(name: str, labels: dict[str, str] | None = None, **container: Any) -> dict[str, Any]:
    pods = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pods},
                "spec": {"containers": [{"name": "c", "image": "i:1", **container}]},
            },
        },
    }


@pytest.mark.parametrize(
    ("labels", "detail"),
    [
        ({"version": "v1.2-" + "a" * 59}, "must be no more than 63 characters"),
        ({"version": "-v1"}, "a valid label must be an empty string or consist of alphanumeric characters"),
        ({"bad key!": "x"}, "name part must consist of alphanumeric characters"),
        ({"Trading.IO/x": "y"}, "prefix part a lowercase RFC 1123 subdomain"),
    ],
)
def test_a_label_a_cluster_refuses_is_refused_with_its_message(http_api: HttpApi, labels: dict[str, str],
                                                                detail: str) -> None:  # fmt: skip
    status, body = http_api.call("POST", DEPLOYMENTS, deployment("labelled", labels))
    assert status == 422 and body["reason"] == "Invalid", body
    assert body["message"].startswith('Deployment.apps "labelled" is invalid: [metadata.labels: Invalid value: ')
    assert detail in body["message"]  # and the same for the template: two causes, listed as the real server does
    fields = {cause["field"] for cause in body["details"]["causes"]}
    assert fields == {"metadata.labels", "spec.template.metadata.labels"}  # the pods' too
    assert http_api.call("GET", f"{DEPLOYMENTS}/labelled")[0] == 404


def test_a_quantity_that_is_none_is_a_bad_request_like_a_failed_decode(http_api: HttpApi) -> None:
    status, body = http_api.call("POST", DEPLOYMENTS, deployment("q", resources={"limits": {"cpu": "two"}}))
    assert status == 400, body
    assert body["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: quantities must match the regular '
        "expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )


def test_a_request_above_its_limit_or_below_zero_is_invalid(http_api: HttpApi) -> None:
    over = {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}
    status, body = http_api.call("POST", DEPLOYMENTS, deployment("over", resources=over))
    assert status == 422, body
    assert body["details"]["causes"][0]["field"] == "spec.template.spec.containers[0].resources.requests"
    assert 'Invalid value: "2Gi": must be less than or equal to memory limit of 1Gi' in body["message"]
    status, body = http_api.call("POST", DEPLOYMENTS, deployment("neg", resources={"requests": {"cpu": "-1"}}))
    assert status == 422 and "must be greater than or equal to 0" in body["message"], body
    fine = {"requests": {"cpu": "250m", "ephemeral-storage": "256Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    assert http_api.call("POST", DEPLOYMENTS, deployment("fine", resources=fine))[0] == 201


def test_a_deployment_selector_matches_its_template_and_never_changes(http_api: HttpApi) -> None:
    made = http_api.ok("POST", DEPLOYMENTS, deployment("sel"))
    moved = {"spec": {"selector": {"matchLabels": {"app": "sel", "tier": "x"}},
                      "template": {"metadata": {"labels": {"tier": "x"}}}}}  # fmt: skip
    status, body = http_api.call("PATCH", f"{DEPLOYMENTS}/sel", moved, content_type="application/merge-patch+json")
    assert status == 422 and "spec.selector: Invalid value: " in body["message"], body
    assert "field is immutable" in body["message"]
    assert http_api.get(f"{DEPLOYMENTS}/sel")["spec"]["selector"] == made["spec"]["selector"]
    stray = deployment("stray")
    stray["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    status, body = http_api.call("POST", DEPLOYMENTS, stray)
    assert status == 422 and "`selector` does not match template `labels`" in body["message"], body


def test_what_a_label_selector_leaves_out_is_never_sent_to_the_client(kube_api: LocalKubeAPI,
                                                                      http_api: HttpApi) -> None:  # fmt: skip
    """The local API counts the objects it sends each client: a selector filters on the server."""
    http_api.ok("POST", DEPLOYMENTS, deployment("ours-1", {"team": "ours"}))
    http_api.ok("POST", DEPLOYMENTS, deployment("theirs-1", {"team": "theirs"}))
    agent = {"User-Agent": "selective/1.0"}
    listing = http_api.ok("GET", f"{DEPLOYMENTS}?labelSelector=team%3Dours", headers=agent)
    assert [d["metadata"]["name"] for d in listing["items"]] == ["ours-1"]
    url = f"{kube_api.url}{DEPLOYMENTS}?watch=true&labelSelector=team%3Dours&resourceVersion=" + str(
        listing["metadata"]["resourceVersion"]
    )
    request = urllib.request.Request(url, headers=agent)
    with urllib.request.urlopen(request, timeout=10) as stream:
        http_api.ok("POST", DEPLOYMENTS, deployment("theirs-2", {"team": "theirs"}))
        http_api.ok("POST", DEPLOYMENTS, deployment("ours-2", {"team": "ours"}))
        event = json.loads(stream.readline())
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "ours-2")
    sent = {row["object"]: row["count"] for row in http_api.get("/local-stack/sent") if row["client"] == "selective"}
    assert sent == {"default/ours-1": 1, "default/ours-2": 1}
