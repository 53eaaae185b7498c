"""Who may use the admin API.

A request proves it holds the admin key by one of the credential sources in ``SOURCES``,
tried in order: the ``Authorization: Bearer`` header, or a dashboard session cookie
(``dashboard_session``; a change made with the cookie must also carry its CSRF token in
``x-csrf-token``). The key is compared in constant time; tokenstile project keys (``ts-…``)
are refused with 403, whatever their validity, except on the routes that let project keys
read their own project's numbers (``Endpoint.readers``).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from tokenstile.admin import dashboard_session
from tokenstile.admin.http import ApiError
from tokenstile.gateway.auth import bearer
from tokenstile.stores.database import KEY_PREFIX, KeyRecord, hash_key

if TYPE_CHECKING:
    from tokenstile.gateway.runtime import Runtime

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: ``role`` ``admin``, or ``project`` (a project key, which
    may only read its own project); ``via`` says how (``bearer`` or ``session``)."""

    role: str
    via: str
    organization: str | None = None
    project: str | None = None
    key_id: str | None = None

    @property
    def author(self) -> str:
        return f"admin:{self.via}"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# A source returns the credential it found (and its name), or None to let the next one try.
CredentialSource = Callable[[Request], tuple[str, str] | None]


def from_bearer(request: Request) -> tuple[str, str] | None:
    token = bearer(_lower(request.headers))
    return (token, "bearer") if token else None


def from_session(request: Request) -> tuple[str, str] | None:
    cookie = request.cookies.get(dashboard_session.COOKIE)
    return (cookie, "session") if cookie else None


SOURCES: list[CredentialSource] = [from_bearer, from_session]


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _missing() -> ApiError:
    return ApiError(401, "no admin key; send it as 'Authorization: Bearer <admin key>'",
                    code="missing_admin_key", headers={"www-authenticate": "Bearer"})


def authenticate(request: Request, admin_key: str | None, now: float | None = None
                 ) -> Principal:
    """The admin principal, or an ApiError saying why not (401 or 403)."""
    found = next((hit for source in SOURCES if (hit := source(request)) is not None), None)
    if admin_key is None:
        raise ApiError(403, "the admin API is disabled: no admin key is configured; set "
                            "server.admin_key or $TOKENSTILE_ADMIN_KEY", code="admin_disabled")
    if found is None:
        raise _missing()
    credential, via = found
    if via == "session":
        session = _session(request, admin_key, credential, now)
        if session.role != "admin":
            raise ApiError(403, "a project key's dashboard session can only read its "
                                "project's dashboard", code="not_admin")
        return Principal(role="admin", via="session")
    if hmac.compare_digest(credential.encode(), admin_key.encode()):
        return Principal(role="admin", via=via)
    if credential.startswith(KEY_PREFIX):
        raise ApiError(403, "a tokenstile project key cannot use the admin API; send the "
                            "admin key", code="not_admin")
    raise ApiError(401, "wrong admin key", code="invalid_admin_key",
                   headers={"www-authenticate": "Bearer"})


def _session(request: Request, admin_key: str, cookie: str, now: float | None
             ) -> dashboard_session.Session:
    import time

    session = dashboard_session.decode(admin_key, cookie, time.time() if now is None else now)
    if session is None:
        raise ApiError(401, "the dashboard session has expired or is not valid; log in "
                            "again", code="session_expired")
    if request.method not in SAFE_METHODS and not dashboard_session.csrf_ok(
            admin_key, session, request.headers.get(dashboard_session.CSRF_HEADER)):
        raise ApiError(403, "missing or wrong CSRF token; send the page's token as "
                            "x-csrf-token", code="csrf_failed")
    return session


async def active_key(rt: Runtime, *, secret: str | None = None, key_id: str | None = None
                     ) -> KeyRecord | None:
    """A project key that is still valid now, found by its secret or its id."""
    if secret is not None:
        record = await rt.db.key_by_hash(hash_key(secret))
    elif key_id is not None:
        record = await rt.db.key_by_id(key_id)
    else:
        return None
    if record is None or not record.active(rt.clock.now()) or not record.project:
        return None
    return record


async def authenticate_reader(request: Request, rt: Runtime, admin_key: str | None
                              ) -> Principal:
    """Like ``authenticate``, and a valid project key (as a bearer token or a dashboard
    session) is let in too, as a ``project`` principal bound to its own project."""
    try:
        return authenticate(request, admin_key, rt.clock.now())
    except ApiError as err:
        if err.code != "not_admin" or admin_key is None:
            raise
    token = bearer(_lower(request.headers))
    if token is not None:
        record = await active_key(rt, secret=token)
        if record is None:
            raise ApiError(401, "this project key is unknown, revoked or expired",
                           code="invalid_key", headers={"www-authenticate": "Bearer"})
        via = "bearer"
    else:
        session = _session(request, admin_key, request.cookies.get(
            dashboard_session.COOKIE, ""), rt.clock.now())
        record = await active_key(rt, key_id=session.key_id)
        if record is None or record.project != session.project:
            raise ApiError(401, "the key of this dashboard session was revoked or has "
                                "expired; log in again", code="session_expired")
        via = "session"
    return Principal(role="project", via=via, organization=record.organization,
                     project=record.project, key_id=record.id)
