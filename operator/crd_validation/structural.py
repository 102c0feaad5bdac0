"""A CRD's structural openAPIV3Schema applied the way the API server applies it (pure).

On every create and update of a custom resource the real API server prunes fields the
schema does not declare, fills in ``default`` values, and refuses objects that do not
validate, naming each field (``spec.ticker: Invalid value: "spy": spec.ticker in body
should match '^[A-Z]...'``). These functions do the same so bad manifests fail at
``kubectl apply`` time instead of confusing the operator later.
"""

from __future__ import annotations

import copy
import itertools
import json
import pickle
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import jsonschema
import orjson

_ROOT_META_FIELDS = ("apiVersion", "kind", "metadata")
_J = TypeVar("_J")
# What orjson would turn into something else is refused instead (copy_json then pickles it).
_EXACT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
_K = TypeVar("_K")
_V = TypeVar("_V")


def copy_json(value: _J) -> _J:
    """A deep copy of JSON data (dicts, lists, strings, numbers): the local API copies every object
    it writes or patches. An orjson round trip where it gives back exactly what it was given (half
    of pickle's time on a Deployment, itself ~5x faster than copy.deepcopy), else pickle: orjson
    refuses ints beyond 64 bits, non-string keys, lone surrogates and (passed through here) dates,
    dataclasses and subclasses, and it writes NaN and infinities as null. So a copy with a null is
    compared with the original (C speed): None where a NaN was makes them differ."""
    if not isinstance(value, (dict, list)):
        return value  # strings, numbers, booleans and None are immutable: patches copy many of them
    try:
        text = orjson.dumps(value, option=_EXACT)
    except TypeError:  # orjson.JSONEncodeError
        text = b""
    if text:
        fast: _J = orjson.loads(text)
        if b"null" not in text or fast == value:
            return fast
    copied: _J = pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))  # our own bytes, never a peer's
    return copied


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str  # the StatusCause reason: FieldValueInvalid, FieldValueRequired, ...
    detail: str

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


