"""Whatever a stranger sends gets a clear error in OpenAI's shape, and the gateway keeps
serving with its ledger intact."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, FakeHandle, Gateway


async def post(gateway: Gateway, path: str, body: bytes, headers: dict[str, str]
               ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            gateway.url + path, data=body,
            headers={"content-type": "application/json", **headers}) as resp:
        return resp.status, await resp.json(content_type=None)


def assert_openai_error(payload: Any, code: str | None = None) -> dict[str, Any]:
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].startswith("tokenstile: ")
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.mark.parametrize(("body", "code", "fragment"), [
    (b"{not json", "invalid_json", "not valid JSON"),
    (b"", "invalid_json", "empty"),
    (b"[1, 2]", "invalid_json", "must be a JSON object"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "missing_required_parameter",
     "'model' is required"),
    (b'{"model": 42, "messages": []}', "invalid_request", "'model' must be"),
    (b'{"model": "gpt-4o", "messages": "hello"}', "invalid_request", "'messages' must be"),
    (b'{"model": "gpt-4o", "messages": [{"content": "x"}]}', "invalid_request", ".role"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],'
     b' "max_tokens": "ten"}', "invalid_request", "'max_tokens' must be an integer"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],'
     b' "stream": "yes"}', "invalid_request", "'stream' must be a boolean"),
    (b'{"model": "gpt-4o", "messages": [' + b'[' * 200 + b']' * 200 + b']}',
     "json_too_deep", "nested deeper"),
])
async def test_malformed_requests_get_clear_400s(gateway: Gateway, fake: FakeHandle,
                                                 body: bytes, code: str, fragment: str) -> None:
    key = gateway.key()
    status, payload = await post(gateway, "/v1/chat/completions", body,
                                 {"authorization": f"Bearer {key}"})
    assert status == 400
    error = assert_openai_error(payload, code)
    assert fragment in error["message"]
    assert fake.fake.tally.requests == 0


async def test_oversized_body_gets_413(make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({"server": {"max_body_bytes": 2048}})
    key = gateway.key()
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + \
        b"x" * 10_000 + b'"}]}'
    status, payload = await post(gateway, "/v1/chat/completions", body,
                                 {"authorization": f"Bearer {key}"})
    assert status == 413
    assert_openai_error(payload, "request_too_large")


def test_bad_keys_get_401_in_the_sdk(gateway: Gateway, fake: FakeHandle) -> None:
    for bad in ("ts-not-a-real-key", "sk-some-provider-key", UPSTREAM_KEY):
        api = openai.OpenAI(base_url=gateway.v1, api_key=bad, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            api.chat.completions.create(model="gpt-4o",
                                        messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 401
        assert "- tokenstile: " in caught.value.message
        assert bad not in caught.value.message
    assert fake.fake.tally.requests == 0


async def test_missing_and_revoked_keys(gateway: Gateway, fake: FakeHandle) -> None:
    status, payload = await post(gateway, "/v1/chat/completions", b"{}", {})
    assert status == 401
    assert "no API key" in assert_openai_error(payload)["message"]
    key = gateway.key()
    record = gateway.run(gateway.runtime.db.list_keys())[0]
    gateway.run(gateway.runtime.db.update_key(record.id, revoked_at=1.0))
    gateway.runtime.auth.forget()
    status, payload = await post(gateway, "/v1/chat/completions",
                                 b'{"model": "gpt-4o", "messages": []}',
                                 {"authorization": f"Bearer {key}"})
    assert status == 401
    assert assert_openai_error(payload, "key_revoked")


def test_unknown_routes_and_wrong_methods(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        api.post("/assistants/nope", cast_to=object, body={})
    assert "unknown route" in caught.value.message
    with pytest.raises(openai.APIStatusError) as wrong:
        api.get("/chat/completions", cast_to=object)
    assert wrong.value.status_code == 405


def test_the_gateway_keeps_serving_after_garbage(gateway: Gateway, fake: FakeHandle) -> None:
    import socket

    host, port = gateway.url.removeprefix("http://").split(":")
    for junk in (b"GARBAGE\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: "
                 b"99999\r\n\r\n{", b"\x00\xff" * 100):
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(junk)
    key = gateway.key()
    reply = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0) \
        .chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                 messages=[{"role": "user", "content": "still there?"}])
    assert reply.choices[0].message.content
    rows = gateway.rows()
    assert [r.outcome for r in rows] == ["ok"]


def test_secrets_never_leave(gateway: Gateway, fake: FakeHandle) -> None:
    key = gateway.key()
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    api.chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat.completions.create(model="gpt-4o-mini",
                                    messages=[{"role": "user", "content": "[[fake:status=503]]"}])
    everything = repr(gateway.rows()) + caught.value.message + repr(caught.value.body)
    metrics = gateway.runtime.metrics.render().decode()
    for secret in (UPSTREAM_KEY, key):
        assert secret not in everything
        assert secret not in metrics
