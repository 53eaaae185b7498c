"""Budgets past 2^53 units (about 9 million USD in nano-USD), where a double can no longer
hold every integer: limits, counters and sums stay exact to the unit, on SQLite and real
Redis alike, from the config file to the 429.

The counter contract checks the stores themselves at 2^53 and 2^60
(``tests/stores/test_counters.py``); here the whole gateway does.
"""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest
import redis

from tests.conftest import Gateway
from tests.stores.conftest import REDIS_URL, redis_unreachable_reason
from tokenstile.limits.admission import counter_key
from tokenstile.limits.model import compile_limits, share_of
from tokenstile.limits.status import budget_status

P53, P60 = 2**53, 2**60
LIMIT = P60 + 1  # tokens a day for the organization: a count no double holds


def test_share_of_is_exact_where_a_float_product_is_not() -> None:
    assert share_of(LIMIT) == LIMIT != int(LIMIT * 1.0)
    assert share_of(LIMIT, 0.95) == LIMIT * 19 // 20 != int(LIMIT * 0.95)
    assert share_of(LIMIT, 0.95, 0.8) == LIMIT * 19 * 4 // (20 * 5)
    assert share_of(100, 0.29) == 29  # 100 * 0.29 is 28.999999999999996 as a float
    assert share_of(7, 1.0) == 7


def config(counters: str, fraction: float | None = None) -> dict[str, Any]:
    limit: dict[str, Any] = {"name": "org-day", "scope": "organization", "window": "day",
                             "unit": "tokens", "amount": LIMIT}
    if fraction is not None:
        limit["thresholds"] = [{"threshold": fraction, "action": "block"}]
    return {"storage": {"counters": counters}, "limits": [limit]}


@pytest.fixture(params=["sqlite", "redis"])
def counters(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/counters.db"
        return
    reason = redis_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield f"{REDIS_URL}?prefix={prefix}"
    client = redis.Redis.from_url(REDIS_URL)
    for key in list(client.scan_iter(match=f"{{{prefix}}}*")):
        client.delete(key)
    client.close()


def ask(gateway: Gateway, key: str) -> int:
    client = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=20,
                                       messages=[{"role": "user", "content": "hello"}])
        return 200
    except openai.RateLimitError:
        return 429
    finally:
        client.close()


def test_a_budget_past_2_60_refuses_at_the_exact_unit(make_gateway: Any, counters: str) -> None:
    gateway = make_gateway(config(counters))
    [limit] = [lim for lim in compile_limits(gateway.config) if lim.name == "org-day"]
    assert limit.amount == LIMIT  # the config's whole number, not a float of it
    rt = gateway.runtime
    key, _ = counter_key(limit, "default", rt.clock.now())
    secret = gateway.key()
    # 10 short of the limit: a request reserving ~30 tokens must not fit. As doubles,
    # 2^60 - 9 + 30 and 2^60 + 1 are both 2^60, and it would.
    gateway.run(rt.counters.add([(key, LIMIT - 10, 86_400)]))
    assert ask(gateway, secret) == 429
    assert gateway.run(rt.counters.read([key])) == [LIMIT - 10]
    [refused] = gateway.rows()
    assert refused.block_reason == "budget:org-day"
    # 1,000 short: it fits, and is counted to the unit.
    gateway.run(rt.counters.add([(key, -990, 86_400)]))
    assert ask(gateway, secret) == 200
    served = [r for r in gateway.rows() if r.status == 200]
    [row] = served
    gateway.settle_wait()
    assert gateway.run(rt.counters.read([key])) == [
        LIMIT - 1000 + row.input_tokens + row.output_tokens]


def test_budget_views_report_exact_usage_and_hard_amounts(make_gateway: Any,
                                                          counters: str) -> None:
    gateway = make_gateway(config(counters, fraction=0.95))
    rt = gateway.runtime
    [limit] = [lim for lim in rt.admission.limits if lim.name == "org-day"]
    key, _ = counter_key(limit, "default", rt.clock.now())
    gateway.run(rt.counters.add([(key, P53 + 1, 86_400)]))
    [status] = [s for s in gateway.run(budget_status(rt.admission.limits, rt.counters,
                                                     rt.clock.now(),
                                                     {"organization": ["default"]}))
                if s.name == "org-day"]
    assert (status.used, status.amount, status.hard) == (P53 + 1, LIMIT, LIMIT * 19 // 20)
    assert status.as_dict()["remaining"] == LIMIT * 19 // 20 - P53 - 1
