"""The one error hierarchy of the service.

Every error a client can see is an :class:`ApiError`; one handler in
``app.py`` renders it in the seed's shape::

    {"error": {"code": ..., "message": ..., "details": ..., "field": ...}}
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base class: an HTTP status, a stable machine code and a human message."""

    status: int = 500
    code: str = "INTERNAL_ERROR"
    message: str = "Internal server error"

    def __init__(
        self,
        details: Any = None,
        *,
        field: str | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.details = details
        self.field = field
        if message is not None:
            self.message = message
        self.headers = headers or {}
        super().__init__(f"{self.code}: {details}")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
                "field": self.field,
            }
        }


class InvalidRequest(ApiError):
    """The request body or its framing is unusable (not JSON, no events, too many)."""

    status, code, message = 400, "INVALID_REQUEST", "Request is invalid"


class InvalidParameter(ApiError):
    """A query or body parameter has a value outside what the endpoint accepts."""

    status, code, message = 400, "INVALID_PARAMETER", "Parameter is invalid"


class InvalidDateRange(ApiError):
    """``start_date`` / ``end_date`` do not form a valid, bounded period."""

    status, code, message = 400, "INVALID_DATE_RANGE", "Date range is invalid"


class InvalidMetrics(ApiError):
    """A requested metric name is not in the registry."""

    status, code, message = 400, "INVALID_METRICS", "Requested metrics are invalid"


class Unauthorized(ApiError):
    """No API key, or a key that is unknown or revoked."""

    status, code, message = 401, "UNAUTHORIZED", "A valid API key is required"

    def __init__(
        self, details: Any = None, *, field: str | None = None, invalid_token: bool = False
    ) -> None:
        # RFC 6750: the scheme to use, and whether a key was sent and refused.
        challenge = 'Bearer realm="kaie-analytics"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        super().__init__(details, field=field, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    """The key is valid but lacks the scope the endpoint needs."""

    status, code, message = 403, "FORBIDDEN", "The API key lacks the required scope"


class NotFound(ApiError):
    """No such route or resource (resources of other tenants included)."""

    status, code, message = 404, "NOT_FOUND", "Resource not found"


class WorkflowNotFound(ApiError):
    """The workflow does not exist for this tenant."""

    status, code, message = 404, "WORKFLOW_NOT_FOUND", "Workflow does not exist"


class MethodNotAllowed(ApiError):
    """The route exists but not with this HTTP method."""

    status, code, message = 405, "METHOD_NOT_ALLOWED", "Method not allowed"


class PayloadTooLarge(ApiError):
    """The request body is over the limit (after gzip is undone)."""

    status, code, message = 413, "PAYLOAD_TOO_LARGE", "Request body is too large"


class InvalidGranularity(ApiError):
    """``granularity`` is not one of hour, day, week, month."""

    status, code, message = 422, "INVALID_GRANULARITY", "Granularity parameter is invalid"


class RateLimitExceeded(ApiError):
    """Too many requests of this class for this key in the current window."""

    status, code, message = 429, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded"


class QueryTimeout(ApiError):
    """A query ran past the configured maximum query time and was interrupted."""

    status, code, message = 503, "QUERY_TIMEOUT", "The query took too long and was stopped"


class StoreUnavailable(ApiError):
    """A store the request needs (events, metadata or Redis) cannot take it now.

    Retrying later is right: nothing was half done.
    """

    status, code, message = 503, "STORE_UNAVAILABLE", "A store this request needs is unavailable"


class JobNotReady(ApiError):
    """The report or export has not finished yet."""

    status, code, message = 409, "REPORT_NOT_READY", "The report is not ready yet"


class ReportExpired(ApiError):
    """The report or export, or its download link, is past its expiry."""

    status, code, message = 410, "REPORT_EXPIRED", "The report has expired"


class ReportGenerationFailed(ApiError):
    """Building the report or export failed; ``details`` gives the reason."""

    status, code, message = 500, "REPORT_GENERATION_FAILED", "Report generation failed"


class StoreInUse(Exception):
    """The data directory's event store is held by another process (a running server)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        #: The process that holds it, when the engine can tell.
        self.pid = pid


class UnsupportedBackend(ValueError):
    """A backend setting this installation cannot serve (say why, and what to do)."""
