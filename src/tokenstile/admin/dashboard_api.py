"""The dashboard's JSON twins in the admin API (``/admin/dashboard…``) and the seed's
``GET /api/dashboard``.

Each page of ``/dashboard`` has one route here that returns the numbers the page shows,
computed by the same ``dashboard_data`` function. Admins (admin key, or a dashboard
session) see everything, or narrow it with ``organization``/``project``; a project key
sees its own project and nothing else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Route

from tokenstile.admin import dashboard_data as data
from tokenstile.admin.endpoint import Call, Endpoint, route
from tokenstile.admin.http import ApiError, not_found
from tokenstile.admin.schemas import Name, timestamp
from tokenstile.gateway.runtime import Runtime, admin_key_for

RangeName = Literal["today", "24h", "7d", "month", "30d", "last_month", "90d"]
OBJECT: dict[str, Any] = {"type": "object"}
LIST: dict[str, Any] = {"type": "object", "properties": {"data": {"type": "array"}},
                        "required": ["data"]}


class ScopeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organization: Name | None = Field(None, description="Admins: only this organization.")
    project: Name | None = Field(None, description="Admins: only this project. A project "
                                                   "key always sees its own project.")


class BreakdownParams(ScopeParams):
    by: Literal["project", "model", "user", "feature", "team", "tag"] = "project"
    range: RangeName = "month"
    since: datetime | float | None = Field(None, description="Start (ISO 8601 or Unix "
                                                             "seconds); overrides range.")
    until: datetime | float | None = None


class DashboardFlaggedParams(ScopeParams):
    kind: Literal["blocked", "rewritten", "degraded", "audited", "error"] | None = None
    user: Name | None = None
    feature: Name | None = None
    key_id: Name | None = None
    policy: Name | None = Field(None, description="Block reason or flag containing this text.")
    range: RangeName = "30d"
    since: datetime | float | None = None
    until: datetime | float | None = None
    limit: int = Field(50, ge=1, le=1000)


class DashboardKeysParams(ScopeParams):
    state: Literal["active", "revoked", "expired", "all"] = "all"


class RecommendationParams(ScopeParams):
    days: int = Field(data.RECOMMEND_DAYS, ge=1, le=90)


def scope_for(call: Call, params: ScopeParams) -> data.Scope:
    """What the caller may see: a project key is held to its project."""
    who = call.principal
    if who is None or who.is_admin:
        return data.Scope(params.organization, params.project)
    if params.project not in (None, who.project) or \
            params.organization not in (None, who.organization):
        raise ApiError(403, "a project key can only see its own project",
                       code="other_project")
    return data.Scope(who.organization, who.project, who.key_id)


def context(call: Call, params: ScopeParams) -> data.Context:
    return data.Context.of(call.rt, scope_for(call, params))


async def dashboard(call: Call) -> dict[str, Any]:
    return await data.overview(context(call, call.query(ScopeParams)))


async def dashboard_breakdown(call: Call) -> dict[str, Any]:
    q = call.query(BreakdownParams)
    return await data.breakdown(context(call, q), q.by, q.range, timestamp(q.since),
                                timestamp(q.until))


async def dashboard_flagged(call: Call) -> dict[str, Any]:
    q = call.query(DashboardFlaggedParams)
    ctx = context(call, q)
    return await data.flagged(ctx, data.FlaggedFilter(
        kind=q.kind, project=q.project, user=q.user, feature=q.feature, key_id=q.key_id,
        policy=q.policy, range=q.range, since=timestamp(q.since), until=timestamp(q.until),
        limit=q.limit))


async def dashboard_request(call: Call) -> dict[str, Any]:
    request_id = call.params["request_id"]
    found = await data.request_detail(context(call, ScopeParams()), request_id)
    if found is None:
        raise not_found("request", request_id)
    return found


async def dashboard_budgets(call: Call) -> dict[str, Any]:
    return await data.budgets(context(call, call.query(ScopeParams)))


async def dashboard_keys(call: Call) -> dict[str, Any]:
    q = call.query(DashboardKeysParams)
    return await data.keys(context(call, q), q.state)


async def dashboard_recommendations(call: Call) -> dict[str, Any]:
    q = call.query(RecommendationParams)
    return await data.recommendations(context(call, q), q.days)


_OVERVIEW_SUMMARY = ("The dashboard overview: usage today, this month and projected; limits; "
                     "breakdowns by project, model and user; alerts; recommendations")
ENDPOINTS = [
    Endpoint("GET", "/dashboard", dashboard, _OVERVIEW_SUMMARY, "dashboard", response=OBJECT,
             query=ScopeParams, errors=(403,), readers=True),
    Endpoint("GET", "/dashboard/breakdown", dashboard_breakdown,
             "Usage by project, model, user, feature, team or tag over a range, with a series",
             "dashboard", response=LIST, query=BreakdownParams, readers=True),
    Endpoint("GET", "/dashboard/flagged", dashboard_flagged,
             "Blocked, rewritten, degraded, audited and failed requests with their reasons",
             "dashboard", response=LIST, query=DashboardFlaggedParams, readers=True),
    Endpoint("GET", "/dashboard/requests/{request_id}", dashboard_request,
             "One request: what happened to it and why", "dashboard", response=OBJECT,
             errors=(404,), readers=True),
    Endpoint("GET", "/dashboard/budgets", dashboard_budgets,
             "Every budget with usage, thresholds and reset; overrides; kill switches",
             "dashboard", response=OBJECT, query=ScopeParams, readers=True),
    Endpoint("GET", "/dashboard/keys", dashboard_keys, "Keys, newest first, never secrets",
             "dashboard", response=LIST, query=DashboardKeysParams, readers=True),
    Endpoint("GET", "/dashboard/recommendations", dashboard_recommendations,
             "Recommendations from recent usage, with the monthly saving of each",
             "dashboard", response=LIST, query=RecommendationParams, readers=True),
]


def api_routes(rt: Runtime) -> list[Route]:
    """``GET /api/dashboard``: the overview, with the admin key or a project key."""
    overview = Endpoint("GET", "/api/dashboard", dashboard, _OVERVIEW_SUMMARY, "dashboard",
                        response=OBJECT, query=ScopeParams, readers=True)
    return [route(overview, lambda r: admin_key_for(r.config), rt)]
