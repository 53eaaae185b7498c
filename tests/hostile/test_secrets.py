"""Secrets stay in: traffic of every kind (answers, streams, upstream errors, an upstream
refusing the gateway's key, blocks, bad keys, a client hanging up, malformed bodies, the
admin API, metrics, alerts) with known provider, admin and tokenstile keys; then every
log line (in process, and a ``tokenstile serve`` process's stderr), ledger row, database
file, metric, alert, response header and body is searched for any 8 characters in a row
of any of them (of a tokenstile key, past the 7-character prefix kept to recognise it).
The upstream must never see a tokenstile or admin key."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import FakeHandle, Gateway
from tests.hostile.conftest import make_served

PROVIDER = "sk-prov-" + secrets.token_hex(20)
STALE_PROVIDER = "sk-stale-" + secrets.token_hex(20)
ADMIN = "adm-" + secrets.token_hex(20)
STRANGER = "ts-" + secrets.token_urlsafe(32)  # looks like a key, is none
WINDOW = 8
HI = [{"role": "user", "content": "hello there"}]


class Hook:
    """A webhook receiver for alerts."""

    def __init__(self) -> None:
        received: list[bytes] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(self.rfile.read(int(self.headers["content-length"] or 0)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.close()


@pytest.fixture
def strict_fake(fake: FakeHandle) -> Iterator[FakeHandle]:
    """The fake upstream accepts only the gateway's provider key meanwhile."""
    fake.fake.settings.require_key = PROVIDER
    yield fake
    fake.fake.settings.require_key = None


def config(fake: FakeHandle, hook: Hook) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN, "log_bodies": True},
        "upstreams": {
            "openai": {"kind": "openai", "base_url": fake.v1, "api_key": PROVIDER},
            "anthropic": {"kind": "anthropic", "base_url": fake.url, "api_key": PROVIDER},
            "stale": {"kind": "openai", "base_url": fake.v1, "api_key": STALE_PROVIDER}},
        "routes": [{"match": "gpt-4o", "upstream": "stale"}],
        "projects": {"tight": {"daily_limit": 100, "request_limit": 150}},
        "alerts": [{"threshold": 0.3, "action": "warn", "channels": ["hook", "log"]}],
        "alerting": {"channels": {"hook": {"kind": "webhook", "url": hook.url},
                                  "log": {"kind": "log"}}},
    }


class Transcript:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.keys: list[str] = []

    def add(self, method: str, path: str, status: int, headers: Any, body: bytes) -> None:
        self.parts.append(f"{method} {path} -> {status}\n{dict(headers)!r}\n"
                          f"{body.decode('utf-8', 'replace')}")


