"""Dashboard sessions: a signed, expiring cookie, and CSRF tokens bound to it.

Nothing is stored on the server, so every gateway process sharing the config accepts the
same cookie. The signing secret is derived from the admin key: changing the admin key ends
every session. A session of a project key names the key, and every request re-reads it,
so revoking the key ends its session too.

CSRF: each form carries a token (and scripts send it as ``x-csrf-token``) that is an HMAC
of the session id; the login form's token is bound to a random pre-login cookie instead.
Cookies are ``HttpOnly`` and ``SameSite=Strict``, and ``Secure`` over HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass

import orjson

COOKIE = "tokenstile_session"
LOGIN_COOKIE = "tokenstile_login"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 8 * 3600
LOGIN_S = 3600


@dataclass(frozen=True, slots=True)
class Session:
    """Who logged in: ``admin`` (the admin key) or ``project`` (a project key, read-only)."""

    sid: str
    role: str
    expires: float
    key_id: str | None = None
    organization: str | None = None
    project: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _secret(admin_key: str, purpose: str) -> bytes:
    return hmac.new(admin_key.encode(), f"tokenstile dashboard {purpose} v1".encode(),
                    hashlib.sha256).digest()


def _sign(admin_key: str, purpose: str, message: str) -> str:
    return _b64(hmac.new(_secret(admin_key, purpose), message.encode(),
                         hashlib.sha256).digest())


def new_session(role: str, now: float, *, key_id: str | None = None,
                organization: str | None = None, project: str | None = None) -> Session:
    return Session(sid=secrets.token_urlsafe(18), role=role, expires=now + SESSION_S,
                   key_id=key_id, organization=organization, project=project)


def encode(admin_key: str, session: Session) -> str:
    """The cookie value: the session as JSON, and its signature."""
    payload = _b64(orjson.dumps(asdict(session)))
    return f"{payload}.{_sign(admin_key, 'session', payload)}"


def decode(admin_key: str, value: str | None, now: float) -> Session | None:
    """The session in a cookie, or None if it is missing, forged, malformed or expired."""
    if not value or value.count(".") != 1:
        return None
    payload, signature = value.split(".")
    if not hmac.compare_digest(signature, _sign(admin_key, "session", payload)):
        return None
    try:
        data = orjson.loads(_unb64(payload))
        session = Session(**data)
    except (ValueError, TypeError):
        return None
    if session.role not in ("admin", "project") or not isinstance(session.expires, int | float):
        return None
    return session if now < session.expires else None


def csrf_token(admin_key: str, session: Session) -> str:
    return _sign(admin_key, "csrf", session.sid)


def csrf_ok(admin_key: str, session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(str(token), csrf_token(admin_key, session))


def new_login_nonce() -> str:
    return secrets.token_urlsafe(18)


def login_token(admin_key: str, nonce: str) -> str:
    """The login form's CSRF token, bound to the pre-login cookie's nonce."""
    return _sign(admin_key, "login", nonce)


def login_ok(admin_key: str, nonce: str | None, token: str | None) -> bool:
    return bool(nonce) and bool(token) and hmac.compare_digest(
        str(token), login_token(admin_key, str(nonce)))
