"""The in-process gateway (``test_in_process.InProcess``) for the image, audio, moderation
and batch tests, and a helper to make audio files."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import UPSTREAM_KEY, FakeHandle, deep_merge
from tests.gateway.test_in_process import InProcess
from tokenstile.clock import FakeClock
from tokenstile.config import parse_config
from tokenstile.gateway.runtime import Runtime

Make = Callable[[dict[str, Any]], Awaitable[InProcess]]


@pytest.fixture
async def make(fake: FakeHandle, tmp_path: Path) -> AsyncIterator[Make]:
    started: list[Runtime] = []

    async def build(extra: dict[str, Any]) -> InProcess:
        base = {
            "upstreams": {"openai": {"kind": "openai", "base_url": fake.v1,
                                     "api_key": UPSTREAM_KEY},
                          "anthropic": {"kind": "anthropic", "base_url": fake.url,
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


def wav(seconds: float, rate: int = 16_000) -> bytes:
    """A silent mono 16-bit WAV file lasting ``seconds``."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * int(seconds * rate)))
    return buffer.getvalue()
