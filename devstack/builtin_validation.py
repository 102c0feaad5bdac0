"""What a real API server refuses in the built-in kinds' fields the operator sets (pure).

The local API is lenient where nothing depends on it, but a write a cluster would refuse must be
refused here too, or the tests would pass where a cluster answers 422: label keys and values (on
every object, in pod templates and selectors), resource quantities of containers and emptyDirs,
a Deployment selector that matches its template and never changes. Messages follow the real ones
(k8s.io/apimachinery validation, k8s.io/kubernetes pkg/apis/*/validation).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from crd_validation.structural import FieldError
from devstack import errors
from devstack.kinds import ResourceType
from trading_operator.quantity import InvalidQuantity
from trading_operator.quantity import parse_quantity as _parse_quantity

_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_NAME_PART_RE = re.compile(rf"^{_NAME_PART}$")
_LABEL_VALUE = rf"({_NAME_PART})?"
_LABEL_VALUE_RE = re.compile(rf"^{_LABEL_VALUE}$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE_HELP = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
    f"validation is '{_LABEL_VALUE}')"
)
_NAME_HELP = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    f"alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    f"'{_NAME_PART}')"
)
_PREFIX_HELP = (
    "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character"
)
# Where each kind keeps a pod template (its spec and labels).
_TEMPLATES = {
    ("", "Pod"): ("spec",),
    ("apps", "Deployment"): ("spec", "template", "spec"),
    ("apps", "ReplicaSet"): ("spec", "template", "spec"),
    ("apps", "StatefulSet"): ("spec", "template", "spec"),
    ("apps", "DaemonSet"): ("spec", "template", "spec"),
}
_SELECTED = {("apps", "Deployment"), ("apps", "ReplicaSet"), ("apps", "StatefulSet"), ("apps", "DaemonSet")}


def check(rt: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
    """Raise the ApiError a real API server would answer this write with (400 or 422)."""
    if rt.is_custom:
        return
    found = [*_label_errors("metadata.labels", (obj.get("metadata") or {}).get("labels"))]
    kind = (rt.group, rt.kind)
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    if kind in _SELECTED:
        found += _selector_errors(spec, old)
    if kind in _TEMPLATES:
        path = _TEMPLATES[kind]
        if len(path) > 1:
            template_meta = (spec.get("template") or {}).get("metadata") or {}
            found += _label_errors("spec.template.metadata.labels", template_meta.get("labels"))
        pod = _walk(obj, path)
        try:
            found += _resource_errors(".".join(path), pod if isinstance(pod, Mapping) else {})
        except InvalidQuantity as exc:
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {exc}'
            ) from None
    if found:
        raise errors.invalid(rt, str((obj.get("metadata") or {}).get("name", "")), found)


def _walk(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _invalid(field: str, value: object, detail: str) -> FieldError:
    return FieldError(field, "FieldValueInvalid", f'Invalid value: "{value}": {detail}')


def _label_errors(field: str, labels: Any) -> Iterator[FieldError]:
    for key, value in (labels or {}).items() if isinstance(labels, Mapping) else ():
        if isinstance(key, str) and isinstance(value, str) and _valid_label(key, value):
            continue
        yield from _key_errors(field, str(key))
        text = "" if value is None else str(value)
        if len(text) > 63:
            yield _invalid(field, text, "must be no more than 63 characters")
        if not _LABEL_VALUE_RE.match(text):
            yield _invalid(field, text, _LABEL_VALUE_HELP)


@functools.lru_cache(maxsize=16384)  # a few labels per model, a thousand models
def _valid_label(key: str, value: str) -> bool:
    """Whether a label passes (every write of a Deployment or Pod tests its labels three times over,
    and they are the same few): _label_errors then needs no regular expression."""
    return not any(_key_errors("", key)) and len(value) <= 63 and _LABEL_VALUE_RE.match(value) is not None


def _key_errors(field: str, key: str) -> Iterator[FieldError]:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        yield _invalid(field, key, _PREFIX_HELP)
    if len(name) > 63:
        yield _invalid(field, key, "name part must be no more than 63 characters")
    if not _NAME_PART_RE.match(name):
        yield _invalid(field, key, _NAME_HELP)


def _selector_errors(spec: Mapping[str, Any], old: Mapping[str, Any] | None) -> Iterator[FieldError]:
    selector = spec.get("selector") or {}
    match = selector.get("matchLabels") or {}
    yield from _label_errors("spec.selector.matchLabels", match)
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if any(template_labels.get(k) != v for k, v in match.items()):
        mismatch = "`selector` does not match template `labels`"
        yield _invalid("spec.template.metadata.labels", _go_map(template_labels), mismatch)
    old_selector = ((old or {}).get("spec") or {}).get("selector")
    if old is not None and old_selector != spec.get("selector"):
        yield _invalid("spec.selector", f"v1.LabelSelector{{MatchLabels:{_go_map(match)}}}", "field is immutable")


def _go_map(labels: Mapping[str, Any]) -> str:
    return "map[string]string{" + ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items())) + "}"


@functools.lru_cache(maxsize=1024, typed=True)
def _cached_quantity(text: str | int) -> Decimal:
    return _parse_quantity(text)


def parse_quantity(text: object) -> Decimal:
    """parse_quantity, remembered for strings and ints (every write of a pod template parses the same
    few quantities; a Decimal is immutable). InvalidQuantity is raised, never remembered."""
    if isinstance(text, str | int) and not isinstance(text, bool):  # True == 1, but is no quantity
        return _cached_quantity(text)
    return _parse_quantity(text)


def _resource_errors(where: str, pod: Mapping[str, Any]) -> Iterator[FieldError]:
    """Containers' requests and limits, emptyDir size limits. InvalidQuantity: no quantity at all
    (the real server fails to decode the body: 400)."""
    for volume_index, volume in enumerate(pod.get("volumes") or []):
        size = ((volume or {}).get("emptyDir") or {}).get("sizeLimit")
        if size is not None and parse_quantity(size) < 0:
            yield _invalid(f"{where}.volumes[{volume_index}].emptyDir.sizeLimit", size, "must be greater than zero")
    for key in ("initContainers", "containers"):
        for index, container in enumerate(pod.get(key) or []):
            resources = (container or {}).get("resources") or {}
            field = f"{where}.{key}[{index}].resources"
            parsed: dict[str, dict[str, Decimal]] = {}
            for section in ("limits", "requests"):
                for name, value in (resources.get(section) or {}).items():
                    parsed.setdefault(section, {})[name] = amount = parse_quantity(value)
                    if amount < 0:
                        yield _invalid(f"{field}.{section}[{name}]", value, "must be greater than or equal to 0")
            for name, request in (parsed.get("requests") or {}).items():
                limit = (parsed.get("limits") or {}).get(name)
                if limit is not None and request > limit:
                    yield _invalid(
                        f"{field}.requests",
                        resources["requests"][name],
                        f"must be less than or equal to {name} limit of {resources['limits'][name]}",
                    )
