"""A CRD schema's ``x-kubernetes-validations`` (CEL rules), checked as the API server checks them.

Rules run with cel-python (``celpy``) when it is installed (the ``check`` extra installs it);
without it the local API skips them, with one warning in the log, and ``tmctl check`` refuses to
run. ``self`` is the value at the rule's schema node; at the root, ``self.metadata`` holds only
``name`` and ``generateName``, as in Kubernetes. Transition rules (those naming ``oldSelf``) run on
updates only. On an update, the rules of a value left unchanged are not evaluated again
(validation ratcheting, as in Kubernetes).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from crd_validation.structural import FieldError, format_path, type_name

celpy: Any
try:
    import celpy
except ImportError:  # optional: the local API still works, without CEL rules
    celpy = None

log = logging.getLogger(__name__)
_programs: dict[str, Any] = {}  # compiling takes a while the first time; rules repeat on every write
_warned = False


def _program(text: str) -> Any:
    if text not in _programs:
        env = celpy.Environment()
        _programs[text] = env.program(env.compile(text))
    return _programs[text]


def _root_view(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    return {**obj, "metadata": {k: meta[k] for k in ("name", "generateName") if k in meta}}


def violations(
    schema: Mapping[str, Any], obj: Mapping[str, Any], old: Mapping[str, Any] | None = None
) -> list[FieldError]:
    """The failed rules of obj (old is the stored object on updates, for transition rules)."""
    global _warned
    if celpy is None:
        if not _warned and "x-kubernetes-validations" in str(schema):
            log.warning("event=cel_rules_skipped reason=%s", "cel-python is not installed (pip install cel-python)")
            _warned = True
        return []
    errors: list[FieldError] = []
    _walk(schema, _root_view(obj), _root_view(old), [], errors)
    return errors


def _walk(schema: Mapping[str, Any], value: Any, old: Any, path: list[Any], errors: list[FieldError]) -> None:
    if old is not None and value == old:
        # Validation ratcheting (Kubernetes 1.30+, CRDValidationRatcheting): the rules of a value an
        # update leaves unchanged are not evaluated again (a status write does not re-check the spec).
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        failure = _check(rule, value, old, path)
        if failure is not None:
            errors.append(failure)
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            child_schema = properties.get(key) or (additional if isinstance(additional, Mapping) else None)
            if child_schema is not None:
                child_old = old.get(key) if isinstance(old, dict) else None
                _walk(child_schema, child, child_old, [*path, key], errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            _walk(schema["items"], item, None, [*path, index], errors)


def _check(rule: Mapping[str, Any], value: Any, old: Any, path: list[Any]) -> FieldError | None:
    text = str(rule.get("rule", ""))
    transition = "oldSelf" in text
    if transition and old is None:
        return None
    activation = {"self": celpy.json_to_cel(value)}
    if transition:
        activation["oldSelf"] = celpy.json_to_cel(old)
    try:
        result = _program(text).evaluate(activation)
        passed = result is True or (isinstance(result, celpy.celtypes.BoolType) and bool(result))
        message = None if passed else _message(rule, activation)
    except Exception as exc:  # parse and evaluation errors of a rule reject the object, as in Kubernetes
        message = f"rule {text!r} could not be evaluated: {exc}"
    if message is None:
        return None
    where = format_path(path) + str(rule.get("fieldPath") or "")
    return FieldError(
        where or "<root>",
        str(rule.get("reason") or "FieldValueInvalid"),
        f'Invalid value: "{type_name(value)}": {message}',
    )


def _message(rule: Mapping[str, Any], activation: dict[str, Any]) -> str:
    expression = rule.get("messageExpression")
    if expression:
        try:
            return str(_program(str(expression)).evaluate(activation))
        except Exception:  # fall back to the static message, as the API server does
            pass
    return " ".join(str(rule.get("message") or f"failed rule: {rule.get('rule')}").split())
