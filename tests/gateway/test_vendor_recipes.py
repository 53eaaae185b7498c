"""The OpenAI-compatible vendor recipes of docs/providers.md stay true: each YAML block is
loaded with the gateway's own config loader, its base_url pointed at the fake upstream
speaking that vendor's dialect, and a whole and a streamed call from the ``openai`` SDK go
through the gateway; each ledger row names the vendor's upstream and model, and costs what
genai-prices (or the recipe's own price) says, computed here independently."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import genai_prices
import openai
import pytest
import yaml

from tests.conftest import FakeHandle, Gateway
from tokenstile.admin.usage import upstream_providers
from tokenstile.config import Config, load_config
from tokenstile.gateway.routing import Router
from tokenstile.prices import upstream_provider
from tokenstile.testing.fake_upstream import FakeRecord
from tokenstile.types import LedgerRow
from tokenstile.unpriced import unpriced_models

DOC = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
SECTION = "## OpenAI-compatible vendors"
VENDOR_KEY = "sk-vendor-secret-0123456789"
SPEND = {"name": "spend", "scope": "project", "window": "day", "unit": "usd", "amount": 100}
PROMPT = [{"role": "user", "content": "Say something about tokens."}]


@dataclass(frozen=True)
class Vendor:
    """What is known of a vendor, independently of the recipe: the upstream the recipe
    names, genai-prices' provider id (None: self-hosted), the key's variable, a model its
    routes serve, how the fake answers as this vendor does, the headers it is sent."""

    upstream: str
    provider: str | None
    key_env: str | None
    model: str
    dialect: dict[str, object] = field(default_factory=dict)
    refuses_stream_options: bool = False
    headers: dict[str, str] = field(default_factory=dict)


VENDORS = {
    "Groq": Vendor("groq", "groq", "GROQ_API_KEY", "llama-3.3-70b-versatile",
                   {"usage_dialect": "groq"}),
    "Mistral": Vendor("mistral", "mistral", "MISTRAL_API_KEY", "mistral-small-latest",
                      {"usage_dialect": "mistral", "refuse_stream_options": True},
                      refuses_stream_options=True),
    "DeepSeek": Vendor("deepseek", "deepseek", "DEEPSEEK_API_KEY", "deepseek-chat",
                       {"usage_dialect": "deepseek", "cached_tokens": 8}),
    "Together": Vendor("together", "together", "TOGETHER_API_KEY",
                       "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    "OpenRouter": Vendor("openrouter", "openrouter", "OPENROUTER_API_KEY",
                         "meta-llama/llama-3.3-70b-instruct",
                         headers={"http-referer": "https://app.example.com",
                                  "x-title": "Example App"}),
    "xAI": Vendor("xai", "x-ai", "XAI_API_KEY", "grok-3-mini",
                  {"usage_dialect": "xai", "reasoning_tokens": 20}),
    "vLLM": Vendor("vllm", None, "VLLM_API_KEY", "meta-llama/Llama-3.1-8B-Instruct"),
    "Ollama": Vendor("ollama", None, None, "llama3.2"),
}


def recipes() -> dict[str, dict[str, Any]]:
    """Each ``### Vendor`` of the section: its first YAML block, parsed."""
    section = DOC.read_text().split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]
    out = {}
    for part in section.split("\n### ")[1:]:
        title, body = part.split("\n", 1)
        blocks = re.findall(r"```yaml\n(.*?)```", body, re.S)
        assert blocks, f"{title}: no YAML recipe"
        out[title.strip()] = yaml.safe_load(blocks[0])
    return out


RECIPES = recipes()


def test_every_vendor_has_a_recipe_and_every_recipe_a_vendor() -> None:
    assert set(RECIPES) == set(VENDORS)


def env(vendor: Vendor) -> dict[str, str]:
    return {vendor.key_env: VENDOR_KEY} if vendor.key_env else {}


def load(data: dict[str, Any], tmp_path: Path, vendor: Vendor, name: str) -> Config:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, env=env(vendor))


