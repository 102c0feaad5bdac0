"""The CRD's spec.serving.autoscaling and scale subresource, checked with crd_validation (the schema
as the API server applies it, CEL rules included) and against the operator's own parser."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_crd_schema import BASE, SCHEMA, VALIDATOR, VERSION, resolve_json_path

from crd_validation import cel
from crd_validation.structural import apply_defaults, validate
from trading_operator.spec import InvalidSpec, parse_spec


def with_autoscaling(autoscaling: dict[str, Any]) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    obj["spec"].setdefault("serving", {})["autoscaling"] = autoscaling
    return obj


def refusals(obj: dict[str, Any]) -> set[str]:
    """Fields the structural schema refuses, and the messages of the CEL rules that fail."""
    return {e.field for e in validate(VALIDATOR, obj)} | {e.detail for e in cel.violations(SCHEMA, obj)}


@pytest.mark.parametrize(
    "autoscaling",
    [
        {"maxReplicas": 4},
        {"minReplicas": 2, "maxReplicas": 2, "targetCPUUtilizationPercentage": 60},
        {"minReplicas": 1, "maxReplicas": 10, "targetRequestsPerSecond": 150.5},
    ],
)
def test_valid_autoscaling_is_accepted_by_the_schema_and_the_operator(autoscaling: dict[str, Any]) -> None:
    obj = apply_defaults(SCHEMA, with_autoscaling(autoscaling))
    assert refusals(obj) == set()
    model = parse_spec(obj["spec"])
    assert model.autoscaling is not None and model.autoscaling.min_replicas == autoscaling.get("minReplicas", 1)


@pytest.mark.parametrize(
    ("autoscaling", "refused"),
    [
        ({"minReplicas": 2}, "spec.serving.autoscaling.maxReplicas"),
        ({"maxReplicas": 0}, "spec.serving.autoscaling.maxReplicas"),
        ({"maxReplicas": 3, "minReplicas": 0}, "spec.serving.autoscaling.minReplicas"),
        (
            {"maxReplicas": 3, "targetCPUUtilizationPercentage": 120},
            "spec.serving.autoscaling.targetCPUUtilizationPercentage",
        ),
        ({"maxReplicas": 3, "targetRequestsPerSecond": 0}, "spec.serving.autoscaling.targetRequestsPerSecond"),
        ({"maxReplicas": 2, "minReplicas": 5}, 'Invalid value: "object": minReplicas must not exceed maxReplicas'),
        (
            {"maxReplicas": 2, "targetCPUUtilizationPercentage": 50, "targetRequestsPerSecond": 5},
            'Invalid value: "object": set one target, targetCPUUtilizationPercentage or targetRequestsPerSecond',
        ),
    ],
)
def test_bad_autoscaling_is_refused_by_the_schema_and_the_operator(autoscaling: dict[str, Any], refused: str) -> None:
    obj = with_autoscaling(autoscaling)
    assert refusals(obj) == {refused}
    with pytest.raises(InvalidSpec):
        parse_spec(obj["spec"])


def test_scale_subresource_points_at_fields_the_schema_has() -> None:
    scale = VERSION["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.serving.replicas"
    for key, kind in (
        ("specReplicasPath", "integer"),
        ("statusReplicasPath", "integer"),
        ("labelSelectorPath", "string"),
    ):
        node = resolve_json_path(scale[key])
        assert node is not None and node.get("type") == kind, key
