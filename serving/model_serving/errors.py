"""Errors with the HTTP status they map to; messages say what to fix."""

from __future__ import annotations


class HttpError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(HttpError):
    status = 400


class Unauthorized(HttpError):
    status = 401


class Forbidden(HttpError):
    status = 403


class NotFound(HttpError):
    status = 404


class MethodNotAllowed(HttpError):
    status = 405

    def __init__(self, message: str, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(HttpError):
    status = 413


class UnsupportedMediaType(HttpError):
    status = 415


class Unavailable(HttpError):
    """The server cannot answer now (model not loaded, S3 unreachable); not the client's fault."""

    status = 503


class LoadError(Exception):
    """A model version that could not be made servable.

    reason: verification (bytes do not match the manifest or the pin), not_found
    (no version where expected), invalid (verified files that are not a usable
    model), s3 (the bucket could not be read).
    """

    def __init__(self, message: str, reason: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retryable = retryable
