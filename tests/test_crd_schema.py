"""The TradingModel CRD, checked with its own openAPIV3Schema.

The schema is applied as an API server applies it (pruning, defaults, validation naming each
field), with crd_validation (structural), the code the local stack's API uses too. This is where
"invalid specs are refused by the schema" is proven: the samples pass and lose nothing, each
broken spec fails naming the broken field, defaults land where the API server would put them,
and the CRD has what `kubectl get/explain` needs.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from crd_validation.structural import apply_defaults, prune, to_json_schema, validate, validator_for
from model_store import layout
from trading_operator.spec import InvalidSpec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = ROOT / "crds" / "tradingmodel.yaml"
SAMPLES_DIR = ROOT / "manifests" / "samples"

CRD: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
VERSION: dict[str, Any] = next(v for v in CRD["spec"]["versions"] if v["name"] == "v1alpha1")
SCHEMA: dict[str, Any] = VERSION["schema"]["openAPIV3Schema"]
VALIDATOR = validator_for(SCHEMA)


def sample_models() -> dict[str, dict[str, Any]]:
    models = {}
    for path in sorted(SAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "TradingModel":
                models[doc["metadata"]["name"]] = doc
    return models


SAMPLES = sample_models()


# --- the API server's handling of a schema, as the local stack's API applies it ----------------


def error_fields(obj: dict[str, Any]) -> set[str]:
    """The dotted paths of the fields the schema refuses (a missing field is named itself)."""
    return {error.field for error in validate(VALIDATOR, obj)}


def pruned_fields(obj: dict[str, Any]) -> list[str]:
    """Fields the API server would silently drop: a typo in a sample would otherwise pass
    validation and quietly lose its setting."""
    return prune(SCHEMA, obj)[1]


def schema_nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from schema_nodes(sub, f"{path}.{key}" if path else key)
    if "items" in schema:
        yield from schema_nodes(schema["items"], f"{path}[]")


DELETE = object()


def with_change(obj: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of obj with one field set (or removed, for DELETE); missing parents are created."""
    obj = copy.deepcopy(obj)
    *parents, leaf = dotted.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return obj


# --- the samples --------------------------------------------------------------------------------


def test_samples_cover_the_documented_models() -> None:
    assert {"spy-production", "spy-staging", "qqq-production", "stocks-production"} <= SAMPLES.keys()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_is_valid_and_loses_nothing_to_pruning(name: str) -> None:
    model = SAMPLES[name]
    assert model["apiVersion"] == f"{CRD['spec']['group']}/{VERSION['name']}"
    assert error_fields(model) == set()
    assert error_fields(apply_defaults(SCHEMA, model)) == set()
    assert pruned_fields(model) == []


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_operator_parses_every_sample(name: str) -> None:
    spec = parse_spec(apply_defaults(SCHEMA, SAMPLES[name])["spec"])
    assert (spec.ticker, spec.version, spec.stage) == tuple(
        SAMPLES[name]["spec"][k] for k in ("ticker", "version", "stage")
    )


# --- what the schema refuses ----------------------------------------------------------------------

BASE = SAMPLES["spy-production"]

