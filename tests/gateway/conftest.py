"""Fixtures of the Gemini and Bedrock gateway tests: the fake as Google (only the gateway's
own key) or as AWS (only requests signed with the gateway's own AWS key), a gateway with it
as its upstream, and ``google-genai`` clients kept alive per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import FakeHandle, Gateway
from tests.gateway.bedrock_clients import AWS_KEY_ID, AWS_SECRET, bedrock_upstream
from tests.gateway.genai_clients import CLIENTS, GOOGLE_KEY, gemini_upstream


@pytest.fixture
def google(fake: FakeHandle) -> Iterator[FakeHandle]:
    """The fake answers only the gateway's own Google key (as Google does)."""
    fake.fake.settings.require_key = GOOGLE_KEY
    yield fake
    fake.fake.settings.require_key = None


@pytest.fixture
def gemini(make_gateway: Any, google: FakeHandle) -> Gateway:
    gateway: Gateway = make_gateway(gemini_upstream(google))
    return gateway


@pytest.fixture(autouse=True)
def _keep_genai_clients() -> Iterator[None]:
    yield
    CLIENTS.clear()


@pytest.fixture
def signing(fake: FakeHandle) -> Iterator[FakeHandle]:
    """The fake answers only requests signed with the gateway's AWS key (as Bedrock does)."""
    fake.fake.settings.aws_credentials = {AWS_KEY_ID: AWS_SECRET}
    yield fake
    fake.fake.settings.aws_credentials = {}


@pytest.fixture
def bedrock(make_gateway: Any, signing: FakeHandle) -> Gateway:
    gateway: Gateway = make_gateway(bedrock_upstream(signing))
    return gateway
