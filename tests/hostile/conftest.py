"""A real ``tokenstile serve`` process for hostile-input tests, and raw-socket helpers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.chaos.procs import GatewayProcess, free_port, write_config
from tests.conftest import UPSTREAM_KEY, FakeHandle, deep_merge
from tokenstile.stores.database import (
    KeyRecord,
    database_from_url,
    hash_key,
    new_key_id,
    new_key_secret,
)
from tokenstile.types import LedgerRow

HOSTILE_SERVER = {"max_header_bytes": 16384, "header_timeout_s": 1.5, "body_timeout_s": 1.5,
                  "write_timeout_s": 1.0, "max_messages": 100, "max_body_bytes": 256 * 1024,
                  "max_json_depth": 32}


class Served:
    """A gateway process with a key of its own; ``rows()`` reads its ledger."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self.database = config["storage"]["database"]
        self.key = asyncio.run(self._make_key())
        path = write_config(directory / "gateway.yaml", config)
        self.proc = GatewayProcess(path, free_port(), directory / "gateway.log")
        self.proc.start()
        self.url = self.proc.url
        self.port = self.proc.port

    async def _make_key(self) -> str:
        db = database_from_url(self.database)
        await db.open()
        try:
            secret = new_key_secret()
            await db.create_key(KeyRecord(id=new_key_id(), hash=hash_key(secret),
                                          prefix=secret[:7], project="hostile", user="mallory",
                                          created_at=time.time()))
            return secret
        finally:
            await db.close()

    def rows(self, settle_s: float = 0.3) -> list[LedgerRow]:
        """The ledger as written so far (rows are batched: give them a moment)."""
        time.sleep(settle_s)

        async def read() -> list[LedgerRow]:
            db = database_from_url(self.database)
            await db.open()
            try:
                return list(await db.ledger_rows(limit=100_000))
            finally:
                await db.close()

        return asyncio.run(read())

    def rss_kb(self) -> int:
        assert self.proc.proc is not None
        for line in Path(f"/proc/{self.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")

    def close(self) -> None:
        self.proc.stop()


@pytest.fixture(scope="module")
def served(fake_server: FakeHandle, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("served")
    config = {
        "upstreams": {
            "openai": {"kind": "openai", "base_url": fake_server.v1, "api_key": UPSTREAM_KEY},
            "anthropic": {"kind": "anthropic", "base_url": fake_server.url,
                          "api_key": UPSTREAM_KEY}},
        "storage": {"database": f"sqlite:///{directory / 'ledger.db'}",
                    "counters": f"sqlite:///{directory / 'counters.db'}"},
        "server": HOSTILE_SERVER,
        "projects": {"hostile": {"daily_limit": 10_000_000}},
    }
    gateway = Served(directory, config)
    yield gateway
    gateway.close()


def make_served(directory: Path, fake: FakeHandle, extra: dict[str, Any]) -> Served:
    base = {
        "upstreams": {"openai": {"kind": "openai", "base_url": fake.v1,
                                 "api_key": UPSTREAM_KEY}},
        "storage": {"database": f"sqlite:///{directory / 'ledger.db'}",
                    "counters": f"sqlite:///{directory / 'counters.db'}"},
    }
    return Served(directory, deep_merge(base, extra))


def exchange(port: int, data: bytes | None, *, trickle: bytes = b"", gap_s: float = 0.2,
             wait_s: float = 10.0) -> tuple[float, int, dict[str, str], bytes]:
    """Send raw bytes (or trickle them), read until the server closes or ``wait_s``;
    (seconds, status, headers, body); status 0 when nothing came back."""
    started = time.monotonic()
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        try:
            if data:
                sock.sendall(data)
            for byte in trickle:
                sock.sendall(bytes([byte]))
                time.sleep(gap_s)
        except OSError:
            pass  # the server may close while we are still sending
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
                if _complete(out):
                    break
        except OSError:
            pass
    return (time.monotonic() - started, *parse_response(out))


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return body.endswith(b"0\r\n\r\n")


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/"):
        return 0, {}, raw
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode().strip().lower()] = value.decode().strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


def request_bytes(path: str, body: bytes, headers: dict[str, str] | None = None,
                  method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    all_headers = {"content-type": "application/json", "content-length": str(len(body)),
                   **(headers or {})}
    lines += [f"{k}: {v}" for k, v in all_headers.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_of(wire: str, body: bytes) -> dict[str, Any]:
    """The error object of a provider-shaped error body; fails if the shape is wrong."""
    payload = orjson.loads(body)
    if wire == "anthropic":
        assert payload["type"] == "error" and set(payload) == {"type", "error"}, payload
        error: dict[str, Any] = payload["error"]
        assert set(error) == {"type", "message"}, payload
    else:
        assert set(payload) == {"error"}, payload
        error = payload["error"]
        assert set(error) == {"message", "type", "param", "code"}, payload
    assert error["message"].startswith("tokenstile: "), error
    return error
