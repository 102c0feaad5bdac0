"""A CRD's openAPIV3Schema and CEL rules applied to an object as the API server applies them (pure).

Used offline by `tmctl check` (a PR's manifests, before they reach a cluster) and by the embedded
stack's Kubernetes API. Needs `jsonschema` and `cel-python`: `pip install tradingmodel-operator[check]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crd_validation.structural import FieldError


def validation_errors(crd: Mapping[str, Any], obj: Mapping[str, Any]) -> list[FieldError]:
    """What the API server would say of `obj` against `crd`: unknown fields pruned, defaults filled,
    then the schema and the CEL rules, each error naming its field. RuntimeError without cel-python."""
    from crd_validation import cel, structural

    if cel.celpy is None:
        raise RuntimeError("cel-python is not installed: pip install 'tradingmodel-operator[check]'")
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    spec = crd.get("spec") or {}
    if obj.get("kind") != (spec.get("names") or {}).get("kind") or group != spec.get("group"):
        what = f"{obj.get('apiVersion')} {obj.get('kind')}"
        return [FieldError("apiVersion", "FieldValueInvalid", f"{what} is not this CRD's kind")]
    served = [v for v in spec.get("versions") or [] if v.get("name") == version and v.get("served")]
    if not served:
        return [FieldError("apiVersion", "FieldValueNotSupported", f"version {version!r} is not served by the CRD")]
    schema = served[0]["schema"]["openAPIV3Schema"]
    pruned, _ = structural.prune(schema, obj)
    defaulted = structural.apply_defaults(schema, pruned)
    return structural.validate(structural.validator_for(schema), defaulted) or cel.violations(schema, defaulted)
