"""Intake: from the bytes a client sent to a request the gateway understands.

Read the body within its bounds, authenticate, parse it as JSON (or as a form, for the APIs
that take files) and as the API it was sent to, attribute it (feature, tags, trace id),
check the key may use the model and that no switch turned it off, and count its input.
Everything a stranger can get wrong is refused here, in the provider's error shape, before
anything is reserved.
"""

from __future__ import annotations

import asyncio
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from tokenstile import tokens
from tokenstile.errors import bad_request, forbidden
from tokenstile.gateway import asgi
from tokenstile.limits.runs import looser_than_config, read_run
from tokenstile.providers import media
from tokenstile.providers.media import FORM_APIS
from tokenstile.providers.multipart import parse_form
from tokenstile.types import Arrival, CanonicalRequest, RequestContext, WireFormat

if TYPE_CHECKING:
    from tokenstile.config import RunsConfig, ServerConfig
    from tokenstile.gateway.auth import Authenticator
    from tokenstile.gateway.batches import Batches
    from tokenstile.limits.overrides import Overrides
    from tokenstile.providers.base import Adapter

# Largest output cap accepted: keeps every worst case (tokens, nano-USD) in 64 bits.
MAX_OUTPUT_CAP = 2**31 - 1


class Intake:
    def __init__(self, server: ServerConfig, auth: Authenticator,
                 adapters: dict[WireFormat, Adapter], overrides: Overrides,
                 runs: RunsConfig, batches: Batches) -> None:
        self.server = server
        self.auth = auth
        self.adapters = adapters
        self.overrides = overrides
        self.runs = runs
        self.batches = batches

    async def read(self, arrival: Arrival, receive: asgi.Receive) -> RequestContext:
        """The body, read within its bounds, from an authenticated caller, parsed."""
        server = self.server
        asgi.check_body_headers(arrival.headers, server.max_body_bytes)
        raw = await asgi.read_body(receive, server.max_body_bytes, server.body_timeout_s)
        arrival.caller, arrival.provider_key = await self.auth.authenticate(arrival.headers)
        adapter = self.adapters[arrival.wire]
        if arrival.api in FORM_APIS:  # image edits, transcriptions, file uploads
            fields, files = parse_form(raw, arrival.headers.get("content-type"))
            req = self.batches.parse_upload(fields, files) if arrival.api == "files" \
                else media.parse(arrival.api, fields, files)
        else:
            if not raw and "upgrade" in arrival.headers:
                # httptools stops reading at an upgrade: the body never reaches the app.
                raise bad_request("the request asks to upgrade the connection (Upgrade: "
                                  f"{arrival.headers['upgrade'][:40]!r}), which this gateway "
                                  "does not serve, so its body was not read; send it "
                                  "without the Upgrade header", code="invalid_json")
            body = parse_json_object(raw, server.max_json_depth,
                                     arrival.headers.get("content-type"))
            if arrival.route_fields:
                body.update(arrival.route_fields)
            check_message_count(body, server.max_messages)
            req = await self.batches.parse_create(body, arrival.caller) \
                if arrival.api == "batches" else adapter.parse(arrival.api, body)
        if not tokens.tokenizer_ready(req.model):  # the first call of its encoding
            await asyncio.to_thread(tokens.load_tokenizer, req.model)
        ctx = RequestContext.begin(arrival, arrival.caller, req)
        # A background response (and a batch) is billed when it ends, so crash recovery
        # must know.
        ctx.background = (req.api == "responses" and req.body.get("background") is True) \
            or req.api == "batches"
        return ctx

    def check(self, ctx: RequestContext) -> None:
        """Attribute the request, refuse what this caller may not ask, count its input."""
        check_output_cap(ctx.req)
        attribute(ctx)
        attribute_run(ctx, self.runs)
        check_model_access(ctx)
        self.overrides.check(ctx)
        ctx.req.input_tokens = self.adapters[ctx.wire].count_input(ctx.req)


def parse_json_object(raw: bytes, max_depth: int,
                      content_type: str | None = None) -> dict[str, Any]:
    if not raw.strip():
        raise bad_request("the request body is empty; expected a JSON object",
                          code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        sent = (content_type or "").partition(";")[0].strip().lower()
        hint = f"; it was sent as {sent[:60]!r}, expected application/json" if sent and \
            not sent.endswith("json") else ""
        raise bad_request(f"the request body is not valid JSON ({exc.msg} at position "
                          f"{exc.pos}){hint}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got "
                          f"{type(body).__name__}", code="invalid_json")
    if json_depth(body, max_depth) > max_depth:
        raise bad_request(f"the request body is nested deeper than {max_depth} levels",
                          code="json_too_deep")
    return body


def json_depth(node: Any, limit: int) -> int:
    """Depth of a JSON tree, stopping as soon as ``limit`` is passed."""
    depth = 0
    level: list[Any] = [node]
    while level and depth <= limit:
        depth += 1
        following: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                following.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                following.extend(v for v in item if isinstance(v, dict | list))
        level = following
    return depth


def check_message_count(body: dict[str, Any], limit: int) -> None:
    """``server.max_messages`` bounds every list a request is made of, before any of them
    is parsed or counted."""
    for name in ("messages", "input", "prompt", "contents", "requests"):
        items = body.get(name)
        if isinstance(items, list) and len(items) > limit:
            raise bad_request(f"'{name}' has {len(items):,} items; this gateway accepts at "
                              f"most {limit:,} (server.max_messages)", param=name,
                              code="too_many_messages")


def check_output_cap(req: CanonicalRequest) -> None:
    """No model writes billions of tokens; a cap past ``MAX_OUTPUT_CAP`` (``max_tokens`` times
    ``n``) is refused before its worst case is priced and sent to the counter store."""
    if req.output_cap is not None and req.output_cap > MAX_OUTPUT_CAP:
        name = req.output_cap_field or "max_tokens"
        raise bad_request(f"the output cap ('{name}', times 'n' when given) is "
                          f"{req.output_cap:,} tokens; at most {MAX_OUTPUT_CAP:,} is accepted",
                          param=name)


def attribute(ctx: RequestContext) -> None:
    """Feature, tags and trace id from headers; the key's own binding wins for feature."""
    req, headers = ctx.req, ctx.headers
    req.feature = ctx.caller.feature or headers.get("x-tokenstile-feature") or None
    raw_tags = headers.get("x-tokenstile-tags")
    if raw_tags:
        for pair in raw_tags.split(",")[:32]:
            name, sep, value = pair.partition("=")
            if sep and name.strip():
                req.tags[name.strip()[:64]] = value.strip()[:256]
    trace = headers.get("x-tokenstile-trace-id") or headers.get("x-usagepanda-trace-id")
    req.trace_id = trace[:128] if trace else None


def attribute_run(ctx: RequestContext, runs: RunsConfig) -> None:
    """The agent run or session the request belongs to (``limits/runs.py``); a budget
    header above the configured run budget changes nothing and is flagged."""
    req = ctx.req
    req.run, req.run_budget = read_run(ctx.headers, runs)
    if req.run_budget is not None and looser_than_config(req.run_budget, runs):
        ctx.flags.append("run_budget_header_ignored")


def check_model_access(ctx: RequestContext) -> None:
    allowed = ctx.caller.allowed_models
    if allowed and not any(fnmatchcase(ctx.req.model, pattern) for pattern in allowed):
        ctx.block_reason = "model_not_allowed"
        raise forbidden(f"this key may not use the model {ctx.req.model!r}; it may use "
                        f"{', '.join(allowed)}", code="model_not_allowed")
