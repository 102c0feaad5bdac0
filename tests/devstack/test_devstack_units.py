"""The pure pieces: patch formats, selectors, JSONPath, ages, schemas, rollout decisions, pod env."""

from __future__ import annotations

import base64
import datetime
import math
from typing import Any

import pytest

from crd_validation import cel as cel_rules
from crd_validation import structural as schemas
from devstack import deployments, jsonpath, patching, selectors, tables
from devstack.api_paths import ApiPath, parse_api_path
from devstack.kubelet import _Informer
from devstack.pod_env import EnvError, resolve_env

# RFC 7386 appendix A: (target, patch, result).
RFC7386_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386_EXAMPLES)
def test_merge_patch_follows_rfc7386(target: Any, patch: Any, result: Any) -> None:
    assert patching.merge_patch(target, patch) == result


def test_strategic_merge_patch_merges_containers_and_env_by_name() -> None:
    target = {
        "containers": [{"name": "a", "image": "x", "env": [{"name": "K", "value": "1"}]}, {"name": "b", "image": "y"}]
    }
    patch = {
        "containers": [
            {"name": "a", "env": [{"name": "K2", "value": "2"}]},
            {"name": "b", "$patch": "delete"},
            {"name": "c", "image": "z"},
        ],
        "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
    }

    assert patching.strategic_merge_patch(target, patch) == {
        "containers": [
            {"name": "c", "image": "z"},
            {"name": "a", "image": "x", "env": [{"name": "K", "value": "1"}, {"name": "K2", "value": "2"}]},
        ]
    }


def test_strategic_merge_patch_directives() -> None:
    assert patching.strategic_merge_patch({"a": {"x": 1, "y": 2}}, {"a": {"$patch": "replace", "z": 3}}) == {
        "a": {"z": 3}
    }
    assert patching.strategic_merge_patch({"finalizers": ["a"]}, {"finalizers": ["b"]}) == {"finalizers": ["a", "b"]}
    assert patching.strategic_merge_patch({"args": ["a", "b"]}, {"args": ["c"]}) == {"args": ["c"]}
    with pytest.raises(patching.PatchError, match="unsupported"):
        patching.apply_patch({}, patching.STRATEGIC_MERGE_PATCH, {"a": 1}, strategic=False)


def test_api_paths_read_namespaces_like_the_api_server() -> None:
    assert parse_api_path("/api/v1/namespaces") == ApiPath("", "v1", "namespaces")
    assert parse_api_path("/api/v1/namespaces/default") == ApiPath("", "v1", "namespaces", None, "default")
    assert parse_api_path("/api/v1/namespaces/ns/status") == ApiPath("", "v1", "namespaces", None, "ns", "status")
    assert parse_api_path("/apis/apps/v1/namespaces/ns/deployments/d/scale") == ApiPath(
        "apps", "v1", "deployments", "ns", "d", "scale"
    )
    assert parse_api_path("/apis/apps/v1") is None


def test_label_selectors_parse_and_match() -> None:
    parsed = selectors.parse_label_selector("app=web, tier in (a,b),!legacy,env")
    assert selectors.labels_match(parsed, {"app": "web", "tier": "b", "env": "x"})
    assert not selectors.labels_match(parsed, {"app": "web", "tier": "c", "env": "x"})
    assert not selectors.labels_match(parsed, {"app": "web", "tier": "a", "env": "x", "legacy": "1"})
    assert selectors.format_label_selector(parsed) == "app=web,tier in (a,b),!legacy,env"
    with pytest.raises(selectors.SelectorError):
        selectors.parse_label_selector("a in b")


def test_field_selectors_match_nested_fields() -> None:
    parsed = selectors.parse_field_selector("involvedObject.kind=Widget,type!=Warning")
    assert selectors.fields_match(parsed, {"involvedObject": {"kind": "Widget"}, "type": "Normal"})
    assert not selectors.fields_match(parsed, {"involvedObject": {"kind": "Widget"}, "type": "Warning"})


