"""Limits on what a client may send, against a real ``tokenstile serve``: header size and
time (431, 408, before the app), body size and time (413, 408), JSON depth and message
count (400), compressed bodies (415), broken HTTP (400), each in the provider's shape,
and the process serving normally afterwards."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import FakeHandle, Gateway
from tests.hostile.conftest import (
    HOSTILE_SERVER,
    Served,
    error_of,
    exchange,
    request_bytes,
)

CHAT = "/v1/chat/completions"
OK_BODY = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 5,
                        "messages": [{"role": "user", "content": "hi"}]})


def auth(served: Served) -> dict[str, str]:
    return {"authorization": f"Bearer {served.key}"}


def still_serving(served: Served) -> None:
    _, status, _, body = exchange(served.port, request_bytes(CHAT, OK_BODY, auth(served)))
    assert status == 200, body


@pytest.mark.parametrize("size", [1_000_000, 20_000_000])
def test_huge_headers_get_431_and_the_process_survives(served: Served, fake: FakeHandle,
                                                        size: int) -> None:
    before = served.rss_kb()
    raw = request_bytes(CHAT, OK_BODY, {**auth(served), "x-big": "a" * size})
    elapsed, status, headers, body = exchange(served.port, raw)
    assert status == 431 and headers["connection"] == "close"
    assert error_of("openai", body)["code"] == "request_headers_too_large"
    assert elapsed < 5
    assert served.rss_kb() - before < 20_000  # nothing near the header's size was held
    still_serving(served)
    assert fake.fake.tally.requests == 1


def test_many_small_headers_count_too_and_anthropic_gets_its_shape(served: Served) -> None:
    many = {f"x-h{i}": "v" * 40 for i in range(1000)}
    _, status, _, body = exchange(served.port, request_bytes("/v1/messages", b"{}", many))
    assert status == 431
    assert error_of("anthropic", body)["type"] == "invalid_request_error"


def test_headers_under_the_limit_pass(served: Served, fake: FakeHandle) -> None:
    raw = request_bytes(CHAT, OK_BODY, {**auth(served), "x-big": "a" * 8000})
    assert exchange(served.port, raw)[1] == 200


def test_slow_or_silent_headers_get_408(served: Served) -> None:
    limit = HOSTILE_SERVER["header_timeout_s"]
    elapsed, status, _, body = exchange(served.port, None, trickle=b"POST /v1/chat/com" * 4,
                                        gap_s=0.1)
    assert status == 408 and limit <= elapsed < limit + 2
    assert error_of("openai", body)["code"] == "request_timeout"
    elapsed, status, _, _ = exchange(served.port, None)  # connect and say nothing
    assert status == 408 and elapsed < limit + 2
    still_serving(served)


def test_a_body_sent_a_byte_at_a_time_gets_408(served: Served, fake: FakeHandle) -> None:
    limit = HOSTILE_SERVER["body_timeout_s"]
    head = request_bytes(CHAT, b"", auth(served))
    head = head.replace(b"content-length: 0", f"content-length: {len(OK_BODY)}".encode())
    elapsed, status, headers, body = exchange(served.port, head, trickle=OK_BODY, gap_s=0.25)
    assert status == 408 and headers["connection"] == "close"
    assert limit <= elapsed < limit + 3
    error = error_of("openai", body)
    assert error["code"] == "request_timeout" and "did not arrive within" in error["message"]
    assert fake.fake.tally.requests == 0
    still_serving(served)


def test_a_client_that_stops_reading_is_let_go(served: Served, fake: FakeHandle) -> None:
    """Once the buffers are full a stream's writes wait; after ``write_timeout_s`` the
    gateway stops, cuts the upstream and bills what it relayed."""
    before = {r.id for r in served.rows()}  # the earlier tests' rows written too
    body = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 400_000, "stream": True,
                         "messages": [{"role": "user",
                                       "content": "go [[fake:output_tokens=400000]]"}]})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", served.port))
    try:
        sock.sendall(request_bytes(CHAT, body, auth(served)))  # and never read
        deadline = time.monotonic() + 30
        while True:
            rows = [r for r in served.rows(0.2) if r.id not in before]
            if rows:
                break
            assert time.monotonic() < deadline, "the gateway still waits on the client"
        [row] = rows
        assert row.outcome == "client_disconnect" and row.status == 499
        assert fake.fake.tally.wait_for(lambda t: t.requests == 1, 10)
        [record] = fake.fake.tally.records  # the fake wrote it all into its buffers
        assert 0 < row.output_tokens < record.output_tokens
    finally:
        sock.close()
    still_serving(served)


def test_a_declared_oversized_body_is_refused_before_it_is_read(served: Served) -> None:
    raw = request_bytes(CHAT, b"", {**auth(served), "content-length": str(10**9)})
    elapsed, status, _, body = exchange(served.port, raw)
    assert status == 413 and elapsed < 2
    assert error_of("openai", body)["code"] == "request_too_large"
    big = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + \
        b"x" * 300_000 + b'"}]}'
    _, status, _, body = exchange(served.port, request_bytes(CHAT, big, auth(served)))
    assert status == 413
    still_serving(served)


@pytest.mark.parametrize(("path", "wire"), [(CHAT, "openai"), ("/v1/messages", "anthropic"),
                                            ("/v1/responses", "openai")])
def test_too_many_messages_get_a_clear_400(served: Served, fake: FakeHandle, path: str,
                                           wire: str) -> None:
    field = "input" if path == "/v1/responses" else "messages"
    body = orjson.dumps({"model": "gpt-4o-mini", "max_tokens": 5,
                         field: [{"role": "user", "content": "hi"}] * 101})
    _, status, _, raw = exchange(served.port, request_bytes(
        path, body, {**auth(served), "x-api-key": served.key}))
    assert status == 400
    error = error_of(wire, raw)
    assert "101 items" in error["message"] and "server.max_messages" in error["message"]
    if wire == "openai":
        assert error["code"] == "too_many_messages" and error["param"] == field
    assert fake.fake.tally.requests == 0


def test_json_nested_past_the_limit_gets_400(served: Served) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [' + b"[" * 40 + b"]" * 40 + b"]}"
    _, status, _, raw = exchange(served.port, request_bytes(CHAT, body, auth(served)))
    assert status == 400 and error_of("openai", raw)["code"] == "json_too_deep"


def test_compressed_bodies_and_wrong_content_types_are_explained(served: Served) -> None:
    _, status, _, raw = exchange(served.port, request_bytes(
        CHAT, b"\x1f\x8b\x08\x00", {**auth(served), "content-encoding": "gzip"}))
    assert status == 415
    assert error_of("openai", raw)["code"] == "unsupported_content_encoding"
    _, status, _, raw = exchange(served.port, request_bytes(
        CHAT, b"model=gpt-4o&messages=hi",
        {**auth(served), "content-type": "application/x-www-form-urlencoded"}))
    assert status == 400
    assert "expected application/json" in error_of("openai", raw)["message"]


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
    b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-nul: a\x00b\r\n\r\n",
])
def test_broken_http_gets_a_json_400(served: Served, raw: bytes) -> None:
    _, status, headers, body = exchange(served.port, raw)
    assert status == 400 and headers["connection"] == "close"
    assert error_of("openai", body)["code"] == "invalid_http"
    still_serving(served)


def test_the_header_limit_also_holds_in_the_app(make_gateway: Any, fake: FakeHandle) -> None:
    """Under another server than ``tokenstile serve`` the app still refuses big heads."""
    gateway: Gateway = make_gateway({"server": {"max_header_bytes": 4096}})
    port = int(gateway.url.rsplit(":", 1)[1])
    key = gateway.key()
    raw = request_bytes(CHAT, OK_BODY, {"authorization": f"Bearer {key}",
                                        "x-big": "b" * 10_000})
    _, status, _, body = exchange(port, raw)
    assert status == 431
    assert error_of("openai", body)["code"] == "request_headers_too_large"
    assert gateway.rows() == []  # refused before anyone was authenticated


def test_the_body_timeout_also_holds_in_the_app(make_gateway: Any, fake: FakeHandle) -> None:
    gateway: Gateway = make_gateway({"server": {"body_timeout_s": 0.5}})
    port = int(gateway.url.rsplit(":", 1)[1])
    head = request_bytes(CHAT, b"", {"authorization": f"Bearer {gateway.key()}"})
    head = head.replace(b"content-length: 0", b"content-length: 50")
    started = time.monotonic()
    _, status, _, body = exchange(port, head, trickle=b"{" * 10, gap_s=0.2)
    assert status == 408 and time.monotonic() - started < 3
    assert error_of("openai", body)["code"] == "request_timeout"


def test_a_request_asking_to_upgrade_is_served_as_plain_http(served: Served) -> None:
    """The gateway serves no WebSocket: a request asking to upgrade is answered as plain
    HTTP, in the provider's shape, and leaves nothing in the log (a stranger could repeat
    it at will). httptools stops reading at the upgrade, so a POST's body never arrives:
    the request reads as empty and is refused, at no cost."""
    upgrade = {"connection": "Upgrade", "upgrade": "websocket",
               "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13"}
    log_before = served.log()
    before = {row.id for row in served.rows()}
    for _ in range(3):
        raw = request_bytes("/healthz", b"", upgrade, method="GET")
        _, status, _, body = exchange(served.port, raw)
        assert status == 200 and orjson.loads(body)["status"] == "ok", body
        raw = request_bytes(CHAT, OK_BODY, {**auth(served), **upgrade})
        _, status, _, body = exchange(served.port, raw)
        error = error_of("openai", body)
        assert status == 400 and error["code"] == "invalid_json"
        assert "asks to upgrade the connection (Upgrade: 'websocket')" in error["message"]
    refused = [row for row in served.rows() if row.id not in before]
    assert [(row.status, row.cost_nano) for row in refused] == [(400, 0)] * 3
    assert served.log() == log_before
    still_serving(served)


def test_a_served_worker_never_loads_the_client_of_the_rare_calls(served: Served) -> None:
    """aiohttp (the client of stored responses, batch files, alert webhooks) costs a worker
    about 0.1 s of CPU and 9 MB at startup: a worker that makes none of those calls
    never imports it (the hot call has a client of its own)."""
    still_serving(served)
    assert served.proc.proc is not None
    mapped = Path(f"/proc/{served.proc.proc.pid}/maps").read_text()
    assert "/uvloop/" in mapped  # the check sees the worker's extension modules
    assert "/aiohttp/" not in mapped