INVALID = [
    pytest.param("spec.ticker", "spy", "spec.ticker", id="lowercase-ticker"),
    pytest.param("spec.ticker", "TOOLONGTICKER", "spec.ticker", id="ticker-over-10"),
    pytest.param("spec.version", "1.2", "spec.version", id="version-without-v"),
    pytest.param("spec.version", "v1..2", "spec.version", id="version-double-dot"),
    pytest.param("spec.version", "v1.2.3.4", "spec.version", id="version-four-parts"),
    pytest.param("spec.version", DELETE, "spec.version", id="missing-version"),
    pytest.param("spec.stage", "Prod", "spec.stage", id="unknown-stage"),
    pytest.param("spec.stage", "production", "spec.stage", id="stage-lowercase"),
    pytest.param("spec.serving.replicas", -1, "spec.serving.replicas", id="negative-replicas"),
    pytest.param("spec.serving.replicas", "2", "spec.serving.replicas", id="replicas-as-string"),
    pytest.param("spec.assetClass", "bond", "spec.assetClass", id="unknown-asset-class"),
    pytest.param("spec.storage.bucket", DELETE, "spec.storage.bucket", id="missing-bucket"),
    pytest.param("spec.storage.bucket", "Options_Models", "spec.storage.bucket", id="bad-bucket-name"),
    pytest.param("spec.storage.endpoint", "minio:9000", "spec.storage.endpoint", id="endpoint-without-scheme"),
    pytest.param("spec.storage.endpoint", "ftp://minio:9000", "spec.storage.endpoint", id="endpoint-ftp"),
    pytest.param("spec.storage.secretRef.name", "S3_Credentials", "spec.storage.secretRef.name", id="bad-secret-name"),
    # spec.version becomes a label value of the pods: a cluster refuses one over 63 characters
    pytest.param("spec.version", "v1.2-" + "a" * 59, "spec.version", id="version-over-63"),
    pytest.param("spec.serving.serviceAccountName", "IRSA_Role", "spec.serving.serviceAccountName", id="bad-sa"),
    pytest.param(
        "spec.serving.imagePullSecrets", [{"name": "Bad_Secret"}], "spec.serving.imagePullSecrets[0].name", id="pull"
    ),
    pytest.param("spec.serving.progressDeadlineSeconds", 0, "spec.serving.progressDeadlineSeconds", id="deadline-0"),
]


@pytest.mark.parametrize(("field", "value", "expected"), INVALID)
def test_invalid_spec_is_refused_naming_the_field(field: str, value: Any, expected: str) -> None:
    assert error_fields(BASE) == set()  # so the refusal below is the change's doing
    assert error_fields(with_change(BASE, field, value)) == {expected}


# The operator checks specs again because a local emulator enforces no schema: it must refuse
# what the API server would.
OPERATOR_INVALID = INVALID


@pytest.mark.parametrize(("field", "value", "expected"), OPERATOR_INVALID)
def test_operator_refuses_what_the_schema_refuses(field: str, value: Any, expected: str) -> None:
    with pytest.raises(InvalidSpec):
        parse_spec(with_change(BASE, field, value)["spec"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spec.ticker", "BRK.B"),
        ("spec.ticker", "X"),
        ("spec.version", "v2"),
        ("spec.version", "v2.0.1"),
        ("spec.version", "v1.3-rc1"),
        ("spec.stage", "Archived"),
        ("spec.serving.replicas", 0),
        ("spec.storage.endpoint", "http://minio.minio.svc:9000"),
        ("spec.storage.endpoint", "https://s3.eu-west-1.amazonaws.com/"),
        ("spec.storage.secretRef", DELETE),
        ("spec.storage.endpoint", ""),  # AWS, as documented
        ("spec.version", "v1.2-" + "a" * 58),
        ("spec.serving.serviceAccountName", "spy-irsa"),
        ("spec.serving.imagePullSecrets", [{"name": "ghcr-pull"}]),
        ("spec.serving.progressDeadlineSeconds", 120),
    ],
)
def test_valid_variants_are_accepted(field: str, value: Any) -> None:
    assert error_fields(with_change(BASE, field, value)) == set()


def test_every_version_the_schema_admits_is_a_valid_label_value() -> None:
    """The pods carry spec.version as a label value: whatever the schema lets through must be one
    a cluster accepts (63 characters at most, alphanumeric at both ends), else a 422 at rollout."""
    import random

    node = SCHEMA["properties"]["spec"]["properties"]["version"]
    version, label = re.compile(node["pattern"]), re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    rng, alphabet, admitted = random.Random(10), "v0123456789.-abz", 0
    for _ in range(20_000):
        text = "v" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70)))
        if version.match(text) and len(text) <= node["maxLength"]:
            admitted += 1
            assert label.match(text), text
    assert admitted > 100  # the sample reached the versions the pattern admits
    assert node["maxLength"] == 63


def test_spec_is_required() -> None:
    assert error_fields({"apiVersion": BASE["apiVersion"], "kind": "TradingModel", "metadata": {"name": "x"}}) == {
        "spec"
    }


