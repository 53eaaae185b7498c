"""Runtime overrides from the admin API: kill switches, budget amounts, shadow mode.

They are rows in the database, so they survive a restart and reach every gateway process
within a second (``Overrides`` refreshes its snapshot); this process refreshes at once.
"""

from __future__ import annotations

from typing import Any

from tokenstile.admin.endpoint import Call, Endpoint
from tokenstile.admin.http import ApiError
from tokenstile.admin.schemas import AmountBody, OverrideList, OverrideOut, ShadowBody, SwitchBody
from tokenstile.limits.model import Limit, compile_limits
from tokenstile.limits.overrides import SWITCH_SCOPES, switch_target
from tokenstile.stores.database import Override
from tokenstile.types import usd_to_nano

OK = {"type": "object", "properties": {"deleted": {"type": "boolean"}}, "required": ["deleted"]}


def override_out(item: Override) -> dict[str, Any]:
    return {"kind": item.kind, "target": item.target, "value": item.value,
            "updated_at": item.updated_at, "author": item.author}


def known_limit(call: Call, name: str) -> Limit:
    limits = {limit.name: limit for limit in compile_limits(call.rt.config)}
    limits.update((limit.name, limit) for limit in call.rt.admission.base_limits)
    limit = limits.get(name)
    if limit is None:
        raise ApiError(404, f"no limit named {name!r}; GET /admin/limits lists them",
                       code="limit_not_found")
    return limit


def _switch(call: Call) -> str:
    scope, name = call.params["scope"], call.params["name"]
    if scope not in SWITCH_SCOPES:
        raise ApiError(404, f"cannot switch a {scope!r}; expected one of "
                            f"{', '.join(SWITCH_SCOPES)}", code="unknown_switch_scope")
    return switch_target(scope, name)


async def _save(call: Call, kind: str, target: str, value: dict[str, Any]) -> dict[str, Any]:
    item = Override(kind, target, value, call.rt.clock.now(), call.author)
    await call.rt.db.set_override(item)
    await call.rt.overrides.refresh()
    return override_out(item)


async def _delete(call: Call, kind: str, target: str) -> dict[str, Any]:
    deleted = await call.rt.db.delete_override(kind, target)
    await call.rt.overrides.refresh()
    if not deleted:
        raise ApiError(404, f"no {kind} override for {target!r}", code="override_not_found")
    return {"deleted": True}


async def list_overrides(call: Call) -> dict[str, Any]:
    return {"data": [override_out(o) for o in await call.rt.db.list_overrides()]}


async def set_switch(call: Call) -> dict[str, Any]:
    body = call.body(SwitchBody)
    value: dict[str, Any] = {"enabled": body.enabled}
    if body.reason:
        value["reason"] = body.reason
    return await _save(call, "switch", _switch(call), value)


async def delete_switch(call: Call) -> dict[str, Any]:
    return await _delete(call, "switch", _switch(call))


async def set_limit_amount(call: Call) -> dict[str, Any]:
    limit = known_limit(call, call.params["name"])
    amount = call.body(AmountBody).amount
    internal = usd_to_nano(amount) if limit.unit == "usd" else int(amount)
    return await _save(call, "limit", limit.name, {"amount": internal})


async def delete_limit_amount(call: Call) -> dict[str, Any]:
    return await _delete(call, "limit", call.params["name"])


async def set_shadow(call: Call) -> dict[str, Any]:
    return await _save(call, "shadow", call.params["name"],
                       {"shadow": call.body(ShadowBody).shadow})


async def delete_shadow(call: Call) -> dict[str, Any]:
    return await _delete(call, "shadow", call.params["name"])


_SWITCH = "/overrides/switch/{scope}/{name}"
ENDPOINTS = [
    Endpoint("GET", "/overrides", list_overrides, "Every runtime override", "overrides",
             response=OverrideList),
    Endpoint("PUT", _SWITCH, set_switch,
             "Switch a feature, project, key or model off (or back on)", "overrides",
             response=OverrideOut, body=SwitchBody, errors=(404,)),
    Endpoint("DELETE", _SWITCH, delete_switch,
             "Remove a runtime switch: the file's setting applies again", "overrides",
             response=OK, errors=(404,)),
    Endpoint("PUT", "/overrides/limit/{name}", set_limit_amount,
             "Replace a limit's amount (in its unit; USD for usd limits)", "overrides",
             response=OverrideOut, body=AmountBody, errors=(404,)),
    Endpoint("DELETE", "/overrides/limit/{name}", delete_limit_amount,
             "Remove an amount override: the file's amount applies again", "overrides",
             response=OK, errors=(404,)),
    Endpoint("PUT", "/overrides/shadow/{name}", set_shadow,
             "Put a limit or policy in shadow mode (count and report, never block), or out",
             "overrides", response=OverrideOut, body=ShadowBody),
    Endpoint("DELETE", "/overrides/shadow/{name}", delete_shadow,
             "Remove a shadow override", "overrides", response=OK, errors=(404,)),
]
