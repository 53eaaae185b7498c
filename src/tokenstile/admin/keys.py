"""Key lifecycle: create (the secret is shown once), list, show, change, revoke, rotate.

Every change also clears this process's key cache, so it applies here at once and on every
other gateway within ``auth.key_cache_ttl_s`` (one second by default).
"""

from __future__ import annotations

from typing import Any

from tokenstile.admin.endpoint import Call, Endpoint
from tokenstile.admin.http import ApiError, not_found
from tokenstile.admin.schemas import (
    KeyCreate,
    KeyLimit,
    KeyList,
    KeyListQuery,
    KeyOut,
    KeyUpdate,
    KeyWithSecret,
    timestamp,
)
from tokenstile.stores.database import KeyRecord, hash_key, new_key_id, new_key_secret


def key_state(record: KeyRecord, now: float) -> str:
    if record.revoked_at is not None:
        return "revoked"
    return "active" if record.active(now) else "expired"


def key_out(record: KeyRecord, now: float) -> dict[str, Any]:
    return {**record.public(), "state": key_state(record, now)}


def _limits(limits: dict[str, KeyLimit]) -> dict[str, Any]:
    # rollover and prorate are stored only when asked for: keys made before them read alike
    return {name: limit.model_dump(exclude={
        *(() if limit.rollover is not None else ("rollover",)),
        *(() if limit.prorate else ("prorate",))}) for name, limit in limits.items()}


async def _record(call: Call) -> KeyRecord:
    key_id = call.params["key_id"]
    record = await call.rt.db.key_by_id(key_id)
    if record is None:
        raise not_found("key", key_id)
    return record


async def _changed(call: Call) -> None:
    """Apply a key change in this process now (others follow within a second)."""
    call.rt.auth.forget()
    if call.rt.key_limits is not None:
        await call.rt.key_limits.refresh()


async def list_keys(call: Call) -> dict[str, Any]:
    q = call.query(KeyListQuery)
    now = call.rt.clock.now()
    filters = {name: value for name in ("organization", "project", "team", "user", "tier",
                                        "feature") if (value := getattr(q, name)) is not None}
    records = await call.rt.db.list_keys(include_revoked=q.state in ("revoked", "all"),
                                         filters=filters)
    rows = [key_out(r, now) for r in records]
    if q.state != "all":
        rows = [row for row in rows if row["state"] == q.state]
    return {"data": rows[:q.limit]}


async def create_key(call: Call) -> dict[str, Any]:
    body = call.body(KeyCreate)
    rt = call.rt
    now = rt.clock.now()
    expires = timestamp(body.expires_at)
    if expires is not None and expires <= now:
        raise ApiError(422, "expires_at is in the past", code="invalid_body")
    secret = new_key_secret()
    record = KeyRecord(
        id=new_key_id(), hash=hash_key(secret), prefix=secret[:7], name=body.name,
        organization=body.organization or rt.config.organization.name, project=body.project,
        team=body.team, user=body.user, tier=body.tier, feature=body.feature,
        allowed_models=body.allowed_models or None, passthrough=body.passthrough,
        limits=_limits(body.limits), created_at=now,
        expires_at=expires,
    )
    await rt.db.create_key(record)
    await _changed(call)
    return {**key_out(record, now), "key": secret}


async def show_key(call: Call) -> dict[str, Any]:
    return key_out(await _record(call), call.rt.clock.now())


async def update_key(call: Call) -> dict[str, Any]:
    record = await _record(call)
    body = call.body(KeyUpdate)
    changes: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "expires_at":
            value = timestamp(value)
        elif name == "limits":
            value = _limits(value or {})
        elif name == "passthrough" and value is None:
            raise ApiError(422, "passthrough must be true or false", code="invalid_body")
        elif name == "allowed_models":
            value = value or None
        changes[name] = value
    if record.revoked_at is not None and changes:
        raise ApiError(409, f"key {record.id!r} is revoked; create a new one",
                       code="key_revoked")
    updated = await call.rt.db.update_key(record.id, **changes)
    await _changed(call)
    if updated is None:
        raise not_found("key", record.id)
    return key_out(updated, call.rt.clock.now())


async def revoke_key(call: Call) -> dict[str, Any]:
    record = await _record(call)
    now = call.rt.clock.now()
    if record.revoked_at is None:
        record = await call.rt.db.update_key(record.id, revoked_at=now) or record
    await _changed(call)
    return key_out(record, now)


async def rotate_key(call: Call) -> dict[str, Any]:
    record = await _record(call)
    if record.revoked_at is not None:
        raise ApiError(409, f"key {record.id!r} is revoked; create a new one",
                       code="key_revoked")
    secret = new_key_secret()
    updated = await call.rt.db.update_key(record.id, hash=hash_key(secret), prefix=secret[:7])
    call.rt.auth.forget()
    if updated is None:
        raise not_found("key", record.id)
    return {**key_out(updated, call.rt.clock.now()), "key": secret}


ENDPOINTS = [
    Endpoint("GET", "/keys", list_keys, "List keys (never their secrets)", "keys",
             response=KeyList, query=KeyListQuery),
    Endpoint("POST", "/keys", create_key, "Create a key; its secret is in this answer only",
             "keys", response=KeyWithSecret, body=KeyCreate, status=201),
    Endpoint("GET", "/keys/{key_id}", show_key, "One key", "keys", response=KeyOut,
             errors=(404,)),
    Endpoint("PATCH", "/keys/{key_id}", update_key,
             "Change a key's name, expiry, models, feature, tier, passthrough or limits",
             "keys", response=KeyOut, body=KeyUpdate, errors=(404, 409)),
    Endpoint("POST", "/keys/{key_id}/revoke", revoke_key,
             "Revoke a key: refused everywhere within a second", "keys", response=KeyOut,
             errors=(404,)),
    Endpoint("POST", "/keys/{key_id}/rotate", rotate_key,
             "Give a key a new secret (same id and bindings); the old one stops working",
             "keys", response=KeyWithSecret, errors=(404, 409)),
]
