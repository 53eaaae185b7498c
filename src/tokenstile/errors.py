"""Errors a client can read, in the provider's own shape.

Every refusal is a ``GatewayError``; ``render`` turns it into OpenAI's
``{"error": {"message", "type", "param", "code"}}``, Anthropic's
``{"type": "error", "error": {"type", "message"}}``, Bedrock's ``{"message"}`` with the
error's name in the ``x-amzn-errortype`` header (``headers_for``), which is what boto3
raises a ``ClientError`` from, or Google's ``{"error": {"code", "message", "status"}}``
(Gemini routes), which the ``google-genai`` SDK raises as its ``ClientError`` or
``ServerError``. Messages start with ``tokenstile: ``.
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


_BEDROCK_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "RequestTimeoutException",
    429: "ThrottlingException",
    500: "InternalServerException",
    502: "InternalServerException",
    503: "ServiceUnavailableException",
    504: "ModelTimeoutException",
}
# The exceptions a Bedrock event stream can carry (members of both stream unions): a
# stream that broke off is Bedrock's model stream error.
_BEDROCK_STREAM_TYPES = {
    429: "throttlingException",
    502: "modelStreamErrorException",
    503: "serviceUnavailableException",
}


# google.rpc.Code names, as Google's APIs pair them with HTTP statuses.
_GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    422: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def google_status(status: int) -> str:
    """The ``google.rpc.Code`` name Google's APIs give an HTTP status."""
    return _GOOGLE_STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


def bedrock_error_type(status: int) -> str:
    """The Bedrock error name for a status (``x-amzn-errortype``)."""
    return _BEDROCK_TYPES.get(
        status, "InternalServerException" if status >= 500 else "ValidationException")


def bedrock_stream_error_type(status: int) -> str:
    """The exception type of a Bedrock stream's error frame for a status."""
    return _BEDROCK_STREAM_TYPES.get(status, "internalServerException" if status >= 500
                                     else "validationException")


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

    def headers_for(self, wire: WireFormat) -> dict[str, str]:
        """The response headers of this error in ``wire``'s shape."""
        if wire != "bedrock":
            return self.headers
        return {**self.headers, "x-amzn-errortype": bedrock_error_type(self.status)}


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
    if wire == "bedrock":
        payload = {"message": message}
    elif wire == "gemini":
        error: dict[str, Any] = {"code": status, "message": message,
                                 "status": google_status(status)}
        if code:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                 "reason": code, "domain": "tokenstile"}]
        payload = {"error": error}
    elif wire == "anthropic":
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
