"""OpenAI-style error bodies and the HTTP status of every server-side failure.

Every error leaving the server has the shape OpenAI clients parse::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Messages are fixed strings or name fields; they never echo request content.
"""

from __future__ import annotations

from typing import Any

from teellm.errors import TeellmError

# OpenAI's error "type" for each status the server uses.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}

# Status for typed errors raised by other components, matched on their ``code``.
_STATUS_BY_CODE = {
    "context_length_exceeded": 400,
    "unsupported_model": 400,
    "envelope_invalid": 400,
    "envelope_malformed": 400,
    "decryption_failed": 400,
    "invalid_request": 400,
    "model_not_found": 404,
    "invalid_api_key": 401,
    "missing_api_key": 401,
    "model_not_allowed": 403,
    "plain_mode_disabled": 403,
    "rate_limit_exceeded": 429,
    "payload_too_large": 413,
    "not_ready": 503,
}


class ApiError(TeellmError):
    """An error the API answers with ``status`` and an OpenAI-style body."""

    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPE_BY_STATUS.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return error_body(str(self), status=self.status, code=self.code, param=self.param)


def error_body(
    message: str, *, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The JSON object OpenAI clients expect for an error with this status."""
    return {
        "error": {
            "message": message,
            "type": _TYPE_BY_STATUS.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def from_teellm_error(exc: TeellmError) -> ApiError:
    """Map a typed error from any component to an API error.

    Unknown codes become 500 with a generic message: an unexpected internal
    message could carry details the caller should not see.
    """
    if isinstance(exc, ApiError):
        return exc
    status = _STATUS_BY_CODE.get(exc.code)
    if status is None:
        return ApiError("internal error", status=500, code="internal_error")
    return ApiError(str(exc), status=status, code=exc.code)
