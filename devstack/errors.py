"""Kubernetes API errors as ``Status`` objects, worded like the real API server's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crd_validation.structural import FieldError
from devstack.kinds import ResourceType


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def _details(rt: ResourceType, name: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": rt.plural}
    if name:
        details["name"] = name
    if rt.group:
        details["group"] = rt.group
    return details


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified_plural} "{name}" not found', _details(rt, name))


def resource_not_found(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{rt.qualified_plural} "{name}" already exists', _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified_plural} "{name}": {why}', _details(rt, name)
    )


def stale(rt: ResourceType, name: str) -> ApiError:
    return conflict(
        rt, name, "the object has been modified; please apply your changes to the latest version and try again"
    )


def invalid(rt: ResourceType, name: str, errors: Sequence[FieldError]) -> ApiError:
    listed = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    details = {
        "name": name,
        "group": rt.group,
        "kind": rt.kind,
        "causes": [{"reason": e.reason, "message": e.detail, "field": e.field} for e in errors],
    }
    return ApiError(422, "Invalid", f'{rt.qualified_kind} "{name}" is invalid: {listed}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def method_not_allowed(what: str) -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", f"the server does not allow this method on the requested resource ({what})"
    )


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", message)


def expired(resource_version: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {resource_version}")
