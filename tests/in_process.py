"""The request path in process: the official SDKs talk to the ASGI app through httpx's
ASGI transport (no server, no port), on a fake clock that the tests move by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx2 as httpx
import openai

from tokenstile.app import TokenstileApp
from tokenstile.clock import FakeClock
from tokenstile.config import parse_config
from tokenstile.gateway.runtime import Runtime
from tokenstile.stores.database import KeyRecord, hash_key, new_key_id, new_key_secret
from tokenstile.types import LedgerRow


class InProcess:
    """A runtime and its app in the test's own event loop."""

    def __init__(self, runtime: Runtime, clock: FakeClock) -> None:
        self.runtime = runtime
        self.clock = clock
        self.app = TokenstileApp(runtime)
        self.transport = httpx.ASGITransport(app=self.app)

    async def key(self, project: str = "demo", user: str = "alice") -> str:
        secret = new_key_secret()
        await self.runtime.db.create_key(KeyRecord(
            id=new_key_id(), hash=hash_key(secret), prefix=secret[:7],
            organization="default", project=project, user=user, created_at=0.0))
        return secret

    def openai(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=key, max_retries=0,
                                  http_client=httpx.AsyncClient(transport=self.transport))

    def anthropic(self, key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url="http://gateway", api_key=key, max_retries=0,
            http_client=httpx.AsyncClient(transport=self.transport))

    async def rows(self) -> list[LedgerRow]:
        await self.runtime.ledger.flush()
        return list(reversed(await self.runtime.db.ledger_rows(limit=1000)))


MakeInProcess = Callable[[dict[str, Any]], Awaitable[InProcess]]


@asynccontextmanager
async def in_process_gateways(config: Callable[[int, dict[str, Any]], dict[str, Any]]
                              ) -> AsyncIterator[MakeInProcess]:
    """``build(extra)`` starts an in-process gateway on ``config(how many were built before,
    extra)``, each on a fake clock of its own; all are stopped on the way out."""
    started: list[Runtime] = []

    async def build(extra: dict[str, Any]) -> InProcess:
        clock = FakeClock()
        runtime = Runtime.build(parse_config(config(len(started), extra), "<test>", env={}),
                                clock=clock)
        await runtime.start()
        started.append(runtime)
        return InProcess(runtime, clock)

    yield build
    for runtime in started:
        await runtime.stop()
