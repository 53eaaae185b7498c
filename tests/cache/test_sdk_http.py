"""Cache hits served over HTTP to the official ``openai`` and ``anthropic`` SDKs: a tiny ASGI
app answers every request with ``replay_answer`` of a captured answer, streamed or not, as the
gateway does on a hit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest
from anthropic.types import Message
from openai.types import Completion
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from tokenstile.cache.answer import CachedAnswer
from tokenstile.cache.replay import content_type, replay_answer
from tokenstile.providers.anthropic import AnthropicAdapter
from tokenstile.providers.openai import OpenAIAdapter
from tokenstile.testing.server_thread import RunningServer

from .conftest import WEATHER_TOOL_ANTHROPIC, WEATHER_TOOL_OPENAI, Captured
from .sdk import plain, same_chat

_ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
           "/v1/responses": "responses", "/v1/messages": "messages"}


class ReplayApp:
    """Serves ``answers[path]`` for every POST, rendered for the request that came in."""

    def __init__(self) -> None:
        self.answers: dict[str, CachedAnswer] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        api = _ROUTES[path]
        if api == "messages":
            req = AnthropicAdapter().parse("messages", orjson.loads(raw))
        else:
            req = OpenAIAdapter().parse(api, orjson.loads(raw))  # type: ignore[arg-type]
        chunks = replay_answer(req, self.answers[path])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type(req.stream).encode())]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ReplayApp, str]]:
    app = ReplayApp()
    with RunningServer(app) as server:
        yield app, server.url


@pytest.fixture
def oai(served: tuple[ReplayApp, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served[1] + "/v1", api_key="sk-x", max_retries=0,
                       timeout=10) as client:
        yield client


@pytest.fixture
def claude(served: tuple[ReplayApp, str]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=served[1], api_key="sk-x", max_retries=0,
                             timeout=10) as client:
        yield client


def load(app: ReplayApp, path: str, cap: Captured) -> bytes:
    app.answers[path] = CachedAnswer(api=cap.case.api, wire=cap.case.wire, body=cap.body,
                                     model=str(cap.case.body["model"]))
    return cap.body


MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("name", ["chat_text", "chat_tool"])
def test_chat_via_openai_sdk(served: tuple[ReplayApp, str], oai: openai.OpenAI,
                             captured: dict[str, Captured], name: str) -> None:
    body = load(served[0], "/v1/chat/completions", captured[name])
    tools: Any = [WEATHER_TOOL_OPENAI]
    whole = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=tools)
    assert whole.model_dump(mode="json", exclude_unset=True) == orjson.loads(body)

    with oai.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES, tools=tools,
                                     stream_options={"include_usage": True}) as stream:
        final = stream.get_final_completion()
    same_chat(ChatCompletion.model_validate(final.model_dump()), body)

    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                              tools=tools, stream=True))
    assert all(chunk.usage is None for chunk in chunks)  # not asked for: not sent
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (whole.choices[0].message.content or "")


def test_completions_via_openai_sdk(served: tuple[ReplayApp, str], oai: openai.OpenAI,
                                    captured: dict[str, Captured]) -> None:
    body = load(served[0], "/v1/completions", captured["completions"])
    want = Completion.model_validate_json(body)
    chunks: list[Completion] = list(oai.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon", stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.choices[0].text
    assert chunks[-1].usage == want.usage


@pytest.mark.parametrize("name", ["responses_text", "responses_tool", "responses_incomplete"])
def test_responses_via_openai_sdk(served: tuple[ReplayApp, str], oai: openai.OpenAI,
                                  captured: dict[str, Captured], name: str) -> None:
    body = load(served[0], "/v1/responses", captured[name])
    want = Response.model_validate_json(body)
    whole = oai.responses.create(model="gpt-4o-mini", input="hello")
    assert whole.model_dump(mode="json", exclude_unset=True) == orjson.loads(body)
    with oai.responses.stream(model="gpt-4o-mini", input="hello") as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    last = events[-1]
    # An answer cut by max_output_tokens ends in response.incomplete, as OpenAI sends it
    # (the SDK's get_final_response() only accepts response.completed).
    assert last.type == ("response.incomplete" if want.status == "incomplete"
                         else "response.completed")
    final = last.response
    assert "".join(deltas) == want.output_text == final.output_text
    assert plain(final.model_dump(mode="json")) == plain(want.model_dump(mode="json"))


@pytest.mark.parametrize("name", ["messages_text", "messages_tool", "messages_cache"])
def test_messages_via_anthropic_sdk(served: tuple[ReplayApp, str], claude: anthropic.Anthropic,
                                    captured: dict[str, Captured], name: str) -> None:
    body = load(served[0], "/v1/messages", captured[name])
    want = Message.model_validate_json(body)
    tools: Any = [WEATHER_TOOL_ANTHROPIC]
    whole = claude.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES,
                                   tools=tools)
    assert whole == want
    with claude.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES,
                                tools=tools) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert Message.model_validate(final.model_dump()) == want
    assert text == "".join(b.text for b in want.content if b.type == "text")