def format_path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _preserves_unknown(schema: Mapping[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def prune(schema: Mapping[str, Any], obj: Any, *, in_place: bool = False) -> tuple[Any, list[str]]:
    """Drop fields the schema does not declare; returns the pruned copy and the dropped paths.

    Like the API server: apiVersion, kind and metadata at the root are never pruned,
    ``x-kubernetes-preserve-unknown-fields`` keeps unknown fields, nulls of
    non-nullable fields are dropped. ``in_place`` prunes obj itself (a caller that owns it, as the
    local API owns the copy it is about to store, saves a copy per write): dicts change in place,
    lists are rebuilt.
    """
    dropped: list[str] = []
    result = _prune(schema, obj if in_place else copy_json(obj), [], dropped, root=True)
    return result, dropped


def _prune(schema: Mapping[str, Any], value: Any, path: list[Any], dropped: list[str], *, root: bool = False) -> Any:
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key in list(value):
            child = value[key]
            if root and key in _ROOT_META_FIELDS:
                continue
            if key in properties:
                child_schema = properties[key]
            elif isinstance(additional, Mapping):
                child_schema = additional
            elif _preserves_unknown(schema) or additional is True:
                continue
            else:
                del value[key]
                dropped.append(format_path([*path, key]))
                continue
            if child is None and not child_schema.get("nullable"):
                del value[key]
                continue
            value[key] = _prune(child_schema, child, [*path, key], dropped)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_prune(schema["items"], item, [*path, i], dropped) for i, item in enumerate(value)]
    return value


def apply_defaults(schema: Mapping[str, Any], obj: Any, *, in_place: bool = False) -> Any:
    """Fill in ``default`` values of absent fields, recursing into defaulted values too.

    A ``default: {}`` on an object therefore lets its own properties' defaults apply, as in Kubernetes.
    ``in_place`` as for prune.
    """
    return _default(schema, obj if in_place else copy_json(obj))


def _default(schema: Mapping[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        for key, child_schema in (schema.get("properties") or {}).items():
            if key not in value and "default" in child_schema:
                value[key] = copy.deepcopy(child_schema["default"])
            if key in value:
                value[key] = _default(child_schema, value[key])
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            for key in value:
                if key not in (schema.get("properties") or {}):
                    value[key] = _default(additional, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_default(schema["items"], item) for item in value]
    return value


def to_json_schema(schema: Any) -> Any:
    """Translate the OpenAPI v3 dialect of CRDs into JSON Schema draft 4 for ``jsonschema``."""
    if not isinstance(schema, Mapping):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "default", "example", "externalDocs"):
            continue
        if key == "properties":
            result[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            result[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            result[key] = [to_json_schema(sub) for sub in value]
        else:
            result[key] = copy.deepcopy(value)
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable"):
        if "type" in result:
            result["type"] = [result["type"], "null"]
        if "enum" in result:
            result["enum"] = [*result["enum"], None]
    return result


def validator_for(schema: Mapping[str, Any]) -> jsonschema.Draft4Validator:
    """A reusable validator for an openAPIV3Schema; metadata is checked elsewhere, as in Kubernetes."""
    root = dict(schema)
    root["properties"] = {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}
    root["required"] = [r for r in schema.get("required") or [] if r != "metadata"]
    if not root["required"]:
        root.pop("required")
    return jsonschema.Draft4Validator(to_json_schema(root), format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


def validate(validator: jsonschema.Draft4Validator, obj: Mapping[str, Any]) -> list[FieldError]:
    body = {k: v for k, v in obj.items() if k != "metadata"}
    split = _split(validator)
    if split is None:
        found: Iterable[FieldError] = _converted(validator.iter_errors(body))
    else:  # the errors iter_errors finds, in its order: the root's keywords, "properties" among them
        found = itertools.chain(
            _converted(split.before.iter_errors(body)),
            *(
                _property_errors(validator, name, schema, body[name])
                for name, schema in split.properties.items()
                if name in body
            ),
            _converted(split.after.iter_errors(body)),
        )
    unique = {str(e): e for e in found}
    return sorted(unique.values(), key=lambda e: (e.field, e.detail))


# Most writes leave most of an object as it was (a status write, the spec), and validation is a pure
# function of a value: validate() remembers the errors of each top-level property's values, named by
# their pickle (which names a value exactly, its types included). Each entry holds its validator, so
# the id in its key names that validator while the entry lives. Least recently used goes first.
_MAX_REMEMBERED = 4096
_remembered: dict[tuple[int, str, bytes], tuple[jsonschema.Draft4Validator, tuple[FieldError, ...]]] = {}
_splits: dict[int, tuple[jsonschema.Draft4Validator, _Split | None]] = {}
_MAX_SPLITS = 64
# Keywords through which a schema reaches an object's members other than its "properties": a root
# schema with any of them is not split (its properties' errors may not be theirs alone)
_DESCENDING = frozenset(
    {"$ref", "additionalProperties", "patternProperties", "dependencies", "allOf", "anyOf", "oneOf", "not",
     "items", "additionalItems"}
)  # fmt: skip


@dataclass(frozen=True)
class _Split:
    """A root schema cut at its "properties" keyword: the validators of the keywords before and after."""

    before: jsonschema.Draft4Validator
    properties: Mapping[str, Any]
    after: jsonschema.Draft4Validator


def _split(validator: jsonschema.Draft4Validator) -> _Split | None:
    if id(validator) not in _splits:
        schema = validator.schema
        split = None
        if (
            isinstance(schema, Mapping)
            and isinstance(schema.get("properties"), Mapping)
            and not _DESCENDING & set(schema)
        ):
            keys = list(schema)
            at = keys.index("properties")
            split = _Split(
                validator.evolve(schema={k: schema[k] for k in keys[:at]}),
                schema["properties"],
                validator.evolve(schema={k: schema[k] for k in keys[at + 1 :]}),
            )
        remember(_splits, id(validator), (validator, split), _MAX_SPLITS)
    return _splits[id(validator)][1]


def _property_errors(
    validator: jsonschema.Draft4Validator, name: str, schema: Any, value: Any
) -> tuple[FieldError, ...]:
    """The errors of a root property's value, as jsonschema's "properties" keyword finds them."""
    key: tuple[int, str, bytes] | None
    try:
        key = (id(validator), name, pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    except Exception:  # not picklable: found again every time
        key = None
    entry = None if key is None else _remembered.pop(key, None)
    if entry is None:
        entry = (validator, tuple(_converted(validator.descend(value, schema, path=name, schema_path=name))))
    if key is not None:
        remember(_remembered, key, entry, _MAX_REMEMBERED)  # (again) the most recently used
    return entry[1]


def remember(memo: dict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """memo[key] = value, the oldest entry dropped first when memo holds `limit` (dicts keep
    insertion order): the validation memos here and in cel.py stay bounded."""
    if key not in memo and len(memo) >= limit:
        del memo[next(iter(memo))]
    memo[key] = value


def _converted(errors: Iterable[jsonschema.ValidationError]) -> Iterator[FieldError]:
    for error in errors:
        yield from _field_errors(error)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def type_name(value: Any) -> str:
    match value:
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return "null"


def _field_errors(error: jsonschema.ValidationError) -> list[FieldError]:
    path = format_path(error.absolute_path)
    where = path or "<root>"
    instance = error.instance
    rule = error.validator_value
    match error.validator:
        case "required":
            missing = [name for name in rule if isinstance(instance, Mapping) and name not in instance]
            return [
                FieldError(format_path([*error.absolute_path, name]), "FieldValueRequired", "Required value")
                for name in missing
            ]
        case "pattern":
            detail = f"Invalid value: {_json(instance)}: {where} in body should match '{rule}'"
            return [FieldError(where, "FieldValueInvalid", detail)]
        case "enum":
            supported = ", ".join(_json(v) for v in rule)
            return [
                FieldError(
                    where,
                    "FieldValueNotSupported",
                    f"Unsupported value: {_json(instance)}: supported values: {supported}",
                )
            ]
        case "type":
            expected = rule if isinstance(rule, str) else " or ".join(rule)
            given = type_name(instance)
            detail = f'Invalid value: "{given}": {where} in body must be of type {expected}: "{given}"'
            return [FieldError(where, "FieldValueTypeInvalid", detail)]
        case "minimum" | "maximum":
            schema = error.schema if isinstance(error.schema, Mapping) else {}
            exclusive = schema.get("exclusiveMinimum" if error.validator == "minimum" else "exclusiveMaximum")
            relation = "greater than" if error.validator == "minimum" else "less than"
            relation += "" if exclusive else " or equal to"
            detail = f"Invalid value: {_json(instance)}: {where} in body should be {relation} {rule}"
            return [FieldError(where, "FieldValueInvalid", detail)]
        case "minLength":
            detail = f"Invalid value: {_json(instance)}: {where} in body should be at least {rule} chars long"
            return [FieldError(where, "FieldValueInvalid", detail)]
        case "maxLength":
            return [FieldError(where, "FieldValueTooLong", f"Too long: may not be more than {rule} bytes")]
        case "minItems":
            detail = f"Invalid value: {len(instance)}: {where} in body should have at least {rule} items"
            return [FieldError(where, "FieldValueInvalid", detail)]
        case "maxItems":
            detail = f"Too many: {len(instance)}: must have at most {rule} items"
            return [FieldError(where, "FieldValueTooMany", detail)]
        case "format":
            detail = f"Invalid value: {_json(instance)}: {where} in body must be of type {rule}: {_json(instance)}"
            return [FieldError(where, "FieldValueInvalid", detail)]
    return [FieldError(where, "FieldValueInvalid", f"Invalid value: {_json(instance)}: {error.message}")]
