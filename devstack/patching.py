"""The three patch formats of the Kubernetes API, as pure functions on JSON-like dicts.

- JSON merge patch (RFC 7386, ``application/merge-patch+json``): what kopf and
  ``kubectl patch --type merge`` send, and what ``kubectl apply`` sends for custom resources.
- Strategic merge patch (``application/strategic-merge-patch+json``): what ``kubectl apply``
  and ``kubectl patch`` send for built-in kinds. Lists such as ``containers`` or ``env`` are
  merged by a key instead of replaced; the subset here covers the fields our manifests use.
- JSON patch (RFC 6902, ``application/json-patch+json``): kopf's ``test``-guarded patches.

Nothing here mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch

from crd_validation.structural import copy_json

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH, APPLY_PATCH)

# The patchMergeKey of the list fields of the built-in kinds (k8s.io/api struct tags).
# A field name maps to one key, or to candidates tried in order ("ports" of a container are
# keyed by containerPort, "ports" of a Service by port).
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "ports": ("containerPort", "port"),
    "topologySpreadConstraints": ("topologyKey",),
    "resourceClaims": ("name",),
}
# Primitive lists whose patchStrategy is "merge" (a union, not a replacement).
_MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_SET_ORDER_PREFIX = "$setElementOrder/"
_DELETE_PRIMITIVE_PREFIX = "$deleteFromPrimitiveList/"


class PatchError(ValueError):
    """A patch that cannot be applied; the message says why (the API answers 422 or 400)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch: dicts merge, ``null`` deletes a key, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy_json(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Mapping[str, Any], operations: Any) -> dict[str, Any]:
    """Apply an RFC 6902 JSON patch; a failed ``test`` operation raises PatchError."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        result = jsonpatch.apply_patch(copy_json(dict(target)), operations, in_place=True)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(f"the JSON patch test failed: {exc}") from exc
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, IndexError) as exc:
        raise PatchError(f"the JSON patch cannot be applied: {exc}") from exc
    if not isinstance(result, dict):
        raise PatchError("the JSON patch must leave an object")
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch (the subset kubectl produces for our built-in kinds).

    Dicts merge like a merge patch; lists named in the merge-key table merge item by item;
    ``$patch: replace|delete``, ``$retainKeys``, ``$setElementOrder/<field>`` and
    ``$deleteFromPrimitiveList/<field>`` directives are honoured.
    """
    if not isinstance(patch, Mapping):
        return copy_json(patch)
    patch = dict(patch)
    directive = patch.pop(_DIRECTIVE, None)
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise PatchError(f"unknown patch directive {directive!r}")
    retain = patch.pop(_RETAIN_KEYS, None)
    orders = {k[len(_SET_ORDER_PREFIX) :]: patch.pop(k) for k in list(patch) if k.startswith(_SET_ORDER_PREFIX)}
    removals = {
        k[len(_DELETE_PRIMITIVE_PREFIX) :]: patch.pop(k) for k in list(patch) if k.startswith(_DELETE_PRIMITIVE_PREFIX)
    }

    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _patch_list(key, result.get(key), value)
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, values in removals.items():
        if isinstance(result.get(key), list):
            result[key] = [item for item in result[key] if item not in values]
    for key, order in orders.items():
        if isinstance(result.get(key), list):
            result[key] = _reorder(key, result[key], order)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _patch_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current_list = list(current) if isinstance(current, list) else []
    if any(isinstance(item, Mapping) and item.get(_DIRECTIVE) == "replace" for item in patch):
        return [_strip_directives(item) for item in patch if not _is_directive_only(item)]
    if field in _MERGED_PRIMITIVE_LISTS and all(not isinstance(item, Mapping) for item in patch):
        return current_list + [item for item in patch if item not in current_list]
    key = _merge_key(field, patch + current_list)
    if key is None:
        return [_strip_directives(item) for item in patch]
    result = list(current_list)
    for item in patch:
        if not isinstance(item, Mapping) or key not in item:
            raise PatchError(f"every item of {field!r} in a strategic merge patch needs the key {key!r}")
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, Mapping) and old.get(key) == item[key]), None
        )
        if item.get(_DIRECTIVE) == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _merge_key(field: str, items: Sequence[Any]) -> str | None:
    candidates = _MERGE_KEYS.get(field, ())
    dicts = [item for item in items if isinstance(item, Mapping)]
    if not dicts:
        return None
    for candidate in candidates:
        if all(candidate in item for item in dicts if not _is_directive_only(item)):
            return candidate
    return None


def _reorder(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    if not order:
        return items
    if all(not isinstance(entry, Mapping) for entry in order):
        rank = {repr(entry): i for i, entry in enumerate(order)}
        return sorted(items, key=lambda item: rank.get(repr(item), len(rank)))
    key = _merge_key(field, order)
    if key is None:
        return items
    rank = {repr(entry.get(key)): i for i, entry in enumerate(order) if isinstance(entry, Mapping)}
    return sorted(items, key=lambda item: rank.get(repr(item.get(key)) if isinstance(item, Mapping) else "", len(rank)))


def _is_directive_only(item: Any) -> bool:
    return isinstance(item, Mapping) and set(item) == {_DIRECTIVE}


def _strip_directives(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if k not in (_DIRECTIVE, _RETAIN_KEYS) and not k.startswith((_SET_ORDER_PREFIX, _DELETE_PRIMITIVE_PREFIX))
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy_json(value)


def apply_patch(target: Mapping[str, Any], patch_type: str, patch: Any, *, strategic: bool) -> dict[str, Any]:
    """Apply a patch of the given content type; ``strategic`` says whether the kind supports it.

    Custom resources have no strategic-merge metadata, so the real API server refuses that
    patch type for them; we do the same (PatchError with ``unsupported`` in the message).
    """
    if patch_type == JSON_PATCH:
        if isinstance(patch, Mapping):  # the kubernetes Python client sends dicts with this type
            return _as_object(strategic_merge_patch(target, patch) if strategic else merge_patch(target, patch))
        return json_patch(target, patch)
    if not isinstance(patch, Mapping):
        raise PatchError(f"a {patch_type} patch must be a JSON object")
    if patch_type in (MERGE_PATCH, APPLY_PATCH):
        return _as_object(merge_patch(target, patch))
    if patch_type == STRATEGIC_MERGE_PATCH:
        if not strategic:
            raise PatchError(
                "unsupported: strategic merge patch is not supported for custom resources; "
                "use --type merge or --type json"
            )
        return _as_object(strategic_merge_patch(target, patch))
    raise PatchError(f"unsupported: unknown patch content type {patch_type!r}; use one of {', '.join(PATCH_TYPES)}")


def _as_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PatchError("the patch must leave an object")
    return value
