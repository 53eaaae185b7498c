"""A lean, fast fake of the OpenAI, Anthropic, AWS Bedrock and Gemini HTTP APIs, for tests,
demos and benchmarks.

Why it exists: the gateway must be tested against real HTTP (the official SDKs on one side,
its upstream client on the other) with exact, known token usage and scriptable failures,
and benchmarked against a baseline that costs almost nothing. It is a raw ASGI app (no
framework on the hot path, orjson for JSON) meant to run under uvicorn with uvloop and
httptools.

Replies are words of a 16-word vocabulary, each one o200k_base token, so usage is exact.
Input tokens are counted with o200k_base plus OpenAI's chat overhead: that count is the
truth the gateway must bill from, whatever it estimated.

Failures are scripted by directives in the last user message, e.g. ``[[fake:status=429,
retry_after=2]]`` or ``[[fake:cut_after=5]]`` (see ``Directives``), by server-wide
defaults, or by a queue of per-request behaviours (``FakeUpstream.script``).

Bedrock's runtime API (Converse, ConverseStream, InvokeModel and its stream for Claude),
with SigV4 checked by botocore, is in ``_fake_bedrock``; Gemini's API (generateContent, its
SSE stream, countTokens) in ``_fake_gemini``.

Responses are stored (``previous_response_id`` bills the earlier turns as input, ``GET``,
``DELETE`` and ``input_items`` work), and ``background: true`` runs in the background with
a completion tests control (see ``_fake_responses``).

Run as a process: ``python -m tokenstile.testing.fake_upstream --port N``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import contextvars
import itertools
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

from tokenstile.errors import GatewayError
from tokenstile.providers.multipart import parse_form

from . import _fake_batches, _fake_media
from ._fake_bedrock import BedrockRoutes, error_headers
from ._fake_core import (
    NORMAL,
    DirectiveError,
    Directives,
    count_anthropic_input,
    count_format,
    count_messages,
    count_prompt,
    count_responses_input,
    count_text,
    count_tools,
    directive_layer,
    embedding_vector,
    first_int,
    last_prompt_text,
    last_user_text,
    parse_directives,
    plan_reply,
    reply_text,
)
from ._fake_gemini import GeminiRoutes, google_error
from ._fake_http import Receive, Scope, Send, _Req, is_gemini
from ._fake_reports import REPORTS, Drift, admin_key_ok
from ._fake_responses import ResponseStore, StoredResponse
from ._fake_state import DEFAULT_MODELS, FakeRecord, FakeSettings, Tally
from ._fake_wire import (
    StreamParts,
    Turn,
    anthropic_error,
    anthropic_message,
    anthropic_stream,
    chat_body,
    chat_stream,
    completion_body,
    completion_stream,
    openai_error,
    responses_body,
    responses_stream,
)
from .server_thread import RunningServer, bind_socket, http_url, start_in_thread

__all__ = [
    "DEFAULT_MODELS",
    "Directives",
    "FakeRecord",
    "FakeSettings",
    "FakeUpstream",
    "RunningServer",
    "Tally",
    "count_text",
    "main",
    "reply_text",
    "start_in_thread",
]

Json = dict[str, Any]
DirectiveSpec = str | Mapping[str, object] | Directives | None

# ---------------------------------------------------------------------------------------
# Per-request plumbing
# ---------------------------------------------------------------------------------------

# Set when the fake drops a connection on purpose, so uvicorn's "returned without
# completing response" error for that request is not logged (a ContextVar set inside the
# app is still visible when uvicorn logs, in the same per-request task).
_DELIBERATE_CUT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fake_upstream_cut", default=False
)


class _QuietDeliberateCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_DELIBERATE_CUT.get() and str(record.msg).startswith("ASGI callable"))


_filter_lock = threading.Lock()
_filter_installed = False


def _install_log_filter() -> None:
    global _filter_installed
    with _filter_lock:
        if not _filter_installed:
            logging.getLogger("uvicorn.error").addFilter(_QuietDeliberateCuts())
            _filter_installed = True


_JSON_HEADERS = [(b"content-type", b"application/json")]
_FORM_ROUTES = frozenset({"/v1/images/edits", "/v1/audio/transcriptions", "/v1/files"})
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


_OPENAI_TIERS = frozenset({"default", "flex", "priority", "scale"})


def _served_tier(r: _Req) -> str:
    """The tier a real provider names in its answer when nothing else was scripted: the
    one asked for (OpenAI), else the standard one (``auto`` included)."""
    if r.anthropic:
        return "standard"
    asked = r.body.get("service_tier") if isinstance(r.body, dict) else None
    return asked if isinstance(asked, str) and asked in _OPENAI_TIERS else "default"


def _wants_usage(body: Json) -> bool:
    """Whether a streamed OpenAI request asks for the final usage chunk
    (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client left first."""
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _anthropic_format(body: Json) -> object:
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        return config["format"]
    return body.get("output_format")


_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
_IMAGE_CATEGORIES = frozenset({
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "violence",
    "violence/graphic",
})

# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------


class FakeUpstream:
    """The fake OpenAI + Anthropic + Bedrock + Gemini server: settings, a tally, and
    ``app`` (ASGI)."""

    def __init__(self, settings: FakeSettings | None = None, **overrides: Any) -> None:
        self.settings = settings or FakeSettings()
        for key, value in overrides.items():
            if key == "defaults":
                value = directive_layer(value)
            setattr(self.settings, key, value)
        self.settings.defaults = directive_layer(self.settings.defaults)
        self.tally = Tally(self.settings.max_records)
        self.responses = ResponseStore(self._bill_background)
        self._script: deque[dict[str, object]] = deque()
        self.drifts: list[Drift] = []
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._bedrock = BedrockRoutes(self)
        self._gemini = GeminiRoutes(self)
        self._routes: dict[tuple[str, str], Callable[[_Req], Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("POST", "/v1/responses"): self._responses,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/moderations"): self._moderations,
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/messages/count_tokens"): self._count_tokens,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/images/generations"): self._media(_fake_media.images),
            ("POST", "/v1/images/edits"): self._media(_fake_media.images),
            ("POST", "/v1/audio/transcriptions"): self._media(_fake_media.transcriptions),
            ("POST", "/v1/audio/speech"): self._media(_fake_media.speech),
            ("POST", "/v1/files"): self._media(_fake_batches.upload),
            ("POST", "/v1/batches"): self._media(_fake_batches.create),
        }
        self.batches = _fake_batches.FakeBatches()
        self._batch_route = self._media(_fake_batches.resource)
        _install_log_filter()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._asgi(scope, receive, send)

        # A plain function, not a bound method: uvicorn's interface auto-detection takes a
        # bound method for ASGI2.
        self.app: Callable[[Scope, Receive, Send], Awaitable[None]] = app
        """The ASGI callable."""

    # -- control ------------------------------------------------------------------------

    def script(self, behaviours: Iterable[DirectiveSpec]) -> None:
        """Queue behaviours, one per upcoming model request (``None`` = behave normally).

        Each is directive text (``"[[fake:status=500]]"``), a mapping or ``Directives``;
        directives in the request text still win over a scripted entry.
        """
        layers = [directive_layer(b) for b in behaviours]
        self._script.extend(layers)

    def set_defaults(self, spec: DirectiveSpec) -> None:
        """Directives applied to every request (under script entries and request text)."""
        self.settings.defaults = directive_layer(spec)

    def seed_drift(self, model: str, *, provider: str = "openai", input_tokens: int = 0,
                   output_tokens: int = 0, usd: float = 0.0, day: int | str | None = None
                   ) -> None:
        """Make the admin usage and cost reports show usage the fake never served (a call
        that went around the gateway): on ``day`` (days since the epoch, or an ISO date;
        default the last day of the report)."""
        self.drifts.append(Drift.from_json({
            "provider": provider, "model": model, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "usd": usd, "day": day}))

    def reset(self) -> None:
        """Clear the tally, the script queue, seeded drift and stored responses (settings
        stay)."""
        self.drifts.clear()
        self._script.clear()
        self.responses.clear()
        self.batches.clear()
        self.tally.reset()

    def finish_background(self, response_id: str) -> bool:
        """Let a running background response complete now; False if there is none."""
        stored = self.responses.get(response_id)
        if stored is None or stored.terminal:
            return False
        self.responses.finish(stored)
        return True

    def finish_batch(self, batch_id: str, status: str = "completed",
                     lines: int | None = None) -> list[FakeRecord]:
        """End a batch (``_fake_batches``): its first ``lines`` lines (all by default)
        answered and billed, unless it ``failed``; returns the lines' tally records."""
        return _fake_batches.finish(self, batch_id, status, lines)

    def _bill_background(self, stored: StoredResponse) -> None:
        """A background response ended: the provider bills it now, once."""
        usage = stored.usage or {}
        details = usage.get("input_tokens_details") or {}
        out_details = usage.get("output_tokens_details") or {}
        turn = stored.turn
        self.tally.begin()
        self.tally.add(FakeRecord(
            request_id=turn.id, route="/v1/responses", method="BACKGROUND", model=turn.model,
            stream=stored.stream, status=200, outcome=stored.status,
            input_tokens=int(usage.get("input_tokens", 0)),
            output_tokens=int(usage.get("output_tokens", 0)),
            cached_tokens=int(details.get("cached_tokens", 0)),
            cache_write_tokens=int(details.get("cache_write_tokens", 0)),
            reasoning_tokens=int(out_details.get("reasoning_tokens", 0)),
            body=dict(turn.request) if self.settings.record_bodies else None,
            started_at=time.time()))

    @property
    def pending_script(self) -> int:
        return len(self._script)

    def serve(self, host: str = "127.0.0.1", port: int = 0, **config: Any) -> RunningServer:
        """A not-yet-started ``RunningServer`` for this fake (use ``with``)."""
        return RunningServer(self.app, host, port, **config)

    # -- ASGI ---------------------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):010d}"

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        if path.startswith("/_fake/"):
            await self._admin(scope, receive, send, path)
            return
        method: str = scope["method"]
        if method == "GET" and path in REPORTS:
            await self._report(scope, send, path)
            return
        handler = self._routes.get((method, path))
        if handler is None and method == "GET" and path.startswith("/v1/models/"):
            handler = self._model
        elif handler is None and path.startswith("/v1/responses/"):
            handler = self._response_route
        elif handler is None and path.startswith(("/v1/files/", "/v1/batches/")):
            handler = self._batch_route
        elif handler is None and path.startswith("/model/"):
            handler = self._bedrock.handle
        elif handler is None and is_gemini(path):
            handler = self._gemini.handle
        r = _Req(scope, receive, send, path, "req_" + self._new_id())
        self.tally.begin()
        try:
            require = self.settings.require_key
            if require is not None and r.api_key != require and not r.bedrock:
                if r.gemini:
                    await self._gemini.key_invalid(r)
                else:
                    await self._error(r, 401, self._auth_message(r))
                return
            if handler is None:
                known = any(p == path for _, p in self._routes)
                status = 405 if known else 404
                await self._error(r, status, f"Unknown request URL: {method} {path}.")
                return
            if method == "POST" and handler not in (self._response_route,
                                                    self._batch_route):
                raw = await _read_body(receive)
                if raw is None:
                    self._record(r, 0, "client_disconnected")
                    return
                r.raw = raw
                try:
                    if path in _FORM_ROUTES:
                        r.body, r.files = parse_form(raw, r.headers_value(b"content-type"))
                    else:
                        r.body = orjson.loads(raw)
                except (orjson.JSONDecodeError, GatewayError):
                    r.body = None
                if not isinstance(r.body, dict):
                    await self._error(r, 400, "We could not parse the JSON body of your request.")
                    return
                model = r.body.get("model")
                r.model = model if isinstance(model, str) else ""
                r.stream = r.body.get("stream") in (True, "true")  # forms send text
            await handler(r)
        finally:
            if r.watch is not None:
                r.watch.close()
            if not r.recorded:
                self._record(r, 0, "client_disconnected")

    def _media(self, handler: Callable[[FakeUpstream, _Req], Awaitable[None]]
               ) -> Callable[[_Req], Awaitable[None]]:
        async def serve(r: _Req) -> None:
            await handler(self, r)
        return serve

    def _record_media(self, r: _Req, units: dict[str, int], *, input_tokens: int = 0,
                      output_tokens: int = 0, input_audio_tokens: int = 0,
                      outcome: str = "completed") -> None:
        """A media answer (``_fake_media``): its token usage and the units it is billed by."""
        self._record(r, 200, outcome, output_tokens=output_tokens,
                     input_tokens=input_tokens, units=units,
                     input_audio_tokens=input_audio_tokens)

    @staticmethod
    def _deliberate_cut() -> None:
        """The connection is about to drop on purpose: uvicorn's complaint is not logged."""
        _DELIBERATE_CUT.set(True)

    async def _report(self, scope: Scope, send: Send, path: str) -> None:
        """An admin usage or cost report, from what was served (not itself recorded)."""
        provider, build = REPORTS[path]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        status = 200
        if not admin_key_ok(provider, headers):
            status = 401
            message = ("This endpoint requires an admin API key." if provider == "openai"
                       else "invalid x-api-key")
            payload: Json = openai_error(401, message) if provider == "openai" \
                else anthropic_error(401, message, "req_" + self._new_id())
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            try:
                payload = build(self.tally.records, list(self.drifts), query, time.time())
            except (ValueError, KeyError) as exc:
                status = 400
                payload = openai_error(400, f"invalid query: {exc}")
        data = orjson.dumps(payload)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    @staticmethod
    def _auth_message(r: _Req) -> str:
        if r.anthropic:
            return "invalid x-api-key"
        shown = (r.api_key or "")[:6]
        return f"Incorrect API key provided: {shown}***. You can find your API key elsewhere."

    # -- recording and sending ----------------------------------------------------------

    def _record(
        self,
        r: _Req,
        status: int,
        outcome: str,
        turn: Turn | None = None,
        output_tokens: int | None = None,
        input_tokens: int = 0,
        units: dict[str, int] | None = None,
        input_audio_tokens: int = 0,
    ) -> None:
        if r.recorded:
            return
        r.recorded = True
        rec = FakeRecord(
            request_id=r.rid,
            route=r.route,
            method=r.method,
            model=r.model,
            stream=r.stream,
            status=status,
            outcome=outcome,
            api_key=r.api_key,
            directives=r.directives.as_dict() if r.directives is not NORMAL else {},
            raw_headers=r.raw_headers,
            body=r.body if self.settings.record_bodies else None,
            input_tokens=input_tokens,
            output_tokens=(output_tokens or 0) if turn is None else 0,
            input_audio_tokens=input_audio_tokens,
            units=dict(units or {}),
            started_at=r.started_wall,
            duration_ms=(time.perf_counter() - r.started) * 1000.0,
        )
        if turn is not None and r.background is not None:
            # A streamed background response: billed when it ends (now: its stream is
            # over, and if it was cut the provider still finishes it), not per request.
            self.tally.add(rec)
            self.responses.finish(r.background)
            return
        if turn is not None:
            rec.input_tokens = turn.input_tokens
            rec.cached_tokens = turn.cached_tokens
            rec.cache_write_tokens = turn.cache_write_tokens
            rec.reasoning_tokens = turn.reply.reasoning_tokens
            rec.output_tokens = turn.output_tokens if output_tokens is None else output_tokens
            if turn.reply.show_reasoning:  # a cut stream shows it first, as it goes
                rec.reasoning_tokens = min(rec.reasoning_tokens, rec.output_tokens)
            rec.cache_write_1h_tokens = turn.cache_write_1h_tokens
            rec.input_audio_tokens = turn.input_audio_tokens
            rec.output_audio_tokens = turn.reply.audio_tokens
            rec.cached_audio_tokens = turn.cached_audio_tokens
            rec.web_searches = turn.web_searches
            rec.web_fetches = turn.web_fetches
            rec.file_searches = turn.file_searches
            rec.service_tier = turn.service_tier
        self.tally.add(rec)

    async def _send_json(
        self,
        r: _Req,
        status: int,
        payload: Json,
        extra: list[tuple[bytes, bytes]] | None = None,
        cut: bool = False,
    ) -> None:
        data = orjson.dumps(payload)
        headers = [*_JSON_HEADERS, (b"content-length", str(len(data)).encode()), *r.id_headers()]
        if extra:
            headers.extend(extra)
        await r.send({"type": "http.response.start", "status": status, "headers": headers})
        if cut:
            # Half the body, then the connection drops: the client sees a truncated read.
            _DELIBERATE_CUT.set(True)
            await r.send({"type": "http.response.body", "body": data[: len(data) // 2],
                          "more_body": True})
            return
        await r.send({"type": "http.response.body", "body": data})

    async def _error(self, r: _Req, status: int, message: str, retry_after: float | None = None,
                     kind: str | None = None) -> None:
        """Answer with the provider's error shape; usage of an error is zero. ``kind``: the
        Bedrock error type (else the status's)."""
        extra: list[tuple[bytes, bytes]] = []
        if retry_after is not None:
            value = int(retry_after) if float(retry_after).is_integer() else retry_after
            extra.append((b"retry-after", str(value).encode()))
        if r.bedrock:
            payload: Json = {"message": message}
            extra.extend(error_headers(status, kind))
        elif r.gemini:
            payload = google_error(status, message)
        elif r.anthropic:
            payload = anthropic_error(status, message, r.rid)
        else:
            payload = openai_error(status, message)
        self._record(r, status, "error")
        await self._send_json(r, status, payload, extra)

    async def _prelude(self, r: _Req, directive_text: str) -> Directives | None:
        """Resolve directives and act out delays, hangs and error statuses.

        Returns None when the request has been fully answered already.
        """
        layers: list[Mapping[str, object]] = []
        if self.settings.defaults:
            layers.append(self.settings.defaults)
        if self._script:
            with contextlib.suppress(IndexError):  # another request took the last entry
                layers.append(self._script.popleft())
        try:
            if "[[fake:" in directive_text:
                layers.append(parse_directives(directive_text))
            d = Directives.merged(*layers) if layers else NORMAL
        except DirectiveError as exc:
            await self._error(r, 400, str(exc))
            return None
        r.directives = d
        if d.delay_ms and not await r.watcher().sleep(d.delay_ms / 1000.0) \
                and not d.bill_if_gone:
            self._record(r, 0, "client_disconnected")
            return None
        if d.hang:
            await r.watcher().wait_gone()
            if not d.bill_if_gone:
                self._record(r, 0, "client_disconnected")
                return None
        if d.status is not None and d.status >= 400:
            await self._error(r, d.status, f"Fake upstream error (status {d.status}).",
                              d.retry_after)
            return None
        return d

    async def _refused_stream_options(self, r: _Req, d: Directives) -> bool:
        """A server that does not know ``stream_options`` refuses the request (the wording
        of OpenAI-compatible servers that forbid unknown fields)."""
        if not (d.refuse_stream_options and isinstance(r.body, dict)
                and "stream_options" in r.body):
            return False
        await self._error(r, 400, "property 'stream_options' is unsupported, did you mean "
                                  "'stream'?")
        return True

    def _turn(
        self,
        r: _Req,
        d: Directives,
        *,
        object_id: str,
        item_prefix: str,
        call_prefix: str,
        counted_input: int,
        max_tokens: int | None,
        tools: object,
        include_usage: bool = False,
    ) -> Turn:
        reply = plan_reply(
            d,
            max_tokens=max_tokens,
            default_output_tokens=self.settings.default_output_tokens,
            tools=tools,
        )
        counted = d.input_tokens if d.input_tokens is not None else counted_input
        uid = self._new_id()
        assert r.body is not None
        cached_audio = min(d.cached_audio_tokens, d.cached_tokens, d.input_audio_tokens)
        return Turn(
            id=object_id + uid,
            item_id=item_prefix + uid,
            call_id=call_prefix + uid,
            model=r.model,
            created=int(time.time()),
            input_tokens=max(counted, d.cached_tokens + d.cache_write_tokens
                             + d.input_audio_tokens - cached_audio),
            cached_tokens=d.cached_tokens,
            cache_write_tokens=d.cache_write_tokens,
            reply=reply,
            request=r.body,
            include_usage=include_usage,
            no_usage=d.no_usage,
            cache_write_1h_tokens=min(d.cache_write_1h_tokens, d.cache_write_tokens),
            input_audio_tokens=d.input_audio_tokens,
            cached_audio_tokens=cached_audio,
            web_searches=d.web_searches,
            web_fetches=d.web_fetches,
            file_searches=d.file_searches,
            service_tier=d.service_tier or _served_tier(r),
            usage_dialect=d.usage_dialect,
        )

    async def _answer(
        self,
        r: _Req,
        d: Directives,
        turn: Turn,
        render_body: Callable[[Turn], Json],
        render_stream: Callable[[Turn], StreamParts],
        content_headers: list[tuple[bytes, bytes]] = _SSE_HEADERS,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer with ``turn``: the whole body (with ``extra`` headers; cut short under a
        ``cut_after`` directive), or the stream acting out its directives."""
        if not r.stream:
            cut = d.cut_after is not None
            self._record(r, 200, "cut" if cut else "completed", turn)
            await self._send_json(r, 200, render_body(turn), extra, cut=cut)
            return
        await self._stream(r, d, turn, render_stream(turn), content_headers)

    async def _stream(self, r: _Req, d: Directives, turn: Turn, parts: StreamParts,
                      content_headers: list[tuple[bytes, bytes]] = _SSE_HEADERS) -> None:
        """Send an SSE stream (or Bedrock's event stream), acting out cut / error / stall /
        slow-chunk directives."""
        n = len(parts.pieces)
        stop, ending = n, "complete"
        for limit, kind in ((d.cut_after, "cut"), (d.error_after, "error"),
                            (d.stall_after, "stall")):
            if limit is not None and limit <= n and (ending == "complete" or limit < stop):
                stop, ending = limit, kind
        send = r.send
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [*content_headers, *r.id_headers()],
        })
        delay = d.chunk_delay_ms / 1000.0
        if delay <= 0:
            if ending == "complete":
                self._record(r, 200, "completed", turn)
                await send({"type": "http.response.body",
                            "body": parts.head + b"".join(parts.pieces) + parts.tail})
                return
            await send({"type": "http.response.body",
                        "body": parts.head + b"".join(parts.pieces[:stop]), "more_body": True})
        else:
            watch = r.watcher()
            await send({"type": "http.response.body", "body": parts.head, "more_body": True})
            for i in range(stop):
                if not await watch.sleep(delay):
                    self._record(r, 200, "client_disconnected", turn,
                                 turn.reply.tokens_after(i))
                    return
                await send({"type": "http.response.body", "body": parts.pieces[i],
                            "more_body": True})
            if ending == "complete":
                if not await watch.sleep(delay):
                    self._record(r, 200, "client_disconnected", turn,
                                 turn.reply.tokens_after(stop))
                    return
                self._record(r, 200, "completed", turn)
                await send({"type": "http.response.body", "body": parts.tail})
                return
        emitted = turn.reply.tokens_after(stop)
        if ending == "cut":
            self._record(r, 200, "cut", turn, emitted)
            _DELIBERATE_CUT.set(True)
            return  # uvicorn closes the connection mid-body
        if ending == "error":
            self._record(r, 200, "stream_error", turn, emitted)
            await send({"type": "http.response.body", "body": parts.error(stop)})
            return
        await r.watcher().wait_gone()  # stall
        self._record(r, 200, "client_disconnected", turn, emitted)

    # -- OpenAI -------------------------------------------------------------------------

    async def _begin(self, r: _Req, required: tuple[str, ...],
                     directive_text: Callable[[Json], str], *, anthropic: bool = False,
                     default_model: str | None = None,
                     stream_options: bool = False) -> tuple[Json, Directives] | None:
        """The JSON body and the directives of a request that has every ``required`` key
        (else a 400 worded as OpenAI or, with ``anthropic``, as Anthropic words it) and got
        through the prelude (and, for a route that reads ``stream_options``, past a server
        that refuses it); None when an error was sent instead."""
        body = r.body
        assert body is not None
        for key in required:
            if body.get(key) is None:
                await self._error(r, 400, f"{key}: Field required" if anthropic
                                  else f"Missing required parameter: '{key}'.")
                return None
        if default_model is not None:
            r.model = r.model or default_model
        d = await self._prelude(r, directive_text(body))
        if d is None or (stream_options and await self._refused_stream_options(r, d)):
            return None
        return body, d

    async def _chat(self, r: _Req) -> None:
        begun = await self._begin(r, ("model", "messages"),
                                  lambda body: last_user_text(body["messages"]),
                                  stream_options=True)
        if begun is None:
            return
        body, d = begun
        messages = body["messages"]
        tools = body.get("tools")
        turn = self._turn(
            r, d,
            object_id="chatcmpl-", item_prefix="msg_", call_prefix="call_",
            counted_input=count_messages(messages) + count_tools(tools)
            + count_format(body.get("response_format")),
            max_tokens=first_int(body, ("max_completion_tokens", "max_tokens")),
            tools=tools,
            include_usage=_wants_usage(body),
        )
        await self._answer(r, d, turn, chat_body, chat_stream)

    async def _completions(self, r: _Req) -> None:
        begun = await self._begin(r, ("model", "prompt"),
                                  lambda body: last_prompt_text(body["prompt"]),
                                  stream_options=True)
        if begun is None:
            return
        body, d = begun
        prompt = body["prompt"]
        turn = self._turn(
            r, d,
            object_id="cmpl-", item_prefix="", call_prefix="",
            counted_input=count_prompt(prompt),
            max_tokens=first_int(body, ("max_tokens",)),
            tools=None,
            include_usage=_wants_usage(body),
        )
        await self._answer(r, d, turn, completion_body, completion_stream)

    async def _responses(self, r: _Req) -> None:
        begun = await self._begin(r, ("model",), lambda body: last_user_text(body.get("input")))
        if begun is None:
            return
        body, d = begun
        items = body.get("input")
        carried = 0
        previous = body.get("previous_response_id")
        if previous is not None:
            earlier = self.responses.get(previous) if isinstance(previous, str) else None
            if earlier is None:
                await self._error(r, 400, f"Previous response with id '{previous}' not found.")
                return
            carried = earlier.carried_tokens()
        tools = body.get("tools")
        text = body.get("text")
        counted = count_responses_input(body.get("instructions"), items, tools,
                                        text.get("format") if isinstance(text, dict) else None)
        turn = self._turn(
            r, d,
            object_id="resp_", item_prefix="msg_", call_prefix="call_",
            counted_input=carried + counted,
            max_tokens=first_int(body, ("max_output_tokens",)),
            tools=tools,
        )
        if turn.reply.finish == "tool":
            turn.item_id = "fc_" + turn.item_id[4:]
        background = body.get("background") is True
        if background or body.get("store") is not False:
            stored = self.responses.keep(
                turn, background=background, stream=r.stream, hold=d.background_hold,
                complete_after=d.background_polls or self.settings.background_polls)
            if background:
                if not r.stream:
                    self._record(r, 200, "queued")
                    await self._send_json(r, 200, stored.snapshot())
                    return
                r.background = stored
        await self._answer(r, d, turn, responses_body, responses_stream)

    async def _response_route(self, r: _Req) -> None:
        """``GET``/``DELETE /v1/responses/{id}``, ``POST …/cancel``, ``GET …/input_items``."""
        rest = r.route[len("/v1/responses/"):]
        response_id, _, action = rest.partition("/")
        stored = self.responses.get(response_id)
        allowed = {"": ("GET", "DELETE"), "cancel": ("POST",), "input_items": ("GET",)}
        if action not in allowed or r.method not in allowed[action]:
            await self._error(r, 404 if action not in allowed else 405,
                              f"Unknown request URL: {r.method} {r.route}.")
            return
        if r.method == "POST":
            await _read_body(r.receive)
        if stored is None:
            await self._error(r, 404, f"Response with id '{response_id}' not found.")
            return
        r.model = stored.turn.model
        if action == "cancel":
            if not stored.background:
                await self._error(r, 400, "Only responses created with background: true can "
                                          "be cancelled.")
                return
            self.responses.cancel(stored)
            payload = stored.snapshot()
        elif action == "input_items":
            items = stored.items
            payload = {"object": "list", "data": items,
                       "first_id": items[0]["id"] if items else None,
                       "last_id": items[-1]["id"] if items else None, "has_more": False}
        elif r.method == "DELETE":
            self.responses.delete(response_id)
            payload = {"id": response_id, "object": "response.deleted", "deleted": True}
        elif parse_qs(r.query.decode("latin-1")).get("stream") == ["true"]:
            await self._resume_stream(r, stored)
            return
        else:
            self.responses.poll(stored)
            payload = stored.snapshot()
        self._record(r, 200, "completed")
        await self._send_json(r, 200, payload)

    async def _resume_stream(self, r: _Req, stored: StoredResponse) -> None:
        """``GET /v1/responses/{id}?stream=true[&starting_after=n]``: a background
        response's events after ``n``; it runs to its end while they are sent."""
        if not stored.background:
            await self._error(r, 400, "Only background responses can be streamed again.")
            return
        query = parse_qs(r.query.decode("latin-1"))
        try:
            after = int(query.get("starting_after", ["-1"])[0])
        except ValueError:
            await self._error(r, 400, "'starting_after' must be an integer.")
            return
        self.responses.finish(stored)
        parts = responses_stream(stored.turn)
        events = []
        for event in (parts.head + b"".join(parts.pieces) + parts.tail).split(b"\n\n"):
            _, _, data = event.partition(b"data: ")
            if data and orjson.loads(data)["sequence_number"] > after:
                events.append(event + b"\n\n")
        self._record(r, 200, "completed")
        await r.send({"type": "http.response.start", "status": 200,
                      "headers": [*_SSE_HEADERS, *r.id_headers()]})
        await r.send({"type": "http.response.body", "body": b"".join(events)})

    async def _embeddings(self, r: _Req) -> None:
        begun = await self._begin(r, ("model", "input"),
                                  lambda body: last_prompt_text(body["input"]))
        if begun is None:
            return
        body, d = begun
        raw = body["input"]
        if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
            inputs: list[object] = [raw]
        elif isinstance(raw, list) and raw:
            inputs = list(raw)
        else:
            await self._error(r, 400, "'input' must be a non-empty string or array.")
            return
        dimensions = first_int(body, ("dimensions",)) or self.settings.embedding_dim
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            seed = item if isinstance(item, str) else orjson.dumps(item).decode()
            vector = embedding_vector(seed, dimensions)
            embedding: object = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
                if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = count_prompt(inputs) if d.input_tokens is None else d.input_tokens
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._record(r, 200, "completed", input_tokens=tokens)
        await self._send_json(
            r, 200, {"object": "list", "data": data, "model": r.model, "usage": usage}
        )

    async def _moderations(self, r: _Req) -> None:
        begun = await self._begin(r, ("input",), lambda body: last_prompt_text(body["input"]),
                                  default_model="omni-moderation-latest")
        if begun is None:
            return
        body, _ = begun
        raw = body["input"]
        groups: list[list[object]]
        if isinstance(raw, list) and raw and all(isinstance(x, dict) for x in raw):
            groups = [list(raw)]  # one multi-modal input
        elif isinstance(raw, list):
            groups = [[x] for x in raw]
        else:
            groups = [[raw]]
        trigger = self.settings.moderation_trigger.lower()
        results = []
        for group in groups:
            text = " ".join(
                x if isinstance(x, str) else str(x.get("text", "")) if isinstance(x, dict) else ""
                for x in group
            )
            has_image = any(isinstance(x, dict) and x.get("type") == "image_url" for x in group)
            flagged = bool(trigger) and trigger in text.lower()
            categories = {c: flagged and c == "violence" for c in _MODERATION_CATEGORIES}
            scores = {
                c: (0.97 if flagged and c == "violence" else 0.0001)
                for c in _MODERATION_CATEGORIES
            }
            applied = {
                c: (["text", "image"] if has_image and c in _IMAGE_CATEGORIES else ["text"])
                for c in _MODERATION_CATEGORIES
            }
            results.append({
                "flagged": flagged,
                "categories": categories,
                "category_scores": scores,
                "category_applied_input_types": applied,
            })
        self._record(r, 200, "completed")
        await self._send_json(
            r, 200, {"id": "modr-" + self._new_id(), "model": r.model, "results": results}
        )

    def _model_entry(self, name: str, anthropic: bool) -> Json:
        if anthropic:
            return {
                "type": "model",
                "id": name,
                "display_name": name.replace("-", " ").title(),
                "created_at": "2025-01-01T00:00:00Z",
            }
        owner = "anthropic" if name.startswith("claude") else "openai"
        return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": owner}

    async def _models(self, r: _Req) -> None:
        names = self.settings.models
        entries = [self._model_entry(n, r.anthropic) for n in names]
        payload: Json
        if r.anthropic:
            payload = {
                "data": entries,
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
        else:
            payload = {"object": "list", "data": entries}
        self._record(r, 200, "completed")
        await self._send_json(r, 200, payload)

    async def _model(self, r: _Req) -> None:
        name = r.route[len("/v1/models/"):]
        r.model = name
        if name not in self.settings.models:
            await self._error(r, 404, f"The model '{name}' does not exist")
            return
        self._record(r, 200, "completed")
        await self._send_json(r, 200, self._model_entry(name, r.anthropic))

    # -- Anthropic ----------------------------------------------------------------------

    async def _messages(self, r: _Req) -> None:
        begun = await self._begin(r, ("model", "messages", "max_tokens"),
                                  lambda body: last_user_text(body["messages"]), anthropic=True,
                                  stream_options=True)
        if begun is None:
            return
        body, d = begun
        messages = body["messages"]
        tools = body.get("tools")
        turn = self._turn(
            r, d,
            object_id="msg_", item_prefix="", call_prefix="toolu_",
            counted_input=count_anthropic_input(body.get("system"), messages, tools,
                                                _anthropic_format(body)),
            max_tokens=first_int(body, ("max_tokens",)),
            tools=tools,
        )
        await self._answer(r, d, turn, anthropic_message, anthropic_stream)

    async def _count_tokens(self, r: _Req) -> None:
        begun = await self._begin(r, ("model", "messages"),
                                  lambda body: last_user_text(body["messages"]), anthropic=True)
        if begun is None:
            return
        body, d = begun
        messages = body["messages"]
        counted = count_anthropic_input(body.get("system"), messages, body.get("tools"),
                                        _anthropic_format(body))
        if d.input_tokens is not None:
            counted = d.input_tokens
        self._record(r, 200, "completed")
        await self._send_json(r, 200, {"input_tokens": counted})

    # -- control over HTTP --------------------------------------------------------------

    async def _admin(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        status, payload = 200, None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if path == "/_fake/tally" and method == "GET":
            with_records = query.get("records", ["1"])[-1] not in ("0", "false", "no")
            payload = self.tally.snapshot(with_records)
        elif path == "/_fake/reset" and method == "POST":
            self.reset()
            payload = {"ok": True}
        elif path.startswith("/_fake/responses/") and path.endswith("/finish") \
                and method == "POST":
            response_id = path[len("/_fake/responses/"):-len("/finish")]
            payload = {"ok": self.finish_background(response_id)}
        elif path in ("/_fake/script", "/_fake/defaults") and method == "POST":
            raw = await _read_body(receive)
            try:
                spec = orjson.loads(raw or b"null")
                if path == "/_fake/script":
                    self.script(spec if isinstance(spec, list) else [spec])
                    payload = {"ok": True, "pending": len(self._script)}
                else:
                    self.set_defaults(spec)
                    payload = {"ok": True, "defaults": self.settings.defaults}
            except (orjson.JSONDecodeError, DirectiveError, TypeError, AttributeError) as exc:
                status, payload = 400, {"error": {"message": str(exc)}}
        elif path == "/_fake/reports/drift" and method == "POST":
            raw = await _read_body(receive)
            try:
                spec = orjson.loads(raw or b"null")
                items = spec if isinstance(spec, list) else [spec]
                self.drifts.extend(Drift.from_json(item) for item in items)
                payload = {"ok": True, "drifts": len(self.drifts)}
            except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
                status, payload = 400, {"error": {"message": str(exc)}}
        elif path == "/_fake/health":
            payload = {"ok": True}
        else:
            status, payload = 404, {"error": {"message": f"unknown control route {path}"}}
        data = orjson.dumps(payload)
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", str(len(data)).encode())],
        })
        await send({"type": "http.response.body", "body": data})


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


class _AnnouncingServer(uvicorn.Server):
    """Prints the one ready line other processes wait for, once the socket accepts."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"listening on {self._url}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m tokenstile.testing.fake_upstream --port N [--host 127.0.0.1]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tokenstile.testing.fake_upstream",
        description="Fake OpenAI + Anthropic upstream for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--output-tokens", type=int, default=12,
                        help="reply length when neither max_tokens nor a directive says")
    parser.add_argument("--require-key", default=None,
                        help="answer 401 unless this API key is presented")
    parser.add_argument("--defaults", default=None,
                        help='directives for every request, e.g. "[[fake:delay_ms=5]]"')
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--moderation-trigger", default="forbidden")
    parser.add_argument("--max-records", type=int, default=100_000)
    parser.add_argument("--no-bodies", action="store_true",
                        help="do not keep request bodies on tally records")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    fake = FakeUpstream(
        default_output_tokens=args.output_tokens,
        require_key=args.require_key,
        defaults=args.defaults,
        embedding_dim=args.embedding_dim,
        moderation_trigger=args.moderation_trigger,
        max_records=args.max_records,
        record_bodies=not args.no_bodies,
    )
    sock = bind_socket(args.host, args.port)
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        fake.app,
        host=args.host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=args.log_level,
    )
    _AnnouncingServer(config, http_url(args.host, port)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
