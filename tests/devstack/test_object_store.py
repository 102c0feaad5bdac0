"""The object store directly: what its lists select and that its writes never change what readers hold."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from crd_validation import structural as schemas
from devstack import patching
from devstack.kinds import ResourceType
from devstack.kube_api import LocalKubeEmulator, _loads, register_crd
from devstack.selectors import parse_label_selector
from devstack.store import ObjectStore, Selection
from helpers.kube import WIDGET_CRD


@pytest.fixture
def emulator() -> LocalKubeEmulator:
    emulator = LocalKubeEmulator()
    register_crd(emulator, WIDGET_CRD)
    return emulator


def config_maps(store: ObjectStore) -> ResourceType:
    return store.types[("", "v1", "configmaps")]


def names(store: ObjectStore, namespace: str | None, selector: str, name: str | None = None) -> list[str]:
    selection = Selection(namespace=namespace, name=name, labels=parse_label_selector(selector))
    return [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in store.list(config_maps(store), selection)]


def merge(store: ObjectStore, rt: ResourceType, name: str, patch: Any, subresource: str | None = None) -> None:
    def change(current: dict[str, Any]) -> dict[str, Any]:
        return patching.apply_patch(current, patching.MERGE_PATCH, patch, strategic=not rt.is_custom)

    store.update_with(rt, "default", name, change, subresource=subresource)


def test_lists_by_label_find_what_carries_the_labels_in_name_order(emulator: LocalKubeEmulator) -> None:
    store = emulator.store
    cms = config_maps(store)
    for namespace, name, labels in [
        ("other", "c", {"app": "x"}),
        ("default", "b", {"app": "y"}),
        ("default", "a", {"app": "x", "tier": "web"}),
        ("default", "d", {}),
        ("default", "e", {"app": 1}),  # no selector value is a number: only != and notin select it
    ]:
        store.create(cms, namespace, {"metadata": {"name": name, "labels": labels}})

    assert names(store, "default", "app=x") == ["default/a"]
    assert names(store, None, "app=x") == ["default/a", "other/c"]
    assert names(store, "default", "app in (x,y),tier") == ["default/a"]
    assert names(store, "default", "app in (y,x)") == ["default/a", "default/b"]
    assert names(store, "default", "app!=x") == ["default/b", "default/d", "default/e"]
    assert names(store, "default", "app notin (x),app") == ["default/b", "default/e"]
    assert names(store, "default", "", name="b") == ["default/b"]
    assert names(store, "default", "app=x", name="b") == []

    merge(store, cms, "a", {"metadata": {"labels": {"app": "z", "tier": None}}})
    assert names(store, "default", "app=x") == []
    assert names(store, "default", "app=z") == ["default/a"]
    assert names(store, "default", "tier=web") == []
    merge(store, cms, "d", {"metadata": {"labels": {"app": "x"}}})
    assert names(store, None, "app=x") == ["default/d", "other/c"]

    store.delete(cms, "default", "d")
    store.delete(cms, "other", "c")
    assert names(store, None, "app=x") == []
    store.create(cms, "default", {"metadata": {"name": "d", "labels": {"app": "x"}}})
    assert names(store, None, "app=x") == ["default/d"]


def test_writes_never_change_what_readers_and_watchers_hold(emulator: LocalKubeEmulator) -> None:
    store = emulator.store
    widgets = store.types[("example.com", "v1", "widgets")]
    initial, watcher = store.watch(widgets, Selection(namespace="default"))
    body = {
        "metadata": {"name": "w", "labels": {"a": "1"}, "finalizers": ["example.com/keep"]},
        "spec": {"color": "red"},
    }
    sent = copy.deepcopy(body)
    store.create(widgets, "default", body)
    assert body == sent  # the store copies what it is given

    held = [store.get(widgets, "default", "w")]
    snapshots = [copy.deepcopy(held[0])]
    for patch, subresource in [
        ({"status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]}}, "status"),
        ({"spec": {"limits": {"cpu": "1"}}, "metadata": {"labels": {"b": "2"}}}, None),
        ({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}, "status"),
    ]:
        merge(store, widgets, "w", patch, subresource)
        held.append(store.get(widgets, "default", "w"))
        snapshots.append(copy.deepcopy(held[-1]))
    store.replace(widgets, "default", "w", {**held[-1], "spec": {"color": "blue"}})
    store.delete(widgets, "default", "w")  # a finalizer: marked for deletion
    merge(store, widgets, "w", {"metadata": {"finalizers": None}})  # and now deleted

    assert held == snapshots
    assert held[1]["status"]["phase"] == "Ready" and held[2]["spec"]["limits"] == {"cpu": "1"}
    events = []
    while not watcher.queue.empty():
        events.append(watcher.queue.get_nowait())
    assert [e["type"] for e in events] == ["ADDED", *["MODIFIED"] * 6, "DELETED"]
    assert [e["object"] for e in events[:4]] == snapshots
    assert (
        events[-2]["object"]["metadata"]["deletionTimestamp"] and "finalizers" not in events[-2]["object"]["metadata"]
    )
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) > int(
        events[-2]["object"]["metadata"]["resourceVersion"]
    )
    assert initial == []


def test_validation_answers_the_same_whether_or_not_it_remembers() -> None:
    """validate() remembers the errors of each top-level property's values; its answers are those of
    jsonschema over the whole object, for the same value seen again and for a new one."""
    schema = WIDGET_CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    strict = {**schema, "required": ["spec"], "properties": {**schema["properties"], "kind": {"type": "string"}}}
    validator = schemas.validator_for(strict)
    # additionalProperties (true: it refuses nothing) reaches members too: this one is validated whole
    whole = schemas.validator_for({**strict, "additionalProperties": True})

    objects = [
        {"metadata": {"name": "ok"}, "kind": "Widget", "spec": {"color": "red", "size": 3}, "status": {"a": 1}},
        {"metadata": {"name": "bad"}, "kind": 7, "spec": {"color": "pink", "size": 11, "code": "ab"}},
        {"metadata": {"name": "bad"}, "kind": "Widget", "spec": {"color": "red", "size": 3.0}, "status": {"b": [1]}},
        {"metadata": {"name": "bad"}, "kind": "Widget", "spec": {"color": "red", "size": True}},
        {"metadata": {"name": "nospec"}, "status": "none"},
    ]
    for _ in range(2):  # the second round answers from memory
        for obj in objects:
            assert schemas.validate(validator, obj) == schemas.validate(whole, obj)
    assert [e.field for e in schemas.validate(validator, objects[1])] == [
        "kind",
        "spec.code",
        "spec.color",
        "spec.size",
    ]


@pytest.mark.parametrize(
    "text",
    [b'{"a": 1, "b": [1.5, "x", null, true]}', b'{"big": 123456789012345678901234567890}', b'[9223372036854775807]',
     b'{"n": NaN, "i": -Infinity}', b'"\\ud800"', b'{"a": 1, "a": 2}', b"1e400", '{"\u00e9": 1}'.encode("utf-16")],
)  # fmt: skip
def test_request_bodies_read_as_the_json_module_reads_them(text: bytes) -> None:
    expected, read = json.loads(text), _loads(text)
    assert repr(read) == repr(expected) and type(read) is type(expected)


def test_request_bodies_that_are_not_json_are_refused_as_before() -> None:
    with pytest.raises(ValueError):
        _loads(b"{not json")
