"""The dashboard at ``/dashboard``: server-rendered pages behind a login, no external files.

Pages read their numbers from ``dashboard_data`` — the functions behind their JSON twins in
the admin API (linked from each page) — so both always agree. Changes (kill switches,
shadow mode, budget amounts, keys) are plain HTML forms that carry a CSRF token and call
the admin API's own handlers, so they behave exactly as the API does. A project key logs in
read-only and sees its project alone.

Every answer carries a strict content security policy (no inline script or style, nothing
from another origin), ``no-store`` caching and ``frame-ancestors 'none'``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import jinja2
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tokenstile import __version__
from tokenstile.admin import dashboard_charts as charts
from tokenstile.admin import dashboard_data as data
from tokenstile.admin import dashboard_session as sessions
from tokenstile.admin import keys as key_api
from tokenstile.admin import metrics_summary as metrics
from tokenstile.admin import overrides as override_api
from tokenstile.admin.auth import Principal, active_key
from tokenstile.admin.endpoint import Call
from tokenstile.admin.http import ApiError
from tokenstile.admin.schemas import AmountBody, KeyCreate, ShadowBody, SwitchBody
from tokenstile.gateway.asgi import Receive, Scope, Send
from tokenstile.gateway.runtime import Runtime, admin_key_for
from tokenstile.stores.database import KEY_PREFIX

BASE = "/dashboard"
HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024
FAILED_LOGIN_DELAY_S = 0.3
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
NAV = [("overview", "Overview", ""), ("breakdown", "Breakdown", "/breakdown"),
       ("flagged", "Flagged", "/flagged"), ("budgets", "Budgets", "/budgets"),
       ("keys", "Keys", "/keys"), ("recommendations", "Recommendations", "/recommendations")]
NOTICES = {
    "switch_off": "{what} is switched off: its requests are refused.",
    "switch_on": "{what} is switched on.",
    "switch_reset": "{what} follows the config file again.",
    "shadow_on": "{what} is in shadow mode: counted and reported, never enforced.",
    "shadow_off": "{what} is enforced.",
    "shadow_reset": "{what}: shadow mode follows the config file again.",
    "amount_set": "{what} has a new amount.",
    "amount_reset": "{what} is back to the config file's amount.",
    "revoked": "Key {what} is revoked: it is refused everywhere within a second.",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(money=charts.money, compact=charts.compact, pct=_pct,
                       number=lambda v: f"{int(v or 0):,}")
    env.globals.update(meter=charts.meter, BASE=BASE, version=__version__, nav=NAV, qs=_qs)
    return env


def _pct(value: float | None, digits: int | None = None) -> str:
    if value is None:
        return "–"
    percent = value * 100
    if 0 < percent < 0.1 and digits is None:
        return "<0.1 %"
    if digits is None:
        digits = 1 if 0 < abs(percent) < 10 else 0
    return f"{percent:.{digits}f} %"


class Page:
    """One authenticated page request: who is asking, their scope, and rendering."""

    def __init__(self, web: DashboardWeb, request: Request, who: Principal,
                 session: sessions.Session, admin_key: str) -> None:
        self.web = web
        self.request = request
        self.who = who
        self.session = session
        self.csrf = sessions.csrf_token(admin_key, session)
        self.admin_key = admin_key

    @property
    def rt(self) -> Runtime:
        return self.web.rt

    def scope(self) -> data.Scope:
        if not self.who.is_admin:
            return data.Scope(self.who.organization, self.who.project, self.who.key_id)
        q = self.request.query_params
        return data.Scope(q.get("organization") or None, q.get("project") or None)

    def context(self) -> data.Context:
        return data.Context.of(self.rt, self.scope())

    def render(self, template: str, active: str, json_url: str, status: int = 200,
               **values: Any) -> Response:
        html = self.web.env.get_template(template).render(
            **self.web.common(self.request, self), active=active, json_url=json_url,
            **values)
        return HTMLResponse(html, status_code=status)

    def notice(self) -> str | None:
        q = self.request.query_params
        template = NOTICES.get(q.get("done", ""))
        return template.format(what=q.get("what", "")[:200]) if template else None


Handler = Callable[[Page], Awaitable[Response]]


class DashboardWeb:
    """The ``/dashboard`` ASGI app."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.env = _environment()
        self._warming: asyncio.Future[None] | None = None
        routes = [
            Route("/", self._page(self.overview)),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self._action(self.logout, admin_only=False), methods=["POST"]),
            Route("/breakdown", self._page(self.breakdown)),
            Route("/flagged", self._page(self.flagged)),
            Route("/requests/{request_id}", self._page(self.request_page)),
            Route("/budgets", self._page(self.budgets)),
            Route("/budgets/switch", self._action(self.switch), methods=["POST"]),
            Route("/budgets/shadow", self._action(self.shadow), methods=["POST"]),
            Route("/budgets/amount", self._action(self.amount), methods=["POST"]),
            Route("/keys", self._page(self.keys)),
            Route("/keys", self._action(self.create_key), methods=["POST"]),
            Route("/keys/{key_id}/revoke", self._action(self.revoke_key), methods=["POST"]),
            Route("/recommendations", self._page(self.recommendations)),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.app = Starlette(routes=routes, exception_handlers={
            404: self._not_found, 405: self._not_found})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._warming is None:  # the login page comes first: compile the rest meanwhile
            self._warming = asyncio.get_running_loop().run_in_executor(None, self._compile)

        async def secured(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                path = scope.get("path", "")
                for name, value in SECURITY_HEADERS.items():
                    if name.encode() in names:
                        continue
                    if name == "cache-control" and "/static/" in path:
                        value = "public, max-age=3600"
                    headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secured)

    # -- plumbing ------------------------------------------------------------------------------

    def _compile(self) -> None:
        for name in self.env.list_templates(extensions=["html"]):
            self.env.get_template(name)

    def time(self, ts: float | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
        if ts is None:
            return "–"
        return datetime.fromtimestamp(ts, ZoneInfo(self.rt.config.server.timezone)
                                      ).strftime(fmt)

    def common(self, request: Request, page: Page | None) -> dict[str, Any]:
        """What every page's frame needs: who, the scope, the CSRF token, the time."""
        now = self.rt.clock.now()
        tz = self.rt.config.server.timezone
        scope = page.scope() if page else data.Scope()
        scope_params = {k: v for k, v in scope.as_dict().items()
                        if v and page is not None and page.who.is_admin}
        if scope.project:
            label = f"Project {scope.project}"
        elif scope.organization:
            label = f"Organization {scope.organization}"
        else:
            label = "All projects"
        month = datetime.fromtimestamp(now, ZoneInfo(tz)).strftime("%B %Y")
        return {
            "who": page.who if page else None, "csrf": page.csrf if page else "",
            "scope": scope, "scope_label": label, "month_label": month,
            "scope_qs": f"?{urlencode(scope_params)}" if scope_params else "",
            "tz": tz, "now": now, "time": self.time,
            "notice": page.notice() if page else None, "query": dict(request.query_params),
            "projects": sorted({*self.rt.config.projects, *([scope.project] if scope.project
                                                             else [])}),
            "path": request.url.path,
        }

    async def _who(self, request: Request) -> tuple[Principal, sessions.Session, str] | None:
        admin_key = admin_key_for(self.rt.config)
        if admin_key is None:
            return None
        session = sessions.decode(admin_key, request.cookies.get(sessions.COOKIE),
                                  self.rt.clock.now())
        if session is None:
            return None
        if session.role == "admin":
            return Principal(role="admin", via="session"), session, admin_key
        record = await active_key(self.rt, key_id=session.key_id)
        if record is None or record.project != session.project:
            return None
        return (Principal(role="project", via="session", organization=record.organization,
                          project=record.project, key_id=record.id), session, admin_key)

    def _login_redirect(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{BASE}/login?{urlencode({'next': target})}", 303)

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            found = await self._who(request)
            if found is None:
                return self._login_redirect(request)
            page = Page(self, request, *found)
            try:
                return await handler(page)
            except ApiError as err:
                return self._error(request, err.status, err.message, page)

        return serve

    def _action(self, handler: Callable[[Page, dict[str, str]], Awaitable[Response]],
                admin_only: bool = True) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            found = await self._who(request)
            if found is None:
                return self._login_redirect(request)
            page = Page(self, request, *found)
            form = await _form(request)
            if not sessions.csrf_ok(page.admin_key, page.session, form.get("csrf")):
                return self._error(request, 403, "This form has expired or did not come from "
                                                 "this dashboard (CSRF check failed). Reload "
                                                 "the page and try again.", page)
            if admin_only and not page.who.is_admin:
                return self._error(request, 403, "A project key has read-only access: log in "
                                                 "with the admin key to change anything.",
                                   page)
            try:
                return await handler(page, form)
            except ApiError as err:
                return self._error(request, err.status, err.message, page)

        return serve

    def _error(self, request: Request, status: int, message: str,
               page: Page | None = None) -> Response:
        html = self.env.get_template("error.html").render(
            **self.common(request, page), status=status, active="", json_url=None,
            message=message.removeprefix("tokenstile: "))
        return HTMLResponse(html, status_code=status)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        found = await self._who(request)
        page = Page(self, request, *found) if found else None
        return self._error(request, status, "There is no such page.", page)

    def _call(self, page: Page, params: dict[str, str], body: BaseModel | None = None) -> Call:
        return Call(page.request, self.rt, page.who, params, parsed_body=body)

    # -- login -------------------------------------------------------------------------------

    async def login_form(self, request: Request, error: str | None = None,
                         status: int = 200) -> Response:
        admin_key = admin_key_for(self.rt.config)
        nonce = request.cookies.get(sessions.LOGIN_COOKIE) or sessions.new_login_nonce()
        html = self.env.get_template("login.html").render(
            disabled=admin_key is None, error=error,
            token=sessions.login_token(admin_key, nonce) if admin_key else "",
            next=_safe_next(request.query_params.get("next")))
        response = HTMLResponse(html, status_code=status)
        response.set_cookie(sessions.LOGIN_COOKIE, nonce, max_age=sessions.LOGIN_S,
                            path=BASE, httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def login(self, request: Request) -> Response:
        admin_key = admin_key_for(self.rt.config)
        form = await _form(request)
        if admin_key is None:
            return await self.login_form(request, status=403)
        if not sessions.login_ok(admin_key, request.cookies.get(sessions.LOGIN_COOKIE),
                                 form.get("csrf")):
            return await self.login_form(request, "The login form expired; please try again.",
                                         403)
        secret = form.get("key", "").strip()
        now = self.rt.clock.now()
        session: sessions.Session | None = None
        if secret and hmac.compare_digest(secret.encode(), admin_key.encode()):
            session = sessions.new_session("admin", now)
        elif secret.startswith(KEY_PREFIX):
            record = await active_key(self.rt, secret=secret)
            if record is not None:
                session = sessions.new_session("project", now, key_id=record.id,
                                               organization=record.organization,
                                               project=record.project)
        if session is None:
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)
            return await self.login_form(
                request, "That key is not the admin key nor an active project key.", 401)
        response = RedirectResponse(_safe_next(form.get("next")), 303)
        response.set_cookie(sessions.COOKIE, sessions.encode(admin_key, session),
                            max_age=sessions.SESSION_S, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        response.delete_cookie(sessions.LOGIN_COOKIE, path=BASE)
        return response

    async def logout(self, page: Page, form: dict[str, str]) -> Response:
        response = RedirectResponse(f"{BASE}/login", 303)
        response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # -- pages ---------------------------------------------------------------------------------

    async def overview(self, page: Page) -> Response:
        context = page.context()
        view = await data.overview(context)
        return page.render("overview.html", "overview", _twin("/admin/dashboard", page),
                           view=view, burn=self._burn_charts(view),
                           metrics=await metrics.summary(context, "24h"),
                           method_label=_method(view["current_usage"]["projected_monthly"]))

    def _burn_charts(self, view: dict[str, Any]) -> dict[str, Any]:
        hourly = view["burn_rate"]["hourly"]
        daily = view["burn_rate"]["daily"]
        hour_cols = [charts.Column(
            label=item["bucket"].replace("T", " "), values=(item["cost_usd"],),
            tick=item["bucket"][11:16] if i % 6 == 0 else "")
            for i, item in enumerate(hourly)]
        day_cols = [charts.Column(
            label=item["bucket"], values=(item["cost_usd"],),
            projected=item["projected_cost_usd"],
            tick=item["bucket"][8:10] if i % 3 == 0 else "") for i, item in enumerate(daily)]
        spent = sum(i["cost_usd"] for i in hourly)
        busiest = max((i["cost_usd"] for i in hourly), default=0.0)
        return {
            "hourly": charts.columns_chart(
                hour_cols, title="Spend per hour, last 48 hours",
                description=f"{charts.money(spent)} over the last 48 hours; the busiest hour "
                            f"cost {charts.money(busiest)}"),
            "daily": charts.columns_chart(
                day_cols, title="Spend per day this month, with the forecast",
                description="Spend per day so far; hatched bars are the forecast for the "
                            "rest of today and the days to come."),
        }

    async def breakdown(self, page: Page) -> Response:
        q = page.request.query_params
        by = q.get("by", "project")
        if by not in data.DIMENSIONS:
            by = "project"
        range_name = q.get("range", "month")
        since, until = _date_param(q.get("since")), _date_param(q.get("until"), end=True)
        view = await data.breakdown(page.context(), by, range_name, since, until)
        labels = view["series"]["labels"]
        groups = view["series"]["groups"]
        every = max(1, len(labels) // 12)
        hourly = view["series"]["bucket"] == "hour"
        columns = [charts.Column(
            label=label.replace("T", " "),
            tick=(label[11:16] if hourly else label[5:]) if i % every == 0 else "",
            values=tuple(g["cost_usd"][i] for g in groups)) for i, label in enumerate(labels)]
        names = [_name(g["name"]) for g in groups]
        classes = [("c6" if g.get("other") else f"c{i % 6}") for i, g in enumerate(groups)]
        chart = charts.columns_chart(
            columns, title=f"Spend by {by} over time", series=names, series_classes=classes,
            width=1200.0, height=280.0,
            description=f"Spend per {'hour' if hourly else 'day'} for the largest {by} values, "
                        "stacked; the table below lists every value.")
        extra = {"by": by, "range": view["range"]}
        if view["range"] == "custom":
            extra |= {"since": q.get("since", ""), "until": q.get("until", "")}
        return page.render("breakdown.html", "breakdown",
                           _twin("/admin/dashboard/breakdown", page, extra), view=view,
                           chart=chart, legend=list(zip(names, classes, strict=True)), by=by,
                           dimensions=list(data.DIMENSIONS), ranges=data.RANGES)

    async def flagged(self, page: Page) -> Response:
        q = page.request.query_params
        kind = q.get("kind") or None
        if kind not in data.FLAG_KINDS:
            kind = None
        f = data.FlaggedFilter(kind=kind, project=q.get("project") or None,
                               user=q.get("user") or None, feature=q.get("feature") or None,
                               key_id=q.get("key_id") or None,
                               policy=(q.get("policy") or "").strip()[:200] or None,
                               range=q.get("range") or "30d",
                               limit=min(max(_int(q.get("limit"), 50), 1), 1000))
        view = await data.flagged(page.context(), f)
        extra = {k: v for k, v in (("kind", f.kind), ("user", f.user), ("feature", f.feature),
                                   ("key_id", f.key_id), ("policy", f.policy),
                                   ("range", view["range"]),
                                   ("limit", f.limit if f.limit != 50 else None)) if v}
        return page.render("flagged.html", "flagged",
                           _twin("/admin/dashboard/flagged", page, extra), view=view,
                           kinds=data.FLAG_KINDS, ranges=data.RANGES, filters=f)

    async def request_page(self, page: Page) -> Response:
        request_id = page.request.path_params["request_id"]
        found = await data.request_detail(page.context(), request_id)
        if found is None:
            raise ApiError(404, f"There is no request {request_id!r} here.", code="not_found")
        return page.render("request.html", "flagged",
                           _twin(f"/admin/dashboard/requests/{request_id}", page), item=found,
                           detail_json=_pretty(found.get("detail") or {}))

    async def budgets(self, page: Page) -> Response:
        view = await data.budgets(page.context())
        return page.render("budgets.html", "budgets", _twin("/admin/dashboard/budgets", page),
                           view=view)

    async def keys(self, page: Page, created: dict[str, Any] | None = None,
                   error: str | None = None, status: int = 200) -> Response:
        state = page.request.query_params.get("state", "all")
        state = state if state in ("active", "revoked", "expired", "all") else "all"
        view = await data.keys(page.context(), state)
        return page.render("keys.html", "keys", _twin("/admin/dashboard/keys", page,
                                                       {"state": state}),
                           status=status, view=view, created=created, error=error,
                           state=state, form=page.request.query_params)

    async def recommendations(self, page: Page) -> Response:
        days = min(max(_int(page.request.query_params.get("days"), data.RECOMMEND_DAYS), 1),
                   90)
        view = await data.recommendations(page.context(), days)
        return page.render("recommendations.html", "recommendations",
                           _twin("/admin/dashboard/recommendations", page, {"days": days}),
                           view=view, days=days)

    # -- changes -------------------------------------------------------------------------------

    async def switch(self, page: Page, form: dict[str, str]) -> Response:
        scope, name = form.get("scope", ""), form.get("name", "")
        params = {"scope": scope, "name": name}
        what = f"{scope.capitalize()} {name}"
        if form.get("action") == "reset":
            await override_api.delete_switch(self._call(page, params))
            return _done(form, "switch_reset", what)
        enabled = form.get("enabled") == "true"
        body = _model(SwitchBody, {"enabled": enabled, "reason": form.get("reason") or None})
        await override_api.set_switch(self._call(page, params, body))
        return _done(form, "switch_on" if enabled else "switch_off", what)

    async def shadow(self, page: Page, form: dict[str, str]) -> Response:
        name = form.get("name", "")
        if form.get("action") == "reset":
            await override_api.delete_shadow(self._call(page, {"name": name}))
            return _done(form, "shadow_reset", name)
        shadow = form.get("shadow") == "true"
        await override_api.set_shadow(self._call(page, {"name": name},
                                                 _model(ShadowBody, {"shadow": shadow})))
        return _done(form, "shadow_on" if shadow else "shadow_off", name)

    async def amount(self, page: Page, form: dict[str, str]) -> Response:
        name = form.get("name", "")
        if form.get("action") == "reset":
            await override_api.delete_limit_amount(self._call(page, {"name": name}))
            return _done(form, "amount_reset", name)
        try:
            amount = float(form.get("amount", "").replace(",", "").replace("$", ""))
        except ValueError:
            raise ApiError(422, "the amount must be a number", code="invalid_body") from None
        body = _model(AmountBody, {"amount": amount})
        await override_api.set_limit_amount(self._call(page, {"name": name}, body))
        return _done(form, "amount_set", name)

    async def create_key(self, page: Page, form: dict[str, str]) -> Response:
        fields = {name: form[name].strip() for name in ("project", "user", "name", "feature",
                                                        "team", "tier")
                  if form.get(name, "").strip()}
        if form.get("expires_at", "").strip():
            when = _date_param(form["expires_at"].strip(), end=True)
            if when is None:
                return await self.keys(page, error="The expiry must be a date (YYYY-MM-DD).",
                                       status=422)
            fields["expires_at"] = datetime.fromtimestamp(when, UTC).isoformat()
        try:
            body = KeyCreate.model_validate(fields)
            created = await key_api.create_key(self._call(page, {}, body))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors(include_url=False, include_input=False))
            return await self.keys(page, error=f"The key was not created: {problems}",
                                   status=422)
        except ApiError as err:
            return await self.keys(page, error=err.message.removeprefix("tokenstile: "),
                                   status=err.status)
        return await self.keys(page, created=created, status=201)

    async def revoke_key(self, page: Page, form: dict[str, str]) -> Response:
        key_id = page.request.path_params["key_id"]
        await key_api.revoke_key(self._call(page, {"key_id": key_id}))
        return _done(form, "revoked", key_id, f"{BASE}/keys")


# --- helpers ----------------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the only kind these pages send), first value of each field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ApiError(413, "the form is too large", code="too_large")
    out: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        out.setdefault(name, value)
    return out


def _model(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors(include_url=False,
                                                          include_input=False))
        raise ApiError(422, problems, code="invalid_body") from None


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: never another site (no open redirect)."""
    if target and target.startswith(BASE) and not target.startswith("//") and \
            "\\" not in target and "\n" not in target and "\r" not in target:
        return target
    return BASE + "/"


def _done(form: dict[str, str], code: str, what: str, default: str | None = None) -> Response:
    target = _safe_next(form.get("next") or default)
    path, _, query = target.partition("?")
    params = [(k, v) for k, v in parse_qsl(query) if k not in ("done", "what")]
    params += [("done", code), ("what", what)]
    return RedirectResponse(f"{path}?{urlencode(params)}", 303)


def _twin(path: str, page: Page, extra: dict[str, Any] | None = None) -> str:
    params = {k: v for k, v in page.scope().as_dict().items() if v and page.who.is_admin}
    params.update({k: v for k, v in (extra or {}).items() if v is not None})
    return path + (f"?{urlencode(params)}" if params else "")


def _qs(query: dict[str, str], **changes: Any) -> str:
    """The page's query string with some parameters changed (None removes one)."""
    params = {k: v for k, v in query.items() if k not in ("done", "what")}
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = str(value)
    return urlencode(params)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _date_param(value: str | None, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (a whole UTC day; its end when ``end``) or an ISO time → Unix seconds."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ts = when.timestamp()
    if end and len(value) == 10:
        ts += 86400
    return ts


def _method(projected: dict[str, Any]) -> str:
    """The forecast method in words (``damped-trend+weekday`` → trend, weekly rhythm)."""
    method = str(projected.get("method") or "")
    words = {"level": "steady daily burn", "damped-trend": "trend in daily burn",
             "damped-growth": "growth in daily burn", "run-rate": "today's run rate",
             "straight-line": "the month's average day"}
    base, _, extra = method.partition("+")
    text = words.get(base, base or "forecast")
    return f"from {text}" + (", with the weekly rhythm" if extra == "weekday" else "")


def _name(value: Any) -> str:
    return "(none)" if value is None else str(value)


def _pretty(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


class Elsewhere:
    """``app`` as the public listener serves it: absent when the admin API has its own
    address (the dashboard goes with it)."""

    def __init__(self, rt: Runtime, app: Any) -> None:
        self.rt = rt
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.rt.config.server.admin_port is not None:
            response = Response("tokenstile: the dashboard is served on the admin address "
                                "(server.admin_host:server.admin_port), not here\n", 404,
                                media_type="text/plain")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def dashboard_routes(rt: Runtime, public: bool) -> list[BaseRoute]:
    """``/dashboard`` and ``/api/dashboard``; on the public listener they step aside when
    the admin API has an address of its own."""
    from tokenstile.admin.dashboard_api import api_routes

    web: Any = DashboardWeb(rt)
    api: BaseRoute = api_routes(rt)[0]
    if public:
        web = Elsewhere(rt, web)
        api = Route("/api/dashboard", Elsewhere(rt, api_routes(rt)[0].app),
                    methods=["GET", "HEAD"])
    return [Route(BASE, lambda request: RedirectResponse(BASE + "/", 307)),
            Mount(BASE, app=web), api]
