"""Versioned prices: effective dates, negotiated discounts, ``tokenstile prices show`` and
``diff``, an alert when a routed model's price changes, and ``unpriced: fallback``."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml
from click.testing import CliRunner

from tests.admin.conftest import ADMIN_KEY, Admin
from tests.admin.conftest import make_file_gateway as make_file_gateway  # the fixture
from tests.conftest import UPSTREAM_KEY, FakeHandle, deep_merge
from tokenstile.cli import main
from tokenstile.clock import FakeClock
from tokenstile.config import ConfigError, parse_config
from tokenstile.price_table import fingerprint, pricer_from_config
from tokenstile.prices import Pricer
from tokenstile.stores.records import PriceRecord, record_store_from_url
from tokenstile.types import Usage

CHAT = [{"role": "user", "content": "hello"}]
NEW_YEAR = datetime(2031, 1, 1, tzinfo=UTC).timestamp()
VERSIONED = {"gpt-4o-mini": [{"input": 1, "output": 2},
                             {"input": 10, "output": 20, "effective_from": "2031-01-01"}]}


def _cost(price_in: float, price_out: float, row: Any) -> int:
    return round((row.input_tokens * price_in + row.output_tokens * price_out) * 1000)


def test_a_price_applies_from_its_date_and_never_reprices_the_past(
        make_gateway: Any) -> None:
    clock = FakeClock(NEW_YEAR - 3600)
    gateway = make_gateway({"prices": VERSIONED}, clock=clock)
    api = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(), max_retries=0)
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    [before] = gateway.rows()
    assert before.cost_nano == _cost(1, 2, before)
    clock.advance(2 * 3600)  # past midnight UTC: the new version is in force
    api.chat.completions.create(model="gpt-4o-mini", messages=CHAT, max_tokens=5)
    first, after = gateway.rows()
    assert after.cost_nano == _cost(10, 20, after)
    assert (first.id, first.cost_nano) == (before.id, before.cost_nano)  # kept as written
    api.close()


def test_the_memo_never_outlives_a_version() -> None:
    clock = FakeClock(NEW_YEAR - 10)
    pricer = Pricer({"m": ((-math.inf, Pricer.__new__(Pricer) and _price(1)),
                           (NEW_YEAR, _price(5)))}, clock=clock, ttl=3600)
    assert pricer.price_for("m").input == 1  # type: ignore[union-attr]
    clock.advance(11)
    assert pricer.price_for("m").input == 5  # type: ignore[union-attr]
    assert pricer.price_for("m", at=NEW_YEAR - 1).input == 1  # type: ignore[union-attr]
    # A single version with a date: before it, genai-prices' own price.
    later = Pricer({"gpt-4o": ((NEW_YEAR, _price(99)),)}, clock=clock)
    assert later.price_for("gpt-4o", "openai", at=NEW_YEAR - 1).input == Decimal("2.5")  # type: ignore[union-attr]
    assert later.price_for("gpt-4o", "openai").input == 99  # type: ignore[union-attr]


def _price(value: float) -> Any:
    from tokenstile.prices import ModelPrice

    return ModelPrice(input=Decimal(value), output=Decimal(value))


def test_negotiated_discount_applies_in_its_window(make_gateway: Any) -> None:
    gateway = make_gateway({"price_adjustments": [
        {"provider": "openai", "model": "gpt-4o*", "discount_percent": 20,
         "effective_from": "2020-01-01"},
        {"model": "gpt-4o", "discount_percent": 50, "effective_from": "2099-01-01"}]})
    api = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(), max_retries=0)
    api.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=5)
    [row] = gateway.rows()
    listed = Pricer().cost_nano("gpt-4o", Usage(input_tokens=row.input_tokens,
                                                output_tokens=row.output_tokens), "openai")
    assert listed and row.cost_nano == round(listed * 0.8)
    api.close()
    config = parse_config({"price_adjustments": [
        {"provider": "anthropic", "model": "claude-*", "discount_percent": 10}]}, env={})
    pricer = pricer_from_config(config)
    assert pricer.price_for("gpt-4o", "openai") == Pricer().price_for("gpt-4o", "openai")
    assert pricer.price_for("claude-haiku-4-5", "anthropic").input == \
        Pricer().price_for("claude-haiku-4-5", "anthropic").input * Decimal("0.9")  # type: ignore[union-attr]


def test_version_mistakes_are_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"prices": {"m": [{"input": 1}, {"input": 2}]}}, env={})
    assert "only one version may leave out effective_from" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config({"limits": [{"unit": "usd", "amount": 1, "unpriced": "fallback"}]},
                     env={})
    assert "limits[0].fallback_price" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config({"price_adjustments": [{"discount_percent": 5,
                                             "effective_from": "2030-01-02",
                                             "effective_until": "2030-01-01"}]}, env={})
    assert "price_adjustments[0].effective_until" in str(err.value)


def test_prices_show_and_diff(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({
        "routes": [{"match": "gpt-4o-mini", "upstream": "openai"},
                   {"match": "gpt-4o", "upstream": "openai"},
                   {"match": "mine", "upstream": "openai", "model": "my-finetune"}],
        "prices": VERSIONED,
        "price_adjustments": [{"model": "gpt-4o", "discount_percent": 25,
                               "effective_from": "2031-06-01"}]}))
    run = CliRunner()
    shown = run.invoke(main, ["prices", "show", "gpt-4o-mini", "--config", str(path)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert any(line.startswith("- ") and " 1 " in line and "config" in line for line in lines)
    assert any(line.startswith("2031-01-01") and " 10 " in line for line in lines)
    versions = orjson.loads(run.invoke(main, ["prices", "show", "gpt-4o", "--config",
                                              str(path), "--json"]).output)
    assert [(v["since"], v["input"], v["source"].split(" ")[0]) for v in versions] == [
        ("-", "2.5", "genai-prices"), ("2031-06-01", "1.875", "genai-prices")]
    assert "25% off" in versions[1]["source"]
    diff = run.invoke(main, ["prices", "diff", "--config", str(path)])
    assert diff.exit_code == 1, diff.output  # my-finetune has no price anywhere
    table = {line.split()[0]: line for line in diff.output.splitlines()[3:]}
    assert "differs" in table["gpt-4o-mini"] and "0.15 -> 1" in table["gpt-4o-mini"]
    assert "same" in table["gpt-4o"] and "unpriced" in table["mine"]


def _file_config(fake: FakeHandle, tmp_path: Path, price: float) -> dict[str, Any]:
    return {"server": {"admin_key": ADMIN_KEY},
            "upstreams": {"openai": {"kind": "openai", "base_url": fake.v1,
                                     "api_key": UPSTREAM_KEY}},
            "storage": {"counters": "memory://", "database": f"sqlite:///{tmp_path}/file.db"},
            "routes": [{"match": "gpt-4o-mini", "upstream": "openai"},
                       {"match": "gpt-4o", "upstream": "openai"}],
            "prices": {"gpt-4o-mini": {"input": price, "output": 2 * price}}}


def test_a_routed_models_price_change_raises_one_alert(
        make_file_gateway: Any, fake: FakeHandle, tmp_path: Path) -> None:
    # As if an older genai-prices had priced gpt-4o differently when last recorded.
    async def seed() -> None:
        store = record_store_from_url(f"sqlite:///{tmp_path}/file.db")
        await store.open()
        await store.save_prices([PriceRecord("gpt-4o", "", "input=2 output=8", 0.0)])
        await store.close()

    asyncio.run(seed())
    gateway = make_file_gateway(_file_config(fake, tmp_path, 1))
    admin = Admin(gateway.url)

    def price_alerts() -> list[dict[str, Any]]:
        gateway.run(gateway.runtime.alerts.flush())
        return [a for a in admin.get("/alerts")["data"] if a["kind"] == "price_change"]

    [package] = price_alerts()  # gpt-4o-mini was first seen: recorded, no alert
    assert package["data"]["model"] == "gpt-4o" and package["data"]["before"] == \
        "input=2 output=8" and "input=2.5 output=10" in package["data"]["after"]
    gateway.write(_file_config(fake, tmp_path, 3))
    admin.call("POST", "/config/reload")
    alerts = price_alerts()
    assert len(alerts) == 2
    changed = next(a for a in alerts if a["data"]["model"] == "gpt-4o-mini")
    assert changed["data"]["before"] == "input=1 output=2"
    assert changed["data"]["after"] == "input=3 output=6"
    admin.call("POST", "/config/reload")  # nothing changed: no new alert
    assert len(price_alerts()) == 2


def test_unpriced_model_refused_or_counted_at_the_fallback_price(make_gateway: Any) -> None:
    routes = {"routes": [{"match": "mine", "upstream": "openai", "model": "my-finetune"}]}
    refusing = make_gateway(deep_merge(routes, {"limits": [
        {"name": "daily", "scope": "project", "unit": "usd", "amount": 5}]}))
    api = openai.OpenAI(base_url=refusing.v1, api_key=refusing.key(), max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        api.chat.completions.create(model="mine", messages=CHAT, max_tokens=5)
    assert "no price is known for the model 'my-finetune'" in refused.value.message
    api.close()
    gateway = make_gateway(deep_merge(routes, {"limits": [
        {"name": "daily", "scope": "project", "unit": "usd", "amount": 0.0001,
         "unpriced": "fallback",
         "fallback_price": {"input_per_mtok": 3, "output_per_mtok": 15}}]}))
    api = openai.OpenAI(base_url=gateway.v1, api_key=gateway.key(), max_retries=0)
    api.chat.completions.create(model="mine", messages=CHAT, max_tokens=5)
    [row] = gateway.rows()
    assert {"unpriced_model", "priced_at_fallback"} <= set(row.flags)
    assert row.cost_nano == _cost(3, 15, row) > 0
    # The budget counted it: $0.0001 holds a few such calls, then refuses.
    with pytest.raises(openai.RateLimitError):
        for _ in range(20):
            api.chat.completions.create(model="mine", messages=CHAT, max_tokens=5)
    api.close()


def test_recorded_fingerprint_is_stable() -> None:
    assert fingerprint(None) == "unpriced"
    price = Pricer().price_for("gpt-4o", "openai")
    assert fingerprint(price) == fingerprint(Pricer().price_for("gpt-4o", "openai"))
    assert fingerprint(price).startswith("input=2.5 output=10 cached_input=1.25")
