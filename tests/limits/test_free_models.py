"""Free models stay free: a model priced at zero (a local vLLM or Ollama model under
``prices:``) is never stopped, paced or switched to a paid model by a USD budget, however
far spent; budgets that count tokens or requests still hold it. The openai SDK against the
gateway in process, on a fake clock."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import deep_merge
from tests.in_process import InProcess
from tokenstile.stores.database import Override

HI = [{"role": "user", "content": "hello"}]
PRICES = {"local-llama": {"input": 0.0, "output": 0.0},
          "paid-model": {"input": 1000.0, "output": 1000.0}}  # $1 per thousand tokens


async def _gateway(in_process: Any, limit: dict[str, Any], **extra: Any) -> InProcess:
    gw: InProcess = await in_process(deep_merge({"prices": PRICES, "limits": [
        {"name": "daily", "scope": "project", "window": "day", **limit}]}, extra))
    return gw


async def _ask(client: openai.AsyncOpenAI, model: str) -> Any:
    return await client.chat.completions.create(model=model, messages=HI, max_tokens=20)


async def _spend(client: openai.AsyncOpenAI, model: str = "paid-model") -> int:
    """Call until refused; the number of calls answered."""
    for done in range(100):
        try:
            await _ask(client, model)
        except openai.RateLimitError:
            return done
    raise AssertionError("never refused")


async def _set_amount(gw: InProcess, name: str, amount: float) -> None:
    """An operator lowers a budget at runtime (as ``PUT /admin/overrides/limit``)."""
    await gw.runtime.db.set_override(Override("limit", name, {"amount": amount}))
    await gw.runtime.overrides.refresh()


async def test_a_spent_usd_budget_never_blocks_a_model_priced_at_zero(in_process: Any) -> None:
    gw = await _gateway(in_process, {"unit": "usd", "amount": 0.10})
    client = gw.openai(await gw.key())
    assert await _spend(client) >= 1  # the paid model spends the budget until refused
    assert (await _ask(client, "local-llama")).choices
    # Spent past its amount (lowered to nothing at runtime): still free, still answered.
    await _set_amount(gw, "daily", 0)
    for _ in range(3):
        assert (await _ask(client, "local-llama")).choices
    with pytest.raises(openai.RateLimitError) as paid:
        await _ask(client, "paid-model")
    assert "daily USD" in paid.value.message
    rows = await gw.rows()
    free = [r for r in rows if r.requested_model == "local-llama"]
    assert len(free) == 4 and all(r.outcome == "ok" and r.cost_nano == 0 for r in free)
    assert rows[-1].outcome == "blocked" and rows[-1].block_reason == "budget:daily"


@pytest.mark.parametrize("limit", [{"unit": "tokens", "amount": 150},
                                   {"unit": "requests", "amount": 3}])
async def test_a_tokens_or_requests_budget_still_stops_a_free_model(
        in_process: Any, limit: dict[str, Any]) -> None:
    gw = await _gateway(in_process, limit)
    client = gw.openai(await gw.key())
    await _spend(client, "local-llama")  # free calls count tokens and requests too
    with pytest.raises(openai.RateLimitError):
        await _ask(client, "local-llama")
    with pytest.raises(openai.RateLimitError):
        await _ask(client, "paid-model")


async def test_a_free_model_is_neither_paced_nor_switched_to_a_paid_one(
        in_process: Any) -> None:
    gw = await _gateway(in_process, {"unit": "usd", "amount": 0.10, "thresholds": [
        {"threshold": 0.3, "action": "downgrade", "downgrade_to": "paid-model"},
        {"threshold": 0.3, "action": "throttle", "reduction": 0.5},
        {"threshold": 1.0, "action": "block"}]},
        degradation={"throttle_max_wait_s": 0})
    client = gw.openai(await gw.key())
    for _ in range(2):  # past 30 % of the budget (each call reserves about $0.03)
        await _ask(client, "paid-model")
    for _ in range(4):
        answer = await _ask(client, "local-llama")
        assert answer.model == "local-llama"
    rows = await gw.rows()
    free = [r for r in rows if r.requested_model == "local-llama"]
    assert [(r.served_model, r.outcome, r.degraded) for r in free] == \
        [("local-llama", "ok", [])] * 4