def test_jsonpath_subset_for_printer_columns() -> None:
    obj = {
        "status": {"conditions": [{"type": "Progressing", "status": "True"}, {"type": "Ready", "status": "False"}]},
        "spec": {"containers": [{"image": "a"}, {"image": "b"}]},
    }
    assert jsonpath.find('.status.conditions[?(@.type=="Ready")].status', obj) == ["False"]
    assert jsonpath.find("{.spec.containers[*].image}", obj) == ["a", "b"]
    assert jsonpath.find(".spec.containers[-1].image", obj) == ["b"]
    assert jsonpath.find(".spec.missing.deeper", obj) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (59, "59s"),
        (119, "119s"),
        (121, "2m1s"),
        (600, "10m"),
        (3 * 3600, "3h"),
        (7 * 3600 + 60, "7h1m"),
        (47 * 3600, "47h"),
        (3 * 86400 + 3600, "3d1h"),
        (30 * 86400, "30d"),
        (3 * 365 * 86400, "3y"),
    ],
)
def test_ages_print_like_kubectl(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


SCHEMA = {
    "type": "object",
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]+$"},
                "count": {"type": "integer", "minimum": 0, "default": 1},
                "nested": {
                    "type": "object",
                    "default": {},
                    "properties": {"level": {"type": "string", "default": "x"}},
                },
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
            },
        },
    },
}


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down, NaN equal to NaN."""
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize(
    "value",
    [
        {"spec": {"replicas": 2, "template": {"metadata": {"creationTimestamp": None}}}, "ok": True},
        {"status": {"score": float("nan"), "other": None}},  # orjson writes NaN as null
        {"limits": [float("inf"), -float("inf"), None, -0.0, 1.5]},
        {"big": 2**70, "none": None},  # beyond orjson's 64 bits
        {"text": "\ud800 lone surrogate", "none": None},
        [None, {"a": [None, 1]}],
        {"no nulls": [1, 2.5, "x", {"y": False}]},
    ],
)
def test_copy_json_is_an_exact_and_independent_copy(value: Any) -> None:
    copied = schemas.copy_json(value)
    assert _same(copied, value)
    copied_inner = copied[1] if isinstance(copied, list) else copied[next(iter(copied))]
    original_inner = value[1] if isinstance(value, list) else value[next(iter(value))]
    assert copied is not value and (copied_inner is not original_inner or not isinstance(original_inner, dict | list))


def test_schema_prunes_defaults_and_validates() -> None:
    obj = {
        "apiVersion": "v",
        "kind": "K",
        "metadata": {"name": "n", "extra": 1},
        "spec": {"name": "ok", "junk": 1, "free": {"any": {"thing": 1}}, "maybe": None},
        "top": 1,
    }

    pruned, dropped = schemas.prune(SCHEMA, obj)
    defaulted = schemas.apply_defaults(SCHEMA, pruned)

    assert sorted(dropped) == ["spec.junk", "top"]
    assert defaulted == {
        "apiVersion": "v",
        "kind": "K",
        "metadata": {"name": "n", "extra": 1},
        "spec": {"name": "ok", "free": {"any": {"thing": 1}}, "maybe": None, "count": 1, "nested": {"level": "x"}},
    }
    assert schemas.validate(schemas.validator_for(SCHEMA), defaulted) == []


def test_schema_errors_read_like_the_api_server() -> None:
    errors = schemas.validate(schemas.validator_for(SCHEMA), {"spec": {"count": "many", "nested": {"level": 1}}})

    assert [str(e) for e in errors] == [
        'spec.count: Invalid value: "string": spec.count in body must be of type integer: "string"',
        "spec.name: Required value",
        'spec.nested.level: Invalid value: "integer": spec.nested.level in body must be of type string: "integer"',
    ]


CEL_SCHEMA = {
    "type": "object",
    "x-kubernetes-validations": [{"rule": "self.metadata.name.startsWith('ok-')", "message": "name must start ok-"}],
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "replicas": {
                    "type": "integer",
                    "x-kubernetes-validations": [
                        {"rule": "self <= 5", "messageExpression": "'at most 5, not ' + string(self)"}
                    ],
                },
                "bucket": {
                    "type": "string",
                    "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "bucket is immutable"}],
                },
            },
        }
    },
}


@pytest.mark.skipif(cel_rules.celpy is None, reason="cel-python is not installed (the local extra installs it)")
def test_cel_rules_are_checked_with_their_messages() -> None:
    good = {"metadata": {"name": "ok-1", "labels": {"hidden": "from CEL"}}, "spec": {"replicas": 5, "bucket": "a"}}
    bad = {"metadata": {"name": "nope"}, "spec": {"replicas": 6, "bucket": "b"}}

    assert cel_rules.violations(CEL_SCHEMA, good) == []
    assert [str(e) for e in cel_rules.violations(CEL_SCHEMA, bad, old=good)] == [
        '<root>: Invalid value: "object": name must start ok-',
        'spec.replicas: Invalid value: "integer": at most 5, not 6',
        'spec.bucket: Invalid value: "string": bucket is immutable',
    ]
    assert cel_rules.violations(CEL_SCHEMA, dict(good, spec={"bucket": "new"})) == []  # no oldSelf on create


@pytest.mark.skipif(cel_rules.celpy is None, reason="cel-python is not installed (the local extra installs it)")
def test_cel_rules_ratchet_what_an_update_leaves_unchanged() -> None:
    stored = {"metadata": {"name": "ok-1"}, "spec": {"replicas": 9, "bucket": "a"}}  # stored before the rule
    status_write = dict(stored, status={"phase": "Ready"})
    assert cel_rules.violations(CEL_SCHEMA, status_write, old=stored) == []  # spec untouched: not re-checked
    assert [str(e) for e in cel_rules.violations(CEL_SCHEMA, stored)] == [  # on create it is checked
        'spec.replicas: Invalid value: "integer": at most 5, not 9',
    ]
    changed = dict(stored, spec={"replicas": 8, "bucket": "a"})
    assert [str(e) for e in cel_rules.violations(CEL_SCHEMA, changed, old=stored)] == [
        'spec.replicas: Invalid value: "integer": at most 5, not 8',
    ]


@pytest.mark.skipif(cel_rules.celpy is None, reason="cel-python is not installed (the local extra installs it)")
def test_cel_rules_see_what_they_read_and_repeat_their_answers() -> None:
    """A rule that reads only self.field is given only those fields (a status write then costs the
    rule, not the conversion of the whole object); one that reads self whole (size(self),
    self.all(...)) sees all of it; answers repeated from memory are the same answers."""
    schema = {
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "size(self) <= 3", "message": "at most 3 fields"},
            {"rule": "self.all(k, k != 'forbidden')", "message": "no field named forbidden"},
            {"rule": "self.spec.n < 10", "messageExpression": "'n is ' + string(self.spec.n)"},
        ],
    }
    small = {"metadata": {"name": "a"}, "spec": {"n": 1}}
    for _ in range(2):  # the second round answers from memory
        assert cel_rules.violations(schema, small) == []
        assert [e.detail for e in cel_rules.violations(schema, dict(small, status={}, forbidden=1))] == [
            'Invalid value: "object": at most 3 fields',
            'Invalid value: "object": no field named forbidden',
        ]
        assert [e.detail for e in cel_rules.violations(schema, dict(small, spec={"n": 12}))] == [
            'Invalid value: "object": n is 12'
        ]


@pytest.mark.skipif(cel_rules.celpy is None, reason="cel-python is not installed (the local extra installs it)")
def test_cel_rules_see_the_nested_fields_they_and_their_messages_read() -> None:
    """A rule reading self.spec.tickers sees spec.tickers, not the rest of the spec (a new
    spec.version repeats its answer from memory), and what its messageExpression reads besides."""
    stock_only = {
        "rule": "!has(self.spec.tickers) || self.spec.assetClass == 'stock'",
        "messageExpression": "'tickers are for stocks, ' + self.metadata.name + ' is ' + self.spec.assetClass",
    }
    short = {"rule": "!has(self.spec.tickers) || self.spec.tickers.all(t, size(t) <= 5)", "message": "short tickers"}
    schema = {"type": "object", "x-kubernetes-validations": [stock_only, short]}
    model = {"metadata": {"name": "m"}, "spec": {"assetClass": "etf", "tickers": ["ABCDEFG"], "version": "v1"}}

    for version in ("v1", "v2"):
        changed = dict(model, spec={**model["spec"], "version": version})
        assert [e.detail for e in cel_rules.violations(schema, changed)] == [
            'Invalid value: "object": tickers are for stocks, m is etf',
            'Invalid value: "object": short tickers',
        ]
    seen = {"metadata": {"name": "m"}, "spec": {"assetClass": "etf", "tickers": ["ABCDEFG"]}}
    assert cel_rules._narrowed(model, stock_only) == seen
    assert cel_rules._narrowed(model, short) == {"spec": {"tickers": ["ABCDEFG"]}}
    assert cel_rules.violations(schema, dict(model, spec={"assetClass": "stock", "tickers": ["A"]})) == []


def pod(name: str, owner: dict[str, Any], ready: bool, created: str = "2025-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "ownerReferences": [{"uid": owner["metadata"]["uid"]}],
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "d", "namespace": "ns", "uid": "uid-d", "generation": 3},
    "spec": {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c"}]}},
    },
}


def replica_set(deployment: dict[str, Any], replicas: int, revision: int, template: Any = None) -> dict[str, Any]:
    spec = dict(deployment["spec"], template=template or deployment["spec"]["template"])
    rs = deployments.new_replica_set(dict(deployment, spec=spec), deployments.template_hash(spec["template"]), revision)
    rs["metadata"]["uid"] = f"uid-{rs['metadata']['name']}"
    rs["spec"]["replicas"] = replicas
    return rs


def test_a_rollout_keeps_old_pods_until_all_new_pods_are_ready() -> None:
    old_template = {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "old"}]}}
    old = replica_set(DEPLOYMENT, 2, 1, old_template)
    new = replica_set(DEPLOYMENT, 2, 2)
    pods = [pod("o1", old, True), pod("o2", old, True), pod("n1", new, True), pod("n2", new, False)]

    first = deployments.plan_rollout(DEPLOYMENT, [old], pods[:2])
    assert first.create is not None and first.create["metadata"]["annotations"][deployments.REVISION_ANNOTATION] == "2"
    assert deployments.plan_rollout(DEPLOYMENT, [old, new], pods).scale == {}
    pods[3] = pod("n2", new, True)
    assert deployments.plan_rollout(DEPLOYMENT, [old, new], pods).scale == {old["metadata"]["name"]: 0}


def test_deployment_status_counts_and_conditions() -> None:
    new = replica_set(DEPLOYMENT, 2, 1)
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)

    partial = deployments.deployment_status(DEPLOYMENT, [new], [pod("a", new, True)], rollout_started=now, now=now)
    late = deployments.deployment_status(
        DEPLOYMENT, [new], [pod("a", new, True)], rollout_started=now, now=now + datetime.timedelta(seconds=601)
    )
    done = deployments.deployment_status(
        DEPLOYMENT, [new], [pod("a", new, True), pod("b", new, True)], rollout_started=now, now=now
    )

    assert (partial["observedGeneration"], partial["replicas"], partial["readyReplicas"]) == (3, 1, 1)
    assert [(c["type"], c["status"], c["reason"]) for c in partial["conditions"]] == [
        ("Available", "False", "MinimumReplicasUnavailable"),
        ("Progressing", "True", "ReplicaSetUpdated"),
    ]
    assert late["conditions"][1]["reason"] == "ProgressDeadlineExceeded"
    assert (done["availableReplicas"], done["updatedReplicas"]) == (2, 2)
    assert [c["reason"] for c in done["conditions"]] == ["MinimumReplicasAvailable", "NewReplicaSetAvailable"]


def test_scaling_down_removes_not_ready_then_youngest_pods() -> None:
    rs = replica_set(DEPLOYMENT, 1, 1)
    pods = [
        pod("old-ready", rs, True, "2025-01-01T00:00:00Z"),
        pod("young-ready", rs, True, "2025-01-02T00:00:00Z"),
        pod("not-ready", rs, False, "2025-01-01T00:00:00Z"),
    ]

    assert deployments.plan_pods(rs, pods).delete == ("not-ready", "young-ready")


def owned_pod(name: str, rv: int, *owners: str) -> dict[str, Any]:
    refs = [{"uid": owner} for owner in owners]
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": str(rv), "ownerReferences": refs}}


def test_the_informers_owner_index_follows_owner_references_deletions_and_relists() -> None:
    changed: list[str] = []
    informer = _Informer(lambda obj: changed.append(obj["metadata"]["name"]))
    informer.replace([owned_pod("b", 1, "rs-1"), owned_pod("a", 1, "rs-1")])
    assert [p["metadata"]["name"] for p in informer.owned_by("rs-1")] == ["a", "b"]  # name order

    informer.apply(owned_pod("a", 2, "rs-2"))  # adopted by another owner
    assert [p["metadata"]["name"] for p in informer.owned_by("rs-1")] == ["b"]
    assert informer.owned_by("rs-2") == [owned_pod("a", 2, "rs-2")]
    informer.apply(owned_pod("a", 1, "rs-1"))  # older than what we have: ignored
    assert informer.owned_by("rs-2") == [owned_pod("a", 2, "rs-2")]

    informer.apply(owned_pod("b", 2, "rs-1"), deleted=True)
    informer.apply(owned_pod("b", 3, "rs-1"))  # a deleted uid never comes back
    assert informer.owned_by("rs-1") == []

    changed.clear()
    informer.replace([owned_pod("c", 4, "rs-2")])  # a relist without "a": it was deleted meanwhile
    assert informer.owned_by("rs-2") == [owned_pod("c", 4, "rs-2")]
    assert sorted(changed) == ["a", "c"]  # the owners of what went away hear of it too


def test_pod_env_resolves_values_secrets_config_maps_and_fields() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "value": "$(A)-$(MISSING)-$$(A)"},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "id"}}},
            {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
        ],
    }
    pod_obj = {"metadata": {"name": "p-1", "namespace": "ns", "labels": {"team": "quant"}}}
    secrets_by_name = {"creds": {"data": {"id": base64.b64encode(b"AKIA").decode()}}}

    env = resolve_env(container, pod_obj, secrets=secrets_by_name, config_maps={"cfg": {"data": {"mode": "x"}}})

    assert env == {"CFG_mode": "x", "A": "1", "B": "1-$(MISSING)-$(A)", "KEY": "AKIA", "POD": "p-1", "TEAM": "quant"}
    with pytest.raises(EnvError, match='secret "creds" not found'):
        resolve_env(container, pod_obj, secrets={}, config_maps={"cfg": {"data": {}}})
