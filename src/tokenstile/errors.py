"""Errors a client can read, in the provider's own shape.

Every refusal is a ``GatewayError``; ``render`` turns it into OpenAI's
``{"error": {"message", "type", "param", "code"}}`` or Anthropic's
``{"type": "error", "error": {"type", "message"}}``. Messages start with ``tokenstile: ``.
"""

from __future__ import annotations

from typing import Any

import orjson

from tokenstile.types import WireFormat

PREFIX = "tokenstile: "

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not message.startswith(PREFIX):
            message = PREFIX + message
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self, wire: WireFormat) -> bytes:
        return render_error(wire, self.status, self.message, self.type, self.code, self.param)


class StreamBlocked(GatewayError):
    """Raised by a stream observer to cut a stream: the client gets an error event, and the
    tokens generated before the cut are billed."""


def render_error(
    wire: WireFormat,
    status: int,
    message: str,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    payload: dict[str, Any]
    if wire == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else type)
        payload = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        payload = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return orjson.dumps(payload)


def bad_request(
    message: str, param: str | None = None, code: str = "invalid_request"
) -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, type="authentication_error", code="invalid_api_key")


def forbidden(message: str, code: str = "forbidden") -> GatewayError:
    return GatewayError(403, message, type="permission_error", code=code)


def not_found(message: str, code: str = "not_found") -> GatewayError:
    return GatewayError(404, message, type="invalid_request_error", code=code)
