"""Who may use the admin API.

A request proves it holds the admin key by one of the credential sources in ``SOURCES``,
tried in order: today the ``Authorization: Bearer`` header; a dashboard session cookie plugs
in as one more source that returns the same ``Principal``. The key is compared in constant
time; tokenstile project keys (``ts-…``) are refused with 403, whatever their validity.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.requests import Request

from tokenstile.admin.http import ApiError
from tokenstile.gateway.auth import bearer
from tokenstile.stores.database import KEY_PREFIX


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated admin caller; ``via`` says how (``bearer``, later ``session``)."""

    role: str
    via: str

    @property
    def author(self) -> str:
        return f"admin:{self.via}"


# A source returns the credential it found (and its name), or None to let the next one try.
CredentialSource = Callable[[Request], tuple[str, str] | None]


def from_bearer(request: Request) -> tuple[str, str] | None:
    token = bearer(_lower(request.headers))
    return (token, "bearer") if token else None


SOURCES: list[CredentialSource] = [from_bearer]


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def authenticate(request: Request, admin_key: str | None) -> Principal:
    """The admin principal, or an ApiError saying why not (401 or 403)."""
    found = next((hit for source in SOURCES if (hit := source(request)) is not None), None)
    if admin_key is None:
        raise ApiError(403, "the admin API is disabled: no admin key is configured; set "
                            "server.admin_key or $TOKENSTILE_ADMIN_KEY", code="admin_disabled")
    if found is None:
        raise ApiError(401, "no admin key; send it as 'Authorization: Bearer <admin key>'",
                       code="missing_admin_key", headers={"www-authenticate": "Bearer"})
    credential, via = found
    if hmac.compare_digest(credential.encode(), admin_key.encode()):
        return Principal(role="admin", via=via)
    if credential.startswith(KEY_PREFIX):
        raise ApiError(403, "a tokenstile project key cannot use the admin API; send the "
                            "admin key", code="not_admin")
    raise ApiError(401, "wrong admin key", code="invalid_admin_key",
                   headers={"www-authenticate": "Bearer"})