def pointed_at(recipe: dict[str, Any], fake: FakeHandle, tmp_path: Path,
               **extra: Any) -> dict[str, Any]:
    """The recipe with its upstream at the fake (keeping the provider its own address
    gives), the ledger in a file of the test's, and a USD budget over every call."""
    data = yaml.safe_load(yaml.safe_dump(recipe))  # a deep copy
    for upstream in data["upstreams"].values():
        provider = upstream_provider(upstream.get("kind", "openai"), upstream["base_url"],
                                     upstream.get("provider"))
        upstream["base_url"] = fake.v1
        if provider is not None:
            upstream["provider"] = provider
    data["storage"] = {"counters": "memory://", "database": f"sqlite:///{tmp_path}/v.db"}
    data["limits"] = [SPEND]
    data.update(extra)
    return data


def genai_nano(row: LedgerRow, provider: str) -> int:
    usage = genai_prices.Usage(input_tokens=row.input_tokens,
                               cache_read_tokens=row.cached_input_tokens,
                               output_tokens=row.output_tokens)
    total = genai_prices.calc_price(
        usage, row.served_model or "", provider_id=provider,
        genai_request_timestamp=datetime.fromtimestamp(row.ts, UTC)).total_price
    return int((total * 1_000_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def own_price_nano(recipe: dict[str, Any], row: LedgerRow) -> int:
    """The recipe's own price for a self-hosted model: the ``prices:`` glob that names it."""
    from fnmatch import fnmatchcase

    [price] = [p for pattern, p in recipe["prices"].items()
               if fnmatchcase(row.served_model or "", pattern)]
    usd = (Decimal(str(price["input"])) * row.input_tokens
           + Decimal(str(price["output"])) * row.output_tokens) / 1_000_000
    return int((usd * 1_000_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def spent(gateway: Gateway, project: str) -> int:
    return gateway.settled_counter("spend", project)


def check_sent(record: FakeRecord, vendor: Vendor) -> None:
    headers = record.headers
    if vendor.key_env:
        assert headers["authorization"] == f"Bearer {VENDOR_KEY}"
    else:
        assert "authorization" not in headers
    for name, value in vendor.headers.items():
        assert headers[name] == value


@pytest.mark.parametrize("title", sorted(VENDORS))
def test_the_recipe_routes_and_prices_as_documented(title: str, tmp_path: Path) -> None:
    """The recipe as written: its model goes to the vendor's upstream, at the vendor's
    prices (known from its address), with the key from the environment."""
    vendor = VENDORS[title]
    config = load(RECIPES[title], tmp_path, vendor, "as-written")
    target = Router(config).resolve(vendor.model)
    assert (target.upstream, target.model, target.provider) == (
        vendor.upstream, vendor.model, vendor.provider)
    upstream = config.upstreams[vendor.upstream]
    assert upstream.kind == "openai" and upstream.base_url.startswith("http")
    assert upstream.api_key == (VENDOR_KEY if vendor.key_env else None)
    assert upstream.stream_usage is not vendor.refuses_stream_options
    assert unpriced_models(config) == []  # what `tokenstile check` reports


@pytest.mark.parametrize("title", sorted(VENDORS))
def test_whole_and_streamed_calls_are_billed_as_the_vendor_bills(
        title: str, make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    vendor, recipe = VENDORS[title], RECIPES[title]
    config = load(pointed_at(recipe, fake, tmp_path), tmp_path, vendor, "pointed")
    gateway = make_gateway(config)
    api = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(project="p"), max_retries=0)
    fake.fake.script([vendor.dialect, vendor.dialect])
    reply = api.chat.completions.create(model=vendor.model, messages=PROMPT,  # type: ignore[arg-type]
                                        max_tokens=60)
    whole = fake.fake.tally.last
    assert whole is not None and reply.choices[0].message.content
    chunks = list(api.chat.completions.create(
        model=vendor.model, messages=PROMPT, max_tokens=60, stream=True))  # type: ignore[arg-type]
    streamed = fake.fake.tally.last
    assert streamed is not None and streamed is not whole and streamed.completed
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    asked = streamed.body.get("stream_options")
    assert asked == (None if vendor.refuses_stream_options else {"include_usage": True})
    providers = upstream_providers(config)
    rows = gateway.rows()
    assert [r.streamed for r in rows] == [False, True]
    for row, record in zip(rows, (whole, streamed), strict=True):
        check_sent(record, vendor)
        assert row.status == 200 and row.outcome == "ok" and not row.estimated
        assert row.upstream == vendor.upstream
        assert providers[row.upstream] == (vendor.provider or "openai")
        assert row.requested_model == row.served_model == vendor.model
        # the vendor's own usage, in its dialect, is the bill
        assert (row.input_tokens, row.output_tokens) == (record.input_tokens,
                                                         record.output_tokens)
        assert row.cached_input_tokens == record.cached_tokens
        assert row.reasoning_tokens == record.reasoning_tokens
        expected = genai_nano(row, vendor.provider) if vendor.provider \
            else own_price_nano(recipe, row)
        assert row.cost_nano == expected
        assert "unpriced_model" not in row.flags
    if vendor.provider:
        assert all(r.cost_nano > 0 for r in rows)
    assert spent(gateway, "p") == sum(r.cost_nano for r in rows)  # reservations settled


def test_a_model_together_does_not_list_is_priced_by_the_recipe(
        make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    vendor, recipe = VENDORS["Together"], RECIPES["Together"]
    model = "deepseek-ai/DeepSeek-V3"
    with pytest.raises(LookupError):  # not in genai-prices' together list
        genai_prices.calc_price(genai_prices.Usage(input_tokens=1), model,
                                provider_id="together")
    gateway = make_gateway(load(pointed_at(recipe, fake, tmp_path), tmp_path, vendor, "t"))
    api = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(project="p"), max_retries=0)
    api.chat.completions.create(model=model, messages=PROMPT, max_tokens=30)  # type: ignore[arg-type]
    [row] = gateway.rows()
    price = recipe["prices"]["together/deepseek-v3"]
    usd = (Decimal(str(price["input"])) * row.input_tokens
           + Decimal(str(price["output"])) * row.output_tokens) / 1_000_000
    assert row.upstream == "together" and row.cost_nano == int(usd * 1_000_000_000) > 0


@pytest.mark.parametrize("title", ["vLLM", "Ollama"])
def test_a_self_hosted_model_without_a_price_is_unpriced(
        title: str, make_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    """Without the recipe's ``prices:``: served and recorded at $0 under token budgets,
    refused by a USD limit, billed at a USD limit's fallback price when it names one."""
    vendor = VENDORS[title]
    recipe = {k: v for k, v in RECIPES[title].items() if k != "prices"}
    tokens = {"name": "tokens", "scope": "project", "window": "day", "amount": 100_000}
    fallback = {**SPEND, "unpriced": "fallback",
                "fallback_price": {"input_per_mtok": 1, "output_per_mtok": 2}}
    runs = [("tokens", [tokens]), ("usd", [SPEND]), ("fallback", [fallback])]
    for name, limits in runs:
        data = pointed_at(recipe, fake, tmp_path / name, limits=limits)
        (tmp_path / name).mkdir()
        gateway = make_gateway(load(data, tmp_path, vendor, name))
        api = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(project="p"),
                            max_retries=0)
        call = api.chat.completions.with_raw_response.create
        if name == "usd":
            with pytest.raises(openai.UnprocessableEntityError) as refused:
                call(model=vendor.model, messages=PROMPT, max_tokens=20)  # type: ignore[arg-type]
            assert refused.value.code == "model_unpriced"
            continue
        call(model=vendor.model, messages=PROMPT, max_tokens=20)  # type: ignore[arg-type]
        [row] = gateway.rows()
        assert "unpriced_model" in row.flags and row.output_tokens == 12
        if name == "tokens":
            assert row.cost_nano == 0
        else:
            assert "priced_at_fallback" in row.flags
            assert row.cost_nano == row.input_tokens * 1000 + row.output_tokens * 2000
