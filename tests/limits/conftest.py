"""An in-process gateway (``tests/gateway/test_in_process.py``'s) for the limit tests: the
official SDKs talk to the ASGI app on a fake clock the tests move by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import UPSTREAM_KEY, FakeHandle, deep_merge
from tests.gateway.test_in_process import InProcess
from tokenstile.clock import FakeClock
from tokenstile.config import parse_config
from tokenstile.gateway.runtime import Runtime

MakeInProcess = Callable[[dict[str, Any]], Awaitable[InProcess]]


@pytest.fixture
async def in_process(fake: FakeHandle, tmp_path: Path) -> AsyncIterator[MakeInProcess]:
    started: list[Runtime] = []

    async def build(extra: dict[str, Any]) -> InProcess:
        base = {
            "upstreams": {"openai": {"kind": "openai", "base_url": fake.v1,
                                     "api_key": UPSTREAM_KEY}},
            "storage": {"counters": "memory://",
                        "database": f"sqlite:///{tmp_path}/ts-{len(started)}.db"},
        }
        clock = FakeClock()
        runtime = Runtime.build(parse_config(deep_merge(base, extra), "<test>", env={}),
                                clock=clock)
        await runtime.start()
        started.append(runtime)
        return InProcess(runtime, clock)

    yield build
    for runtime in started:
        await runtime.stop()
