"""Parse Kubernetes REST paths (pure).

kmock's parser reads ``/api/v1/namespaces/default`` as "namespace default, no resource";
the API server reads it as "the Namespace object named default". This parser follows the
API server: after ``namespaces/<x>`` come either nothing or ``status``/``finalize`` (the
Namespace itself) or ``<plural>[/<name>[/<subresource>]]`` (an object in namespace x).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiPath:
    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


@functools.lru_cache(maxsize=4096)
def parse_api_path(path: str) -> ApiPath | None:
    """The resource a REST path addresses, or None for discovery and non-API paths.

    Remembered: the API parses each request's path three times, and clients repeat their paths."""
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 2:
        if len(rest) == 2 or (len(rest) == 3 and rest[2] in ("status", "finalize")):
            return ApiPath(group, version, "namespaces", None, rest[1], rest[2] if len(rest) == 3 else None)
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) >= 2 else None
    subresource = "/".join(rest[2:]) or None
    return ApiPath(group, version, plural, namespace, name, subresource)
