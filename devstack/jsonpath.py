"""The subset of Kubernetes JSONPath that printer columns use (pure functions).

Supported: ``.a.b``, ``['a']``, ``[0]``, ``[-1]``, ``[*]``, ``.*`` and filters such as
``[?(@.type=="Ready")]`` or ``[?(@.ready)]``, optionally wrapped in ``{...}`` and/or led by ``$``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class JSONPathError(ValueError):
    pass


@dataclass(frozen=True)
class _Field:
    name: str


@dataclass(frozen=True)
class _Index:
    index: int


@dataclass(frozen=True)
class _Wildcard:
    pass


@dataclass(frozen=True)
class _Filter:
    path: tuple[str, ...]
    operator: str | None  # None: the field exists and is truthy
    value: Any = None


_Segment = _Field | _Index | _Wildcard | _Filter
_FILTER_RE = re.compile(
    r"^\?\(\s*@((?:\.[A-Za-z0-9_\-/]+)+)\s*(?:(==|!=|<=|>=|<|>)\s*(\"[^\"]*\"|'[^']*'|-?\d+(?:\.\d+)?|true|false))?\s*\)$"
)


def parse(expression: str) -> tuple[_Segment, ...]:
    text = expression.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    text = text.removeprefix("$")
    segments: list[_Segment] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == ".":
            end = pos + 1
            while end < len(text) and text[end] not in ".[":
                end += 1
            name = text[pos + 1 : end]
            if not name:
                raise JSONPathError(f"empty field name at {pos} in {expression!r}")
            segments.append(_Wildcard() if name == "*" else _Field(name))
            pos = end
        elif char == "[":
            end = _closing_bracket(text, pos)
            segments.append(_parse_bracket(text[pos + 1 : end].strip(), expression))
            pos = end + 1
        else:
            raise JSONPathError(f"unexpected {char!r} at {pos} in {expression!r}")
    return tuple(segments)


def _closing_bracket(text: str, start: int) -> int:
    depth = 0
    quote: str | None = None
    for pos in range(start, len(text)):
        char = text[pos]
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return pos
    raise JSONPathError(f"unclosed [ in {text!r}")


def _parse_bracket(inner: str, expression: str) -> _Segment:
    if inner == "*":
        return _Wildcard()
    if re.fullmatch(r"-?\d+", inner):
        return _Index(int(inner))
    if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
        return _Field(inner[1:-1])
    match = _FILTER_RE.match(inner)
    if match:
        path = tuple(match.group(1).lstrip(".").split("."))
        raw = match.group(3)
        value: Any = None
        if raw is not None:
            if raw[0] in "'\"":
                value = raw[1:-1]
            elif raw in ("true", "false"):
                value = raw == "true"
            else:
                value = float(raw) if "." in raw else int(raw)
        return _Filter(path, match.group(2), value)
    raise JSONPathError(f"unsupported JSONPath element [{inner}] in {expression!r}")


def find(expression: str | tuple[_Segment, ...], obj: Any) -> list[Any]:
    """All values the expression selects from obj (empty when nothing matches)."""
    segments = parse(expression) if isinstance(expression, str) else expression
    nodes = [obj]
    for segment in segments:
        nodes = [child for node in nodes for child in _step(segment, node)]
    return nodes


def _step(segment: _Segment, node: Any) -> list[Any]:
    match segment:
        case _Field(name):
            return [node[name]] if isinstance(node, Mapping) and name in node else []
        case _Index(index):
            if isinstance(node, list) and -len(node) <= index < len(node):
                return [node[index]]
            return []
        case _Wildcard():
            if isinstance(node, Mapping):
                return list(node.values())
            return list(node) if isinstance(node, list) else []
        case _Filter():
            items = node if isinstance(node, list) else []
            return [item for item in items if _filter_matches(segment, item)]
    return []


def _filter_matches(flt: _Filter, item: Any) -> bool:
    node = item
    for part in flt.path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    if flt.operator is None:
        return bool(node)
    if flt.operator == "==":
        return bool(node == flt.value)
    if flt.operator == "!=":
        return bool(node != flt.value)
    try:
        return bool(
            {"<": node < flt.value, ">": node > flt.value, "<=": node <= flt.value, ">=": node >= flt.value}[
                flt.operator
            ]
        )
    except TypeError:
        return False
