"""The ASGI application: proxy routes go straight to the gateway (plain ASGI, no framework on
the hot path); everything else (health, metrics, models, admin, dashboard) is Starlette."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tokenstile import __version__
from tokenstile.admin.api import AdminMount
from tokenstile.admin.dashboard import dashboard_routes
from tokenstile.admin.listener import start_admin_listener
from tokenstile.clock import SYSTEM_CLOCK, Clock
from tokenstile.config import Config, load_config
from tokenstile.errors import GatewayError, render_error
from tokenstile.gateway.asgi import Receive, Scope, Send
from tokenstile.gateway.assemble import CurrentGateway
from tokenstile.gateway.batch_routes import PREFIXES as BATCH_PREFIXES
from tokenstile.gateway.batch_routes import BatchRoutes
from tokenstile.gateway.response_routes import PREFIX as RESPONSES_PREFIX
from tokenstile.gateway.response_routes import ResponseRoutes
from tokenstile.gateway.runtime import Runtime
from tokenstile.gateway.upstream import upstream_headers, upstream_url
from tokenstile.price_watch import watch_prices
from tokenstile.providers.models import model_item, model_list, openai_entries
from tokenstile.providers.titan import is_titan_embedding
from tokenstile.reconcile.exposure import DriftGauges
from tokenstile.stores.counters import StoreUnavailable
from tokenstile.types import ApiKind, WireFormat

log = logging.getLogger("tokenstile")

READY_PROBE_S = 1.5

PROXY_ROUTES: dict[str, tuple[ApiKind, WireFormat]] = {
    "/v1/chat/completions": ("chat", "openai"),
    "/v1/completions": ("completions", "openai"),
    "/v1/embeddings": ("embeddings", "openai"),
    "/v1/responses": ("responses", "openai"),
    "/v1/messages": ("messages", "anthropic"),
    "/v1/messages/count_tokens": ("count_tokens", "anthropic"),
    "/v1/moderations": ("moderations", "openai"),
    "/v1/images/generations": ("images", "openai"),
    "/v1/images/edits": ("image_edits", "openai"),
    "/v1/audio/transcriptions": ("transcriptions", "openai"),
    "/v1/audio/speech": ("speech", "openai"),
    "/v1/files": ("files", "openai"),
    "/v1/batches": ("batches", "openai"),
}


# Bedrock's runtime API: POST /model/{modelId}/{action} -> (api, streamed).
BEDROCK_PREFIX = "/model/"
BEDROCK_ROUTES: dict[str, tuple[ApiKind, bool]] = {
    "converse": ("converse", False),
    "converse-stream": ("converse", True),
    "invoke": ("messages", False),
    "invoke-with-response-stream": ("messages", True),
    "count-tokens": ("count_tokens", False),
}


# Gemini's API: POST /v1beta/models/{model}:{method} (also /v1/) -> (api, streamed).
GEMINI_MODELS = ("/v1beta/models/", "/v1/models/")
GEMINI_ROUTES: dict[str, tuple[ApiKind, bool]] = {
    "generateContent": ("generate_content", False),
    "streamGenerateContent": ("generate_content", True),
    "countTokens": ("count_tokens", False),
    "embedContent": ("embed_content", False),
    "batchEmbedContents": ("batch_embed_contents", False),
}


class TokenstileApp:
    """Dispatches proxy POSTs to the gateway and the rest to a Starlette app."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.gateway = CurrentGateway(runtime)
        self.responses = ResponseRoutes(runtime)
        self.batch_routes = BatchRoutes(runtime)
        self.web = _web_app(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = PROXY_ROUTES.get(scope["path"])
            if route is not None and scope["method"] == "POST":
                await self.gateway.get().handle(route[0], route[1], scope, receive, send)
                return
            if scope["path"].startswith(RESPONSES_PREFIX):
                await self.responses.handle(scope, receive, send)
                return
            if scope["path"].startswith(BATCH_PREFIXES):
                await self.batch_routes.handle(scope, receive, send)
                return
            if scope["path"].startswith(BEDROCK_PREFIX):
                await self._bedrock(scope, receive, send)
                return
            if scope["path"].startswith("/v1beta/") or (
                    scope["path"].startswith("/v1/models/")
                    and scope["path"].rpartition(":")[2] in GEMINI_ROUTES):
                # (an OpenAI model id may hold a colon too: GET /v1/models/ft:gpt-4o:…)
                await self._gemini(scope, receive, send)
                return
        await self.web(scope, receive, send)

    async def _gemini(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1beta/models/{model}:{method}``; the tokenstile key in ``x-goog-api-key``
        or, as Google also takes it, in ``?key=`` (moved into the header here)."""
        path: str = scope["path"]
        model, colon, method = path.partition("/models/")[2].rpartition(":")
        route = GEMINI_ROUTES.get(method) if colon and path.startswith(GEMINI_MODELS) \
            else None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if route is None or not model or "/" in model:
            err = GatewayError(404, f"unknown route {scope['method']} {path}; Gemini routes "
                               "are POST /v1beta/models/{model}:generateContent, "
                               ":streamGenerateContent?alt=sse, :countTokens, "
                               ":embedContent and :batchEmbedContents",
                               code="unknown_route")
        elif scope["method"] != "POST":
            err = GatewayError(405, f"{path} accepts POST, not {scope['method']}",
                               code="method_not_allowed", headers={"allow": "POST"})
        elif route[1] and query.get("alt") != ["sse"]:
            err = GatewayError(400, "streamGenerateContent is served as server-sent events "
                               "only: add ?alt=sse to the URL (the google-genai SDK does)",
                               param="alt")
        else:
            keys = query.get("key")
            if keys and not any(name == b"x-goog-api-key" for name, _ in scope["headers"]):
                scope = {**scope, "headers": [*scope["headers"],
                                              (b"x-goog-api-key", keys[0].encode())]}
            await self.gateway.get().handle(route[0], "gemini", scope, receive, send,
                                            {"model": model, "stream": route[1]})
            return
        response = _error("gemini", err)
        await response(scope, receive, send)

    async def _bedrock(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /model/{modelId}/{action}``: the model id as boto3 encodes it in the path
        (an ARN's ``/`` included), the action naming the API and whether it streams."""
        route, model = bedrock_route(scope.get("raw_path") or scope["path"].encode())
        if route is None or not model:
            err = GatewayError(404, f"unknown route {scope['method']} {scope['path']}; Bedrock "
                               "routes are POST /model/{modelId}/converse, converse-stream, "
                               "invoke, invoke-with-response-stream and count-tokens",
                               code="unknown_route")
        elif scope["method"] != "POST":
            err = GatewayError(405, f"{scope['path']} accepts POST, not {scope['method']}",
                               code="method_not_allowed", headers={"allow": "POST"})
        else:
            await self.gateway.get().handle(route[0], "bedrock", scope, receive, send,
                                            {"model": model, "stream": route[1]})
            return
        response = _error("bedrock", err)
        await response(scope, receive, send)


def bedrock_route(raw_path: bytes) -> tuple[tuple[ApiKind, bool] | None, str]:
    """(the API and whether it streams, the model id) of a Bedrock path. An application
    calls a handful, one per model and action: each is worked out once (paths of a
    reasonable length only, so that strangers cannot fill the cache with large ones)."""
    return _known_bedrock_route(raw_path) if len(raw_path) <= 512 else \
        _bedrock_route(raw_path)


def _bedrock_route(raw_path: bytes) -> tuple[tuple[ApiKind, bool] | None, str]:
    encoded, _, action = raw_path[len(BEDROCK_PREFIX):].partition(b"?")[0].rpartition(b"/")
    route = BEDROCK_ROUTES.get(action.decode("latin-1"))
    model = unquote(encoded.decode("latin-1"))
    if route is not None and route[0] == "messages" and is_titan_embedding(model):
        route = ("embeddings", route[1])  # InvokeModel of a Titan embedding model
    return route, model


_known_bedrock_route = lru_cache(maxsize=1024)(_bedrock_route)


def _wire_for(path: str) -> WireFormat:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def _error(wire: WireFormat, err: GatewayError) -> Response:
    return Response(err.body(wire), status_code=err.status, media_type="application/json",
                    headers=err.headers_for(wire))


def _web_app(app: TokenstileApp) -> Starlette:
    rt = app.runtime
    drift_gauges = DriftGauges(rt)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await rt.start()
        # a routed model whose price changed since last time: an alert
        await watch_prices(rt.config, rt.clock, rt.alerts)
        admin_listener = await start_admin_listener(rt)
        try:
            yield
        finally:
            if admin_listener is not None:
                await admin_listener.stop()
            await rt.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(request: Request) -> Response:
        """Ready, or ``degraded`` naming the stores that are down. Still 200 when degraded:
        every request keeps getting a clear answer (fail-closed limits refuse with 503
        ``store_unavailable``, fail-open ones admit unmetered), and a load balancer taking
        every gateway out over a shared store would turn those into connection errors."""
        checks: dict[str, Any] = {}
        degraded: list[str] = []
        try:
            await asyncio.wait_for(rt.admission.probe(), READY_PROBE_S)
            checks["counters"] = rt.admission.store_status()
        except (StoreUnavailable, TimeoutError):
            degraded.append("counters")
            checks["counters"] = {**rt.admission.store_status(), "status": "unavailable"}
        checks["counters"]["store"] = rt.counters.url.partition(":")[0]
        checks["ledger_backlog"] = rt.ledger.backlog
        checks["ledger"] = rt.ledger.stats()
        checks["config"] = rt.config_status()
        return JSONResponse({"status": "degraded" if degraded else "ready",
                             "degraded": degraded, "checks": checks})

    async def metrics(request: Request) -> Response:
        rt.metrics.ledger_backlog.set(rt.ledger.backlog)
        rt.metrics.queue_depth.set(rt.degrader.pacer.depth)
        await drift_gauges.refresh()
        rt.metrics.queue_depth_total.set(rt.degrader.pacer.total_depth())
        return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")

    async def catalog(provider_key: str | None, wire: WireFormat) -> list[dict[str, Any]]:
        """What the upstreams list, merged, plus the exact model names of the routes."""
        fetches = []
        for name, upstream in rt.router.upstreams.items():
            if upstream.kind in ("bedrock", "gemini"):
                continue  # lists no models in OpenAI's shape; routes name them
            upstream_wire: WireFormat = "anthropic" if upstream.kind == "anthropic" \
                else "openai"
            # A caller's own provider key goes only to its own provider's upstreams.
            if provider_key is not None and upstream_wire != wire:
                continue
            if not (provider_key or upstream.api_key):
                continue
            url = upstream_url(upstream, "models")
            if upstream_wire == "anthropic":
                url += "?limit=1000"
            fetches.append((name, rt.upstream.get_json(
                name, upstream, url, upstream_headers(upstream, {}, provider_key))))
        answers = await asyncio.gather(*(fetch for _, fetch in fetches))
        listed: dict[str, dict[str, Any]] = {}
        for (name, _), answer in zip(fetches, answers, strict=True):
            for item in openai_entries(answer, name):
                listed.setdefault(item["id"], item)
        for route in rt.config.routes:
            if not any(ch in route.match for ch in "*?["):
                listed.setdefault(route.match, {"id": route.match, "object": "model",
                                                "created": 0, "owned_by": route.upstream})
        return [item for _, item in sorted(listed.items())]

    async def models(request: Request) -> Response:
        """``GET /v1/models`` (and one model by id), in the shape of the SDK that asks: the
        ``anthropic`` SDK sends ``anthropic-version``."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        wire: WireFormat = "anthropic" if "anthropic-version" in headers else "openai"
        try:
            caller, provider_key = await rt.auth.authenticate(headers)
        except GatewayError as err:
            return _error(wire, err)
        from fnmatch import fnmatchcase

        allowed = caller.allowed_models
        entries = [item for item in await catalog(provider_key, wire)
                   if not allowed or any(fnmatchcase(item["id"], p) for p in allowed)]
        model_id = request.path_params.get("model_id")
        if model_id is None:
            return JSONResponse(model_list(wire, entries))
        found = next((item for item in entries if item["id"] == model_id), None)
        if found is None:
            body = render_error(wire, 404, f"tokenstile: no model {model_id!r} is available "
                                "to this key", code="model_not_found")
            return Response(body, status_code=404, media_type="application/json")
        return JSONResponse(model_item(wire, found))

    async def unknown_v1(request: Request) -> Response:
        path = request.url.path
        wire = _wire_for(path)
        if path in PROXY_ROUTES:
            body = render_error(wire, 405, f"tokenstile: {path} accepts POST, not "
                                f"{request.method}", code="method_not_allowed")
            return Response(body, status_code=405, media_type="application/json",
                            headers={"allow": "POST"})
        body = render_error(wire, 404, f"tokenstile: unknown route {request.method} {path}; "
                            "see the README for the routes tokenstile serves",
                            code="unknown_route")
        return Response(body, status_code=404, media_type="application/json")

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/models/{model_id:path}", models),
        AdminMount(rt),
        *dashboard_routes(rt, public=True),
        Route("/v1/{rest:path}", unknown_v1,
              methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def create_app(config: Config | None = None, *, clock: Clock = SYSTEM_CLOCK,
               runtime: Runtime | None = None) -> TokenstileApp:
    if runtime is None:
        runtime = Runtime.build(config or load_config(), clock=clock)
    return TokenstileApp(runtime)


def create_app_from_env() -> TokenstileApp:
    """Factory for ``uvicorn --factory`` and worker processes: config from the environment."""
    app = create_app(load_config())
    app.runtime.config_path = os.environ.get("TOKENSTILE_CONFIG") or None
    app.runtime.tune_gc = True  # a served worker: its startup stays alive, requests churn
    return app
