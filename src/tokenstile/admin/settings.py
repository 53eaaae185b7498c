"""Read the configuration in force: the whole (redacted) file, and per organization, project,
team, tier, user and feature, each with the limits that apply and any runtime switch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenstile import __version__
from tokenstile.admin.endpoint import Call, Endpoint
from tokenstile.admin.http import ApiError
from tokenstile.admin.redact import effective_config
from tokenstile.config import FeatureConfig, ProjectConfig
from tokenstile.gateway.reload import public_errors
from tokenstile.limits.model import Limit, compile_limits
from tokenstile.limits.overrides import apply_limit_overrides
from tokenstile.types import nano_to_usd

LIST = {"type": "object", "properties": {"data": {"type": "array",
                                                  "items": {"type": "object"}}},
        "required": ["data"]}
OBJECT: dict[str, Any] = {"type": "object"}


def amount_in_unit(limit: Limit, amount: int) -> float | int:
    return nano_to_usd(amount) if limit.unit == "usd" else amount


def limit_view(limit: Limit, effective: Limit) -> dict[str, Any]:
    window = limit.window.kind if limit.window.kind != "rolling" else \
        f"rolling:{limit.window.length_s}s"
    return {
        "name": limit.name, "scope": limit.scope,
        "match": sorted(limit.match) if limit.match is not None else None,
        "window": window, "unit": limit.unit,
        "amount": amount_in_unit(effective, effective.amount),
        "file_amount": amount_in_unit(limit, limit.amount),
        "shadow": effective.shadow, "file_shadow": limit.shadow,
        "overridden": effective.amount != limit.amount or effective.shadow != limit.shadow,
    }


def limit_views(call: Call) -> list[dict[str, Any]]:
    base = compile_limits(call.rt.config)
    effective = apply_limit_overrides(base, call.rt.overrides.items)
    return [limit_view(b, e) for b, e in zip(base, effective, strict=True)]


def _applies(view: dict[str, Any], scope: str, name: str) -> bool:
    return view["scope"] == scope and (view["match"] is None or name in view["match"])


def switch_state(call: Call, scope: str, name: str, file_enabled: bool) -> dict[str, Any]:
    target = f"{scope}:{name}"
    runtime = next((o for o in call.rt.overrides.items
                    if o.kind == "switch" and o.target == target), None)
    return {
        "enabled": not call.rt.overrides.is_off(scope, name),
        "file_enabled": file_enabled,
        "runtime_switch": None if runtime is None else {
            **runtime.value, "updated_at": runtime.updated_at, "author": runtime.author},
    }


async def get_config(call: Call) -> dict[str, Any]:
    return {"config": effective_config(call.rt.config), "status": call.rt.config_status()}


async def get_status(call: Call) -> dict[str, Any]:
    rt = call.rt
    return {"version": __version__, "config": rt.config_status(),
            "ledger_backlog": rt.ledger.backlog}


async def reload_config(call: Call) -> dict[str, Any]:
    reloader = call.rt.reloader
    if reloader is None or reloader.path is None:
        raise ApiError(409, "this gateway was started without a config file, so there is "
                            "nothing to reload", code="no_config_file")
    status = await reloader.reload()
    if status.error:
        raise ApiError(422, "the new config is not valid; the running one keeps serving",
                       code="config_invalid",
                       details=[{"message": line} for line in public_errors(status.error)])
    return status.as_dict()


async def list_organizations(call: Call) -> dict[str, Any]:
    org = call.rt.config.organization
    views = limit_views(call)
    return {"data": [{"name": org.name, "settings": org.model_dump(mode="json"),
                      "limits": [v for v in views if _applies(v, "organization", org.name)]}]}


def _switchable(call: Call, scope: str,
                items: Mapping[str, ProjectConfig | FeatureConfig]) -> dict[str, Any]:
    """Configured projects or features, each with its settings, whether it is switched on
    and the limits that apply to it."""
    views = limit_views(call)
    return {"data": [
        {"name": name, "settings": item.model_dump(mode="json"),
         **switch_state(call, scope, name, item.enabled),
         "limits": [v for v in views if _applies(v, scope, name)]}
        for name, item in items.items()]}


async def list_projects(call: Call) -> dict[str, Any]:
    return _switchable(call, "project", call.rt.config.projects)


async def list_features(call: Call) -> dict[str, Any]:
    return _switchable(call, "feature", call.rt.config.features)


async def list_tiers(call: Call) -> dict[str, Any]:
    views = limit_views(call)
    return {"data": [
        {"name": name, "settings": tier.model_dump(mode="json"),
         "limits": [v for v in views if v["name"].startswith(f"users.{name}.")]}
        for name, tier in call.rt.config.users.items()]}


async def list_teams(call: Call) -> dict[str, Any]:
    views = [v for v in limit_views(call) if v["scope"] == "team"]
    names = {n for v in views for n in v["match"] or ()}
    names |= {k.team for k in await call.rt.db.list_keys() if k.team}
    return {"data": [{"name": name, "limits": [v for v in views if _applies(v, "team", name)]}
                     for name in sorted(names)]}


async def list_users(call: Call) -> dict[str, Any]:
    """Users known from their keys (users are not listed in the config, tiers are)."""
    users: dict[str, dict[str, Any]] = {}
    for key in await call.rt.db.list_keys():
        if not key.user:
            continue
        entry = users.setdefault(key.user, {"name": key.user, "tiers": set(),
                                            "projects": set(), "keys": 0})
        entry["keys"] += 1
        if key.tier:
            entry["tiers"].add(key.tier)
        if key.project:
            entry["projects"].add(key.project)
    return {"data": [{**u, "tiers": sorted(u["tiers"]), "projects": sorted(u["projects"])}
                     for _, u in sorted(users.items())]}


async def list_limits(call: Call) -> dict[str, Any]:
    return {"data": limit_views(call)}


ENDPOINTS = [
    Endpoint("GET", "/status", get_status, "Version, config generation and last reload error",
             "config", response=OBJECT),
    Endpoint("GET", "/config", get_config, "The configuration in force, secrets redacted",
             "config", response=OBJECT),
    Endpoint("POST", "/config/reload", reload_config,
             "Reload the config file now (as SIGHUP does); refused if it is not valid",
             "config", response=OBJECT, errors=(409,)),
    Endpoint("GET", "/limits", list_limits,
             "Every limit: the file's amount and shadow flag next to the one in force",
             "config", response=LIST),
    Endpoint("GET", "/organizations", list_organizations, "The organization and its limits",
             "config", response=LIST),
    Endpoint("GET", "/projects", list_projects, "Projects: settings, switch, limits", "config",
             response=LIST),
    Endpoint("GET", "/teams", list_teams, "Teams named by limits or keys", "config",
             response=LIST),
    Endpoint("GET", "/tiers", list_tiers, "User tiers and their per-user limits", "config",
             response=LIST),
    Endpoint("GET", "/users", list_users, "Users known from their keys", "config",
             response=LIST),
    Endpoint("GET", "/features", list_features, "Features: settings, switch, limits", "config",
             response=LIST),
]
