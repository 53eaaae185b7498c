"""More than one provider behind one gateway: zero-config from the SDKs' environment
variables, routing of claude-* models, Azure deployments, Anthropic headers, and budgets
that see every provider's calls."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml

from tests.conftest import FakeHandle
from tests.gateway.test_anthropic_sdk import ANTHROPIC_KEY, anthropic_upstream
from tokenstile.config import UpstreamConfig, parse_config
from tokenstile.gateway.asgi import Receive, Scope, Send
from tokenstile.gateway.routing import Router
from tokenstile.gateway.upstream import AZURE_API_VERSION, upstream_headers, upstream_url
from tokenstile.testing.server_thread import RunningServer

CLAUDE = "claude-haiku-4-5"
HELLO: list[Any] = [{"role": "user", "content": "hello"}]
AZURE_KEY = "azure-secret-key-0123456789"


def storage(tmp_path: Path, name: str = "ts") -> dict[str, Any]:
    return {"storage": {"counters": "memory://", "database": f"sqlite:///{tmp_path}/{name}.db"}}


# --- zero-config --------------------------------------------------------------------------


def test_zero_config_anthropic_upstream_defaults_to_the_public_api() -> None:
    config = parse_config({}, "<test>", env={"ANTHROPIC_API_KEY": "sk-ant-env"})
    upstream = config.upstreams["anthropic"]
    assert (upstream.kind, upstream.api_key) == ("anthropic", "sk-ant-env")
    assert upstream_url(upstream, "messages") == "https://api.anthropic.com/v1/messages"
    assert upstream_url(upstream, "count_tokens") == \
        "https://api.anthropic.com/v1/messages/count_tokens"
    target = Router(config).resolve(CLAUDE)
    assert (target.upstream, target.wire) == ("anthropic", "anthropic")
    assert Router(config).resolve("gpt-4o-mini").upstream == "openai"


def test_zero_config_serves_both_sdks_from_the_environment(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    env = {"ANTHROPIC_API_KEY": "sk-ant-from-env", "ANTHROPIC_BASE_URL": fake.url,
           "OPENAI_API_KEY": "sk-openai-from-env", "OPENAI_BASE_URL": fake.v1}
    gateway = make_gateway(parse_config(storage(tmp_path, "zero"), "<test>", env=env))
    key = gateway.key()
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    claude.messages.create(model=CLAUDE, max_tokens=3, messages=HELLO)
    gpt = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    gpt.chat.completions.create(model="gpt-4o-mini", max_tokens=3, messages=HELLO)
    gpt.chat.completions.create(model=CLAUDE, max_tokens=3, messages=HELLO)
    routes = [(r.route, r.headers.get("x-api-key"), r.headers.get("authorization"))
              for r in fake.fake.tally.records]
    assert routes == [
        ("/v1/messages", "sk-ant-from-env", None),
        ("/v1/chat/completions", None, "Bearer sk-openai-from-env"),
        ("/v1/messages", "sk-ant-from-env", None),
    ]
    assert [(r.api, r.upstream) for r in gateway.rows_once_written(3)] == [
        ("messages", "anthropic"), ("chat", "openai"), ("chat", "anthropic")]


# --- routing ------------------------------------------------------------------------------


def router(upstreams: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> Router:
    return Router(parse_config({"upstreams": upstreams, "routes": routes or []}, "<test>",
                               env={}))


OPENAI = {"kind": "openai", "base_url": "http://127.0.0.1:1/v1"}
ANTHROPIC = {"kind": "anthropic", "base_url": "http://127.0.0.1:2"}


def test_claude_models_go_to_the_anthropic_upstream_unless_a_route_says_otherwise() -> None:
    plain = router({"openai": OPENAI, "anthropic": ANTHROPIC})
    assert plain.resolve("claude-sonnet-4-6").upstream == "anthropic"
    assert plain.resolve("gpt-4o").upstream == "openai"
    routed = router({"openai": OPENAI, "anthropic": ANTHROPIC, "openrouter": OPENAI},
                    [{"match": "claude-*", "upstream": "openrouter"}])
    target = routed.resolve("claude-sonnet-4-6")
    assert (target.upstream, target.wire) == ("openrouter", "openai")


def test_the_anthropic_upstream_is_found_by_kind_and_absent_means_openai() -> None:
    assert router({"main": OPENAI, "claude": ANTHROPIC}).resolve(CLAUDE).upstream == "claude"
    # an OpenAI-compatible server that serves Claude (a proxy) gets claude-* too
    assert router({"proxy": OPENAI}).resolve(CLAUDE).upstream == "proxy"
    only_claude = router({"claude": ANTHROPIC})
    with pytest.raises(Exception, match="no upstream serves the model 'gpt-4o'"):
        only_claude.resolve("gpt-4o")


# --- upstream URLs and headers ------------------------------------------------------------


def upstream(**fields: Any) -> UpstreamConfig:
    return UpstreamConfig(**fields)


def test_azure_urls_for_deployments_the_v1_api_and_a_fixed_deployment() -> None:
    base = "https://res.openai.azure.com/openai"
    deployments = upstream(kind="azure", base_url=base)
    assert upstream_url(deployments, "chat", "prod-4o") == \
        f"{base}/deployments/prod-4o/chat/completions?api-version={AZURE_API_VERSION}"
    assert upstream_url(deployments, "embeddings", "emb") == \
        f"{base}/deployments/emb/embeddings?api-version={AZURE_API_VERSION}"
    pinned = upstream(kind="azure", base_url=base, api_version="2025-01-01-preview")
    assert upstream_url(pinned, "chat", "a/b") == \
        f"{base}/deployments/a%2Fb/chat/completions?api-version=2025-01-01-preview"
    v1 = upstream(kind="azure", base_url=base + "/v1")
    assert upstream_url(v1, "chat", "gpt-4o") == f"{base}/v1/chat/completions"
    fixed = upstream(kind="azure", base_url=base + "/deployments/prod-4o", api_version="x")
    assert upstream_url(fixed, "chat", "ignored") == \
        f"{base}/deployments/prod-4o/chat/completions?api-version=x"


def test_each_upstream_gets_its_own_auth_and_provider_headers() -> None:
    client = {"anthropic-version": "2023-06-01", "anthropic-beta": "b1", "openai-beta": "o1",
              "authorization": "Bearer ts-caller", "cookie": "c"}
    to_claude = upstream_headers(upstream(kind="anthropic", base_url="http://a", api_key="k1"),
                                 client, None)
    assert to_claude == {"content-type": "application/json", "anthropic-version": "2023-06-01",
                         "anthropic-beta": "b1", "x-api-key": "k1"}
    assert upstream_headers(upstream(kind="anthropic", base_url="http://a"), {}, "own")[
        "anthropic-version"] == "2023-06-01"
    to_openai = upstream_headers(upstream(kind="openai", base_url="http://o", api_key="k2"),
                                 client, None)
    assert to_openai == {"content-type": "application/json", "openai-beta": "o1",
                         "authorization": "Bearer k2"}
    to_azure = upstream_headers(upstream(kind="azure", base_url="http://z", api_key="k3"),
                                client, None)
    assert to_azure["api-key"] == "k3" and "authorization" not in to_azure
    assert "anthropic-version" not in to_azure


# --- Azure against the fake ---------------------------------------------------------------


class AzureFront:
    """Azure's URL layout in front of the fake: records each path and query, then hands
    the request to the fake at the OpenAI path it serves."""

    _PATH = re.compile(r"/openai(?:/deployments/[^/]+|/v1)(/.*)")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            self.seen.append((path, scope.get("query_string", b"").decode()))
            match = self._PATH.fullmatch(path)
            if match:
                scope = {**scope, "path": "/v1" + match.group(1),
                         "raw_path": ("/v1" + match.group(1)).encode()}
        await self.inner(scope, receive, send)


@pytest.fixture
def azure_front(fake: FakeHandle) -> Iterator[tuple[AzureFront, str]]:
    front = AzureFront(fake.fake.app)
    server = RunningServer(front)
    url = server.start()
    try:
        yield front, url
    finally:
        server.stop()


def test_azure_deployments_api_version_and_api_key(
        make_gateway: Any, fake: FakeHandle, azure_front: tuple[AzureFront, str]) -> None:
    front, url = azure_front
    gateway = make_gateway({
        "upstreams": {"azure": {"kind": "azure", "base_url": url + "/openai",
                                "api_key": AZURE_KEY, "api_version": "2024-10-21"}},
        "routes": [{"match": "gpt-4o-mini", "upstream": "azure", "model": "prod-4o-mini"},
                   {"match": "text-embedding-3-small", "upstream": "azure",
                    "model": "prod-embed"}],
        "prices": {"prod-4o-mini": {"input": 0.15, "output": 0.6},
                   "prod-embed": {"input": 0.02}},
    })
    key = gateway.key()
    api = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    api.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=4)
    list(api.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=3,
                                     stream=True))
    api.embeddings.create(model="text-embedding-3-small", input="hello")
    assert front.seen == [
        ("/openai/deployments/prod-4o-mini/chat/completions", "api-version=2024-10-21"),
        ("/openai/deployments/prod-4o-mini/chat/completions", "api-version=2024-10-21"),
        ("/openai/deployments/prod-embed/embeddings", "api-version=2024-10-21"),
    ]
    records = fake.fake.tally.records
    for record in records:
        assert record.headers["api-key"] == AZURE_KEY
        assert "authorization" not in record.headers and key not in str(record.headers)
    rows = gateway.rows()
    assert [(r.upstream, r.served_model, r.output_tokens) for r in rows] == [
        ("azure", "prod-4o-mini", 4), ("azure", "prod-4o-mini", 3), ("azure", "prod-embed", 0)]
    for row, record in zip(rows, records, strict=True):
        assert row.input_tokens == record.input_tokens and not row.estimated
        assert row.cost_nano > 0 and "unpriced_model" not in row.flags


def test_azure_v1_api_keeps_the_model_in_the_body(
        make_gateway: Any, fake: FakeHandle, azure_front: tuple[AzureFront, str]) -> None:
    front, url = azure_front
    gateway = make_gateway({"upstreams": {"azure": {"kind": "azure",
                                                    "base_url": url + "/openai/v1",
                                                    "api_key": AZURE_KEY}},
                            "routes": [{"match": "gpt-*", "upstream": "azure"}]})
    key = gateway.key()
    openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=2)
    assert front.seen == [("/openai/v1/chat/completions", "")]
    record = fake.fake.tally.last
    assert record is not None and record.body["model"] == "gpt-4o-mini"
    assert record.headers["api-key"] == AZURE_KEY


# --- OpenAI-compatible servers (vLLM, Ollama) ---------------------------------------------


def test_an_openai_compatible_server_serves_its_routed_models(
        make_gateway: Any, fake: FakeHandle) -> None:
    gateway = make_gateway({
        "upstreams": {"ollama": {"kind": "openai", "base_url": fake.v1}},
        "routes": [{"match": "llama*", "upstream": "ollama"}],
        "prices": {"llama*": {"input": 0, "output": 0}},
    })
    key = gateway.key()
    reply = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0) \
        .chat.completions.create(model="llama3.1:8b", messages=HELLO, max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    record = fake.fake.tally.last
    assert record is not None and "authorization" not in record.headers  # no key configured
    [row] = gateway.rows()
    assert (row.upstream, row.cost_nano, row.output_tokens) == ("ollama", 0, 3)


# --- one budget, every provider -----------------------------------------------------------


async def test_a_budget_shared_by_openai_and_anthropic_calls_never_overshoots(
        make_gateway: Any, fake: FakeHandle) -> None:
    limit = 3000
    gateway = make_gateway({**anthropic_upstream(fake),
                            "projects": {"mix": {"daily_limit": limit}}})
    key = gateway.key(project="mix")
    prompt = [{"role": "user", "content": "hi [[fake:delay_ms=20]]"}]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 30,
                                  "messages": prompt}),
        ("/v1/messages", {"model": CLAUDE, "max_tokens": 30, "messages": prompt}),
        ("/v1/chat/completions", {"model": CLAUDE, "max_tokens": 30, "messages": prompt}),
        ("/v1/messages", {"model": CLAUDE, "max_tokens": 30, "messages": prompt,
                          "stream": True}),
    ] * 60

    async def one(session: aiohttp.ClientSession, path: str, body: dict[str, Any]
                  ) -> tuple[str, int]:
        async with session.post(gateway.url + path, json=body,
                                headers={"authorization": f"Bearer {key}"}) as resp:
            payload = await resp.read()
            if resp.status == 429 and path == "/v1/messages":
                assert b'"rate_limit_error"' in payload and b'"type":"error"' in payload
            return path + ":" + str(body["model"]), resp.status

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(one(session, path, body) for path, body in calls))
    statuses = [status for _, status in results]
    assert set(statuses) == {200, 429}
    served_kinds = {kind for kind, status in results if status == 200}
    assert len(served_kinds) == 3  # each provider and the translation got some budget
    tally = fake.fake.tally
    served = tally.input_tokens + tally.output_tokens
    assert served <= limit
    assert {r.route for r in tally.records} == {"/v1/chat/completions", "/v1/messages"}
    rows = await asyncio.to_thread(gateway.rows)
    assert sum(r.input_tokens + r.output_tokens for r in rows if r.status == 200) == served
    assert sum(r.input_tokens + r.output_tokens for r in rows) == served
    assert not any(r.estimated for r in rows if r.status == 200)
    assert ANTHROPIC_KEY not in str([r.detail for r in rows])


def test_the_readme_providers_example_is_a_valid_config() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Anthropic and other providers", 1)[1].split("\n## ", 1)[0]
    [example] = [block for block in re.findall(r"```yaml\n(.*?)```", section, re.S)
                 if "upstreams:" in block]
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a", "AZURE_OPENAI_API_KEY": "az"}
    config = parse_config(yaml.safe_load(example), "README", env=env)
    routes = Router(config)
    assert {name: u.kind for name, u in config.upstreams.items()} == {
        "openai": "openai", "anthropic": "anthropic", "azure": "azure", "vllm": "openai",
        "ollama": "openai"}
    assert routes.resolve("claude-opus-4-5").upstream == "anthropic"
    assert routes.resolve("smart").wire == "anthropic"
    gpt = routes.resolve("gpt-4o")
    assert upstream_url(gpt.config, "chat", gpt.model) == (
        "https://my-resource.openai.azure.com/openai/deployments/prod-gpt-4o/chat/completions"
        "?api-version=2024-10-21")
    assert routes.resolve("llama3.1:8b").upstream == "ollama"
