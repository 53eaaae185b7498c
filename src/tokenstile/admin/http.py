"""JSON in and out for the admin API: one error shape, and validation that says what to fix."""

from __future__ import annotations

from typing import Any, get_args, get_origin

import orjson
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from tokenstile.errors import PREFIX


class ApiError(Exception):
    """A refusal with a status, a code scripts can match and a message people can read."""

    def __init__(self, status: int, message: str, code: str,
                 details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message if message.startswith(PREFIX) else PREFIX + message
        self.code = code
        self.details = details
        self.headers = headers or {}

    def response(self) -> Response:
        error: dict[str, Any] = {"message": self.message, "type": _TYPES.get(self.status,
                                                                               "api_error"),
                                 "code": self.code}
        if self.details is not None:
            error["details"] = self.details
        return json_response({"error": error}, self.status, self.headers)


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
          422: "invalid_request_error"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status_code=status,
                    media_type="application/json", headers=headers)


def not_found(what: str, name: str) -> ApiError:
    return ApiError(404, f"no {what} {name!r}", code=f"{what.replace(' ', '_')}_not_found")


def validation_error(where: str, exc: ValidationError) -> ApiError:
    """422 listing each bad field; the values sent are not echoed back."""
    details = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        path = ".".join(str(part) for part in err["loc"]) or where
        details.append({"field": path, "message": err["msg"]})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return ApiError(422, f"invalid {where}: {summary}", code="invalid_" + where,
                    details=details)


def parse_body(raw: bytes, model: type[BaseModel]) -> BaseModel:
    """A JSON object validated strictly: ``0`` is not ``false``, ``"5"`` is not ``5``."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        what = "empty" if not raw.strip() else f"not valid JSON ({exc.msg})"
        raise ApiError(400, f"the request body is {what}; expected a JSON object",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(422, "the request body must be a JSON object", code="invalid_body")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise validation_error("body", exc) from None


def parse_query(items: list[tuple[str, str]], model: type[BaseModel]) -> BaseModel:
    """Query parameters into a model; list fields take repeated or comma-separated values."""
    data: dict[str, Any] = {}
    for name, value in items:
        field = model.model_fields.get(name)
        if field is not None and _is_list(field.annotation):
            data.setdefault(name, []).extend(v for v in value.split(",") if v)
        else:
            data[name] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error("query", exc) from None


def _is_list(annotation: Any) -> bool:
    """``list[X]``, or ``list[X] | None``."""
    return get_origin(annotation) is list or any(get_origin(arg) is list
                                                 for arg in get_args(annotation))