def test_patterns_match_the_bucket_layout() -> None:
    # The operator reads names with model_store.layout; the schema must admit exactly those.
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert spec["ticker"]["pattern"] == layout.TICKER_PATTERN
    assert spec["version"]["pattern"] == layout.VERSION_PATTERN


# --- defaults -----------------------------------------------------------------------------------


def test_defaults_fill_a_minimal_spec() -> None:
    required = SCHEMA["properties"]["spec"]["required"]
    minimal = {key: BASE["spec"][key] for key in required}
    minimal["storage"] = {"bucket": BASE["spec"]["storage"]["bucket"]}
    spec = apply_defaults(SCHEMA, {**BASE, "spec": minimal})["spec"]
    assert spec["assetClass"] == "etf"
    assert spec["serving"]["replicas"] == 1
    assert spec["storage"]["region"] == "us-east-1"
    assert error_fields({**BASE, "spec": spec}) == set()


def test_defaults_keep_what_the_user_set() -> None:
    spec = apply_defaults(SCHEMA, BASE)["spec"]
    assert spec["serving"]["replicas"] == BASE["spec"]["serving"]["replicas"]
    assert spec["assetClass"] == BASE["spec"]["assetClass"]


def test_every_default_validates_against_its_own_schema() -> None:
    # The API server refuses a CRD whose defaults do not validate.
    defaults = [(path, node) for path, node in schema_nodes(SCHEMA) if "default" in node]
    assert defaults
    for path, node in defaults:
        errors = [e.message for e in validator_for(node).iter_errors(apply_defaults(node, node["default"]))]
        assert errors == [], f"{path}: default {node['default']!r} is invalid"


# --- the CRD as Kubernetes needs it -------------------------------------------------------------


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft4Validator.check_schema(to_json_schema(SCHEMA))


def test_schema_is_structural() -> None:
    # Structural schemas (required for apiextensions.k8s.io/v1): every node has a type unless it
    # preserves unknown fields, and properties and additionalProperties never meet.
    for path, node in schema_nodes(SCHEMA):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path or '<root>'}: no type"
        assert not ("properties" in node and "additionalProperties" in node), path
    assert SCHEMA["properties"]["metadata"] == {"type": "object"}


def test_every_spec_field_is_described() -> None:
    undocumented = [
        path for path, node in schema_nodes(SCHEMA["properties"]["spec"], "spec") if not node.get("description")
    ]
    assert undocumented == [], "kubectl explain shows nothing for: " + ", ".join(undocumented)


def test_names_scope_and_status_subresource() -> None:
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == f"{names['plural']}.{CRD['spec']['group']}"
    assert (CRD["spec"]["group"], names["kind"], CRD["spec"]["scope"]) == ("trading.io", "TradingModel", "Namespaced")
    assert "tm" in names["shortNames"]
    assert VERSION["served"] and VERSION["storage"]
    assert [v["name"] for v in CRD["spec"]["versions"] if v["storage"]] == ["v1alpha1"]
    assert VERSION["subresources"]["status"] == {}


def resolve_json_path(json_path: str) -> dict[str, Any] | None:
    """The schema node a printer column's JSONPath points at (filters skipped), or None."""
    node: dict[str, Any] = SCHEMA
    for part in re.sub(r"\[[^\]]*\]", "", json_path).strip(".").split("."):
        if node.get("type") == "array":
            node = node["items"]
        node = (node.get("properties") or {}).get(part)  # type: ignore[assignment]
        if node is None:
            return None
    return node


def test_printer_columns() -> None:
    columns = VERSION["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    wanted = ["Ticker", "Version", "Stage", "Ready", "Age"]
    assert [n for n in names if n in wanted] == wanted  # all there, in this order
    for column in columns:
        if column["jsonPath"].startswith(".metadata."):
            continue
        node = resolve_json_path(column["jsonPath"])
        assert node is not None, f"column {column['name']}: {column['jsonPath']} is not in the schema"
        assert node.get("type") == column["type"], column["name"]
    age = next(c for c in columns if c["name"] == "Age")
    assert (age["type"], age["jsonPath"]) == ("date", ".metadata.creationTimestamp")
