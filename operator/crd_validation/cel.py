"""A CRD schema's ``x-kubernetes-validations`` (CEL rules), checked as the API server checks them.

Rules run with cel-python (``celpy``) when it is installed (the ``check`` extra installs it);
without it the local API skips them, with one warning in the log, and ``tmctl check`` refuses to
run. ``self`` is the value at the rule's schema node; at the root, ``self.metadata`` holds only
``name`` and ``generateName``, as in Kubernetes. Transition rules (those naming ``oldSelf``) run on
updates only. On an update, the rules of a value left unchanged are not evaluated again
(validation ratcheting, as in Kubernetes).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from crd_validation.structural import FieldError, format_path, remember, type_name

celpy: Any
try:
    import celpy
except ImportError:  # optional: the local API still works, without CEL rules
    celpy = None

log = logging.getLogger(__name__)
_programs: dict[str, Any] = {}  # compiling takes a while the first time; rules repeat on every write
# `self` or `oldSelf`, the field names that follow it (.spec.tickers), and whether a call follows
_SELF = re.compile(r"\b(?:oldSelf|self)\b((?:\.[A-Za-z_][A-Za-z0-9_]*)*)(\s*\()?")
FieldPath = tuple[str, ...]
_paths_read: dict[tuple[str, str], frozenset[FieldPath] | None] = {}
_results: dict[tuple[str, str], str | None] = {}  # (rule, the JSON it saw) -> failure message; rules are pure
_MAX_RESULTS = 20_000  # a few rules per object kind, a thousand objects: the oldest answer goes first
_warned = False


def _program(text: str) -> Any:
    if text not in _programs:
        env = celpy.Environment()
        _programs[text] = env.program(env.compile(text))
    return _programs[text]


def _paths_of(rule: Mapping[str, Any]) -> frozenset[FieldPath] | None:
    """The field paths of `self` a rule and its messageExpression read, when they read `self` only
    through field names (`self.spec.tickers`); None when they may read all of it (`size(self)`)."""
    texts = (str(rule.get("rule", "")), str(rule.get("messageExpression") or ""))
    if texts not in _paths_read:
        paths = set()
        for chain, call in _SELF.findall("\n".join(texts)):
            names = tuple(chain.split(".")[1:])
            # a call names a method of what precedes it (self.spec.tickers.all(...) reads the whole
            # list); a chain that goes on some other way (self.spec[k], self.spec.?x) reads its end whole
            paths.add(names[:-1] if call else names)
        _paths_read[texts] = None if not paths or () in paths else frozenset(paths)
    return _paths_read[texts]


def _narrowed(value: Any, rule: Mapping[str, Any]) -> Any:
    """The part of an object a rule can see: converting a whole object to CEL values (a status with
    its history, on every status write) costs far more than the rule, and a rule that sees only
    what it reads repeats its answer from memory while that part is unchanged (a new spec.version
    does not run a rule on spec.tickers again); the result is the same."""
    paths = _paths_of(rule)
    return value if paths is None else _view(value, paths)


def _view(value: Any, paths: Iterable[FieldPath]) -> Any:
    """value with only the given (non-empty) field paths, nested; what is not an object stays whole
    (a rule reading a field of it meets the same error either way)."""
    if not isinstance(value, dict):
        return value
    below: dict[str, list[FieldPath]] = {}
    for path in paths:
        below.setdefault(path[0], []).append(path[1:])
    return {
        key: child if () in below[key] else _view(child, below[key]) for key, child in value.items() if key in below
    }


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
    seen = (_narrowed(value, rule), _narrowed(old, rule) if transition else None)
    key = (json.dumps(rule, sort_keys=True), json.dumps(seen, sort_keys=True, default=str))
    if key not in _results:
        remember(_results, key, _failure(rule, text, *seen, transition), _MAX_RESULTS)
    message = _results[key]
    if message is None:
        return None
    where = format_path(path) + str(rule.get("fieldPath") or "")
    return FieldError(
        where or "<root>",
        str(rule.get("reason") or "FieldValueInvalid"),
        f'Invalid value: "{type_name(value)}": {message}',
    )


def _failure(rule: Mapping[str, Any], text: str, value: Any, old: Any, transition: bool) -> str | None:
    """The rule's message if `value` fails it (None: it passes)."""
    activation = {"self": celpy.json_to_cel(value)}
    if transition:
        activation["oldSelf"] = celpy.json_to_cel(old)
    try:
        result = _program(text).evaluate(activation)
        passed = result is True or (isinstance(result, celpy.celtypes.BoolType) and bool(result))
        return None if passed else _message(rule, activation)
    except Exception as exc:  # parse and evaluation errors of a rule reject the object, as in Kubernetes
        return f"rule {text!r} could not be evaluated: {exc}"


def _message(rule: Mapping[str, Any], activation: dict[str, Any]) -> str:
    expression = rule.get("messageExpression")
    if expression:
        try:
            return str(_program(str(expression)).evaluate(activation))
        except Exception:  # fall back to the static message, as the API server does
            pass
    return " ".join(str(rule.get("message") or f"failed rule: {rule.get('rule')}").split())