async def traffic(base: str) -> Transcript:
    """Every kind of call, against a gateway at ``base``; what came back."""
    out = Transcript()
    admin = {"authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, key: str | None = None, body: Any = None,
                       headers: dict[str, str] | None = None, raw: bytes | None = None,
                       exclude_key: bool = False) -> Any:
            sent = {**({"authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
            data = raw if raw is not None else (None if body is None else orjson.dumps(body))
            async with http.request(method, base + path, data=data, headers={
                    "content-type": "application/json", **sent}) as resp:
                payload = await resp.read()
                parsed = orjson.loads(payload) if payload[:1] in (b"{", b"[") else None
                shown = payload
                if exclude_key and isinstance(parsed, dict) and "key" in parsed:
                    out.keys.append(parsed["key"])  # shown once, on purpose
                    shown = orjson.dumps({k: v for k, v in parsed.items() if k != "key"})
                out.add(method, path, resp.status, resp.headers, shown)
                return parsed

        created = await call("POST", "/admin/keys", body={"project": "demo", "user": "ann"},
                             headers=admin, exclude_key=True)
        demo = created["key"]
        tight = (await call("POST", "/admin/keys", body={"project": "tight", "user": "bo"},
                            headers=admin, exclude_key=True))["key"]
        narrow = (await call("POST", "/admin/keys", body={
            "project": "demo", "allowed_models": ["gpt-4o-mini"]}, headers=admin,
            exclude_key=True))["key"]
        doomed = await call("POST", "/admin/keys", body={"project": "demo"}, headers=admin,
                            exclude_key=True)
        chat = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": HI}
        await call("POST", "/v1/chat/completions", demo, chat)
        await call("POST", "/v1/chat/completions", demo, {**chat, "stream": True})
        await call("POST", "/v1/messages", demo, {**chat, "model": "claude-haiku-4-5"},
                   headers={"anthropic-version": "2023-06-01"})
        await call("POST", "/v1/embeddings", demo, {"model": "text-embedding-3-small",
                                                    "input": "hi"})
        await call("POST", "/v1/chat/completions", demo, {**chat, "messages": [
            {"role": "user", "content": "boom [[fake:status=500]]"}]})
        await call("POST", "/v1/chat/completions", demo, {**chat, "model": "gpt-4o"})
        for _ in range(4):
            await call("POST", "/v1/chat/completions", tight, {**chat, "max_tokens": 30})
        await call("POST", "/v1/chat/completions", tight, {**chat, "max_tokens": 400})
        await call("POST", "/v1/chat/completions", narrow, {**chat, "model": "gpt-4.1-mini"})
        await call("POST", "/admin/keys/" + doomed["id"] + "/revoke", headers=admin, body={})
        await call("POST", "/v1/chat/completions", doomed["key"], chat)
        for bad in (STRANGER, PROVIDER, STALE_PROVIDER, ADMIN[:-1], ADMIN + "x"):
            await call("POST", "/v1/chat/completions", bad, chat)
            await call("POST", "/v1/messages", None, chat, headers={"x-api-key": bad})
            await call("GET", "/admin/keys", bad)
        await call("POST", "/v1/chat/completions", ADMIN, chat)  # the admin key may call
        await call("POST", "/v1/chat/completions", demo, raw=b'{"model": "gpt-4o-mini", ')
        async with http.post(base + "/v1/chat/completions", headers={
                "authorization": f"Bearer {demo}"}, json={**chat, "stream": True, "messages": [
                    {"role": "user", "content": "slow [[fake:chunk_delay_ms=30]]"}]}) as resp:
            await resp.content.readany()
            resp.close()  # hang up mid-stream
        await asyncio.sleep(0.3)
        for path in ("/status", "/config", "/limits", "/keys", "/overrides", "/usage",
                     "/flagged", "/budgets", "/alerts", "/projects", "/users"):
            await call("GET", "/admin" + path, headers=admin)
        flagged = await call("GET", "/admin/flagged", headers=admin)
        for item in (flagged or {}).get("data", [])[:5]:
            if isinstance(item, dict) and "id" in item:
                await call("GET", f"/admin/requests/{item['id']}", headers=admin)
        await call("PUT", "/admin/overrides/limit/projects.tight.daily_limit", headers=admin,
                   body={"amount": 500})
        for path in ("/metrics", "/readyz", "/healthz", "/v1/models"):
            await call("GET", path, demo)
        out.keys += [demo, tight, narrow, doomed["key"]]
    return out


def pieces(secret: str) -> list[str]:
    """Every 8 characters in a row; of a tokenstile key, its first 12 and every 8 after
    the 7-character prefix that is stored to recognise it (``ts-AbCd``)."""
    if secret.startswith("ts-"):
        rest = secret[7:]
        return [secret[:12]] + [rest[i:i + WINDOW] for i in range(len(rest) - WINDOW + 1)]
    return [secret[i:i + WINDOW] for i in range(len(secret) - WINDOW + 1)]


def leaks(text: str, keys: list[str]) -> list[str]:
    found = []
    for secret in [PROVIDER, STALE_PROVIDER, ADMIN, STRANGER, *keys]:
        for piece in pieces(secret):
            if piece in text:
                found.append(f"{secret[:4]}…: {piece!r} at {text.index(piece)}: "
                             f"{text[max(0, text.index(piece) - 80):text.index(piece) + 40]!r}")
                break
    return found


def upstream_saw(fake: FakeHandle) -> str:
    return "\n".join(orjson.dumps(r.to_json(), default=str).decode()
                     for r in fake.fake.tally.records)


def test_no_secret_in_logs_rows_metrics_alerts_or_answers(
        make_gateway: Any, strict_fake: FakeHandle, hook: Hook, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway: Gateway = make_gateway(config(strict_fake, hook))
    transcript = asyncio.run(traffic(gateway.url))
    rows = gateway.rows()
    statuses = {int(p.split(" -> ")[1][:3]) for p in transcript.parts}
    assert {200, 401, 403, 422, 429, 500, 502} <= statuses  # the traffic did what it says
    assert any(r.outcome == "client_disconnect" for r in rows)
    assert hook.received, "no alert was delivered"
    logs = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}"
                     for r in caplog.records)
    assert "refused the gateway's provider key" in logs
    database = b"".join(p.read_bytes() for p in tmp_path.glob("ts-*.db*")).decode("latin-1")
    assert database, "the database file was not found"
    assert leaks(f"..{PROVIDER[10:19]}..", [])  # the search does find a fragment
    surfaces = {
        "answers": "\n".join(transcript.parts), "logs": logs, "ledger": repr(rows),
        "database file": database, "metrics": gateway.runtime.metrics.render().decode(),
        "alerts": b"\n".join(hook.received).decode(),
    }
    for name, text in surfaces.items():
        assert not leaks(text, transcript.keys), f"secret in {name}: {leaks(text, [])}"
    # the upstream gets the provider key, never a tokenstile or the admin key
    seen = upstream_saw(strict_fake)
    assert PROVIDER in seen
    assert not leaks(seen.replace(PROVIDER, "").replace(STALE_PROVIDER, ""), transcript.keys)


def test_no_secret_in_a_served_gateways_stderr(strict_fake: FakeHandle, hook: Hook,
                                               tmp_path: Path) -> None:
    served = make_served(tmp_path, strict_fake, config(strict_fake, hook))
    try:
        transcript = asyncio.run(traffic(served.url))
        rows = served.rows()
    finally:
        served.close()
    stderr = served.log()
    assert "refused the gateway's provider key" in stderr  # warnings do reach stderr
    for name, text in {"stderr": stderr, "answers": "\n".join(transcript.parts),
                       "ledger": repr(rows)}.items():
        assert not leaks(text, [*transcript.keys, served.key]), f"secret in {name}"
