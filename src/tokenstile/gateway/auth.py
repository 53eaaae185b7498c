"""Authentication: the credential a caller sends → who is calling (and which provider key).

tokenstile keys (``ts-…``) are looked up by their SHA-256 hash, cached for
``auth.key_cache_ttl_s`` (one second by default) so a revoked key stops working everywhere
within that time. In passthrough mode a caller's own provider key is forwarded instead.

AWS SDKs sign their requests (SigV4) instead of sending a key: a caller gives its tokenstile
key as the access key id (``aws_access_key_id="ts-…"``, any secret), and the gateway reads it
from the signature's ``Credential=`` scope. The signature itself cannot be checked (the
gateway keeps only the key's hash, and the secret is not the key) and is not needed: the key
id is the whole credential, as a bearer token is. Bedrock API keys (``Authorization:
Bearer``, boto3's ``AWS_BEARER_TOKEN_BEDROCK``) work as they do for the other SDKs.

The ``google-genai`` SDK sends its key as ``x-goog-api-key`` (a ``?key=`` query parameter
on Gemini routes is moved there by ``app.py``): a tokenstile key is read from it like any
other, and never forwarded.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from tokenstile.clock import Clock
from tokenstile.config import AuthConfig
from tokenstile.errors import GatewayError, forbidden, unauthorized
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.stores.database import KEY_PREFIX, Database, KeyRecord, hash_key
from tokenstile.types import Caller

_CACHE_LIMIT = 50_000


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def sigv4_key_id(headers: Mapping[str, str]) -> str | None:
    """The access key id of a SigV4 ``Authorization`` header (None for any other)."""
    value = headers.get("authorization")
    if value is None or not value.startswith("AWS4-HMAC-SHA256"):
        return None
    _, found, rest = value.partition("Credential=")
    return rest.split("/", 1)[0].strip() or None if found else None


class Authenticator:
    def __init__(self, config: AuthConfig, db: Database, clock: Clock,
                 admin_key: str | None = None) -> None:
        self._config = config
        self._db = db
        self._clock = clock
        self._admin_key = admin_key
        # digest → (record, the Caller built from it, when it was fetched)
        self._cache: dict[str, tuple[KeyRecord | None, Caller | None, float]] = {}

    def reconfigure(self, config: AuthConfig, admin_key: str | None) -> None:
        self._config = config
        self._admin_key = admin_key
        self._cache.clear()

    def forget(self) -> None:
        """Drop cached lookups (after a key is revoked in this process)."""
        self._cache.clear()

    async def authenticate(self, headers: Mapping[str, str]) -> tuple[Caller, str | None]:
        """Return the caller and, in passthrough, the provider key to forward."""
        presented = bearer(headers) or headers.get("x-api-key") or \
            headers.get("x-goog-api-key") or None
        tokenstile_key = headers.get("x-tokenstile-key")
        if tokenstile_key is None and presented is None:
            signed_by = sigv4_key_id(headers)
            if signed_by is not None and not signed_by.startswith(KEY_PREFIX):
                raise unauthorized(
                    "the request is signed with an AWS access key, which this gateway does "
                    "not forward; give your tokenstile key as the access key id "
                    "(aws_access_key_id='ts-…', any secret) or as a bearer token "
                    "(AWS_BEARER_TOKEN_BEDROCK)")
            tokenstile_key = signed_by
        migrating = False
        if self._config.migration_mode and not tokenstile_key:
            tokenstile_key = headers.get("x-usagepanda-api-key")
            migrating = tokenstile_key is not None
        if tokenstile_key is None and presented and presented.startswith(KEY_PREFIX):
            tokenstile_key, presented = presented, None
        if tokenstile_key:
            record, caller = await self._lookup(tokenstile_key)
            if presented:
                if not record.passthrough or self._config.mode == "keys":
                    if migrating:
                        # A client moving from Usage Panda still sends its old provider key
                        # in Authorization: not forwarded (the gateway's key is), not refused.
                        return caller, None
                    raise forbidden(
                        "this key may not forward its own provider key; send only the "
                        "tokenstile key", code="passthrough_not_allowed")
                return caller, presented
            return caller, None
        if presented is None:
            raise unauthorized(
                "no API key; send a tokenstile key as 'Authorization: Bearer ts-…' (on Gemini "
            "routes: 'x-goog-api-key: ts-…')")
        if self._admin_key and hmac.compare_digest(presented.encode(),
                                                   self._admin_key.encode()):
            return Caller(organization="default", project="admin", is_admin=True), None
        if self._config.mode in ("passthrough", "both"):
            caller = Caller(
                organization=self._config.passthrough_organization,
                project=self._config.passthrough_project,
                passthrough=True,
            )
            return caller, presented
        raise unauthorized(
            "the API key is not a tokenstile key; create one with "
            "'tokenstile keys create --project P --user U'")

    async def _lookup(self, secret: str) -> tuple[KeyRecord, Caller]:
        digest = hash_key(secret)
        now = self._clock.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[2] < self._config.key_cache_ttl_s:
            record, caller = cached[0], cached[1]
        else:
            try:
                record = await self._db.key_by_hash(digest)
            except StoreUnavailable:
                raise GatewayError(
                    503, "the key database is unreachable, so this key cannot be checked; "
                         "try again shortly", type="api_error", code="database_unavailable",
                    headers={"retry-after": "2"}) from None
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            caller = record.caller() if record is not None else None
            self._cache[digest] = (record, caller, now)
        if record is None:
            raise unauthorized("unknown API key")
        if not record.active(self._clock.now()):
            state = "revoked" if record.revoked_at is not None else "expired"
            raise GatewayError(401, f"this API key was {state}", type="authentication_error",
                               code=f"key_{state}")
        assert caller is not None
        return record, caller
