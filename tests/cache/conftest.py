"""Fixtures for the response cache: real answers captured from the fake upstream over
HTTP (streamed and not). (The store suite over every backend lives in tests/stores.)"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from tokenstile.providers.sse import EventSplitter
from tokenstile.testing.fake_upstream import FakeUpstream
from tokenstile.testing.server_thread import RunningServer
from tokenstile.types import ApiKind, WireFormat

WEATHER_TOOL_OPENAI: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
WEATHER_TOOL_RESPONSES = {"type": "function", "name": "get_weather",
                          "parameters": WEATHER_TOOL_OPENAI["function"]["parameters"]}
WEATHER_TOOL_ANTHROPIC = {"name": "get_weather", "description": "Weather in a city",
                          "input_schema": WEATHER_TOOL_OPENAI["function"]["parameters"]}


@dataclass(frozen=True)
class Case:
    """One request to the fake upstream, asked twice: non-streamed and streamed."""

    name: str
    api: ApiKind
    wire: WireFormat
    path: str
    body: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        if self.wire == "anthropic":
            return {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
        return {"authorization": "Bearer sk-test"}

    def streamed_body(self) -> dict[str, Any]:
        body = {**self.body, "stream": True}
        if self.api in ("chat", "completions"):
            body["stream_options"] = {"include_usage": True}
        return body


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def _messages(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-haiku-4-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": text}], **extra}


CASES: tuple[Case, ...] = (
    Case("chat_text", "chat", "openai", "/v1/chat/completions", _chat("hello")),
    Case("chat_length", "chat", "openai", "/v1/chat/completions",
         _chat("long [[fake:output_tokens=50]]", max_tokens=7)),
    Case("chat_tool", "chat", "openai", "/v1/chat/completions",
         _chat("weather? [[fake:tool_call=get_weather]]", tools=[WEATHER_TOOL_OPENAI])),
    Case("chat_cached_reasoning", "chat", "openai", "/v1/chat/completions",
         _chat("think [[fake:cached_tokens=4,reasoning_tokens=3,output_tokens=9]]")),
    Case("completions", "completions", "openai", "/v1/completions",
         {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon", "max_tokens": 10}),
    Case("responses_text", "responses", "openai", "/v1/responses",
         {"model": "gpt-4o-mini", "input": "hello", "instructions": "be brief"}),
    Case("responses_incomplete", "responses", "openai", "/v1/responses",
         {"model": "gpt-4o-mini", "input": "long [[fake:output_tokens=40]]",
          "max_output_tokens": 16}),
    Case("responses_tool", "responses", "openai", "/v1/responses",
         {"model": "gpt-4o-mini", "input": "weather? [[fake:tool_call=get_weather]]",
          "tools": [WEATHER_TOOL_RESPONSES]}),
    Case("messages_text", "messages", "anthropic", "/v1/messages", _messages("hello")),
    Case("messages_cache", "messages", "anthropic", "/v1/messages",
         _messages("cached [[fake:cached_tokens=5,cache_write_tokens=2]]")),
    Case("messages_tool", "messages", "anthropic", "/v1/messages",
         _messages("weather? [[fake:tool_call=get_weather]]", tools=[WEATHER_TOOL_ANTHROPIC])),
)
STREAMABLE = [case.name for case in CASES]


@dataclass
class Captured:
    """A case as the fake answered it: the whole body, and the stream as SSE events."""

    case: Case
    body: bytes
    events: list[bytes] = field(default_factory=list)
    raw_stream: bytes = b""


async def post(session: aiohttp.ClientSession, url: str, case: Case,
               body: dict[str, Any]) -> tuple[int, bytes]:
    async with session.post(url + case.path, data=orjson.dumps(body),
                            headers={**case.headers, "content-type": "application/json"}) as resp:
        return resp.status, await resp.read()


async def capture_all(url: str) -> dict[str, Captured]:
    out: dict[str, Captured] = {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for case in CASES:
            status, body = await post(session, url, case, case.body)
            assert status == 200, body
            status, raw = await post(session, url, case, case.streamed_body())
            assert status == 200, raw
            splitter = EventSplitter()
            events = splitter.feed(raw)
            assert not splitter.rest().strip()
            out[case.name] = Captured(case, body, events, raw)
    return out


@pytest.fixture(autouse=True)
def collect_sdk_clients() -> Iterator[None]:
    """Overrides the suite-wide collector: every client and session here is closed by a
    ``with`` block, and a full garbage collection after each of these many small tests
    costs more than the tests themselves."""
    yield


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    with RunningServer(fake.app) as server:
        yield fake, server.url


@pytest.fixture(scope="session")
def captured(upstream: tuple[FakeUpstream, str]) -> dict[str, Captured]:
    return asyncio.run(capture_all(upstream[1]))


_VOLATILE = re.compile(rb'"(created|created_at|completed_at)":\d+')


def comparable(body: bytes) -> Any:
    """A body with what differs between two identical calls (ids, timestamps) blanked."""
    parsed = orjson.loads(body)
    ident = str(parsed.get("id", ""))
    uid = re.split(r"[-_]", ident, maxsplit=1)[-1].encode()
    cleaned = _VOLATILE.sub(rb'"\1":0', body)
    if uid:
        cleaned = cleaned.replace(uid, b"UID")
    return orjson.loads(cleaned)
