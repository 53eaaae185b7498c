"""Budgets per agent run (``x-tokenstile-run``) end to end: the openai SDK against the
gateway in process, on a fake clock; then the pure parts (headers, scoping) alone."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import deep_merge
from tests.in_process import InProcess
from tokenstile.config import RunsConfig
from tokenstile.errors import GatewayError
from tokenstile.limits.runs import parse_budget, read_run, run_of, run_scope_id
from tokenstile.types import Caller, usd_to_nano

ADMIN = "admin-secret-for-runs"
HI = [{"role": "user", "content": "plan the next step"}]
# A dollar per thousand tokens: every call costs a few cents, exactly as counted.
PRICES = {"agent-model": {"input": 1000.0, "output": 1000.0}}
BUDGET_USD = 0.20


@pytest.fixture
def make(in_process: Any) -> Callable[[dict[str, Any]], Awaitable[InProcess]]:
    """The in-process gateway with an admin key and this file's prices."""
    return lambda extra: in_process(
        deep_merge({"server": {"admin_key": ADMIN}, "prices": PRICES}, extra))


async def _step(client: openai.AsyncOpenAI, run: str, **headers: str) -> Any:
    return await client.chat.completions.create(
        model="agent-model", messages=HI, max_tokens=20,
        extra_headers={"x-tokenstile-run": run, **headers})


async def _loop(client: openai.AsyncOpenAI, run: str, steps: int = 60, **headers: str
                ) -> tuple[int, openai.RateLimitError | None]:
    """An agent loop: call until the gateway says stop (or ``steps`` calls were made)."""
    for done in range(steps):
        try:
            await _step(client, run, **headers)
        except openai.RateLimitError as stop:
            return done, stop
    return steps, None


async def _admin_runs(gw: InProcess, token: str = ADMIN, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=gw.transport, base_url="http://gateway") as http:
        return await http.get("/admin/runs", params=params,
                              headers={"authorization": f"Bearer {token}"})


async def test_an_agent_loop_stops_at_its_run_budget_while_another_run_goes_on(
        make: Any) -> None:
    gw = await make({"runs": {"budget_usd": BUDGET_USD, "ttl": "1h"}})
    key = await gw.key()
    client = gw.openai(key)
    done, stop = await _loop(client, "run-a")
    assert stop is not None and 3 <= done < 60
    assert stop.code == "run_budget_exceeded"
    assert "run 'run-a'" in stop.message and "$0.20 per-run USD" in stop.message
    assert "start a new run" in stop.message
    assert stop.response.headers["x-should-retry"] == "false"  # the SDKs do not retry it
    assert stop.response.headers["x-tokenstile-budget-scope"] == "run:run-a:run:usd"
    rows = await gw.rows()
    spent = sum(r.cost_nano for r in rows if r.run_id == "run-a")
    assert 0 < spent <= usd_to_nano(BUDGET_USD)  # never past the budget
    assert [r.outcome for r in rows][-1] == "blocked"
    assert rows[-1].block_reason == "budget:runs.budget_usd" and rows[-1].run_id == "run-a"
    # Another run of the same key has a budget of its own.
    assert (await _step(client, "run-b")).choices
    # The header can lower a run's budget, never raise it: a stopped run stays stopped.
    with pytest.raises(openai.RateLimitError):
        await _step(client, "run-a", **{"x-tokenstile-run-budget": "$100"})
    flagged = (await gw.rows())[-1]
    assert "run_budget_header_ignored" in flagged.flags
    short, stopped = await _loop(client, "run-c", **{"x-tokenstile-run-budget": "0.05 usd"})
    assert stopped is not None and short < done
    assert "x-tokenstile-run-budget" in stopped.message
    # A run forgotten (its ttl passed without a call) starts again.
    gw.clock.advance(3601)
    assert (await _step(client, "run-a")).choices


async def test_a_run_id_is_its_callers_own(make: Any) -> None:
    gw = await make({"runs": {"budget_tokens": 120, "ttl": "30m"}})
    alice, bob = gw.openai(await gw.key(user="alice")), gw.openai(await gw.key(user="bob"))
    _, stop = await _loop(alice, "shared-id")
    assert stop is not None and "of its 120 per-run tokens" in stop.message
    # Bob sending the same id spends a run of his own, not Alice's.
    assert (await _step(bob, "shared-id")).choices
    # The admin sees both runs with their spend; a key sees its own alone.
    listed = (await _admin_runs(gw)).json()["data"]
    assert len(listed) == 2 and {r["run_id"] for r in listed} == {"shared-id"}
    by_calls = sorted(listed, key=lambda r: r["requests"])
    assert by_calls[0]["requests"] == 1 and by_calls[0]["blocked"] == 0
    assert by_calls[1]["blocked"] == 1 and by_calls[1]["live"]
    [budget] = by_calls[1]["budgets"]
    assert budget["amount"] == 120 and 0 < budget["used"] <= 120
    bob_key = listed[0]["key_id"] if listed[0]["requests"] == 1 else listed[1]["key_id"]
    secret = await gw.key(user="carol")
    mine = (await _admin_runs(gw, token=secret)).json()["data"]
    assert mine == []  # carol's key has no run, and sees no one else's
    other = await _admin_runs(gw, token=secret, key_id=bob_key)
    assert other.status_code == 403


async def test_run_headers_without_a_configured_budget(make: Any) -> None:
    gw = await make({})
    client = gw.openai(await gw.key())
    await _step(client, "recorded-only")  # no budget anywhere: the run is only recorded
    _, stop = await _loop(client, "own-budget", **{"x-tokenstile-run-budget": "100 tokens"})
    assert stop is not None and "of its 100 per-run tokens" in stop.message
    with pytest.raises(openai.BadRequestError) as bare:
        await _step(client, "x", **{"x-tokenstile-run-budget": "0.5"})  # USD or tokens?
    assert "needs one run budget" in bare.value.message
    with pytest.raises(openai.BadRequestError):
        await _step(client, "has space")
    rows = await gw.rows()
    assert rows[0].run_id == "recorded-only" and rows[0].outcome == "ok"


async def _budgets_page(gw: InProcess, key: str) -> str:
    """The dashboard's Budgets page, logged in with ``key`` as a browser does it."""
    async with httpx.AsyncClient(transport=gw.transport, base_url="http://gateway") as web:
        form = (await web.get("/dashboard/login")).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf is not None
        await web.post("/dashboard/login", data={"key": key, "csrf": csrf.group(1),
                                                 "next": "/dashboard/"})
        page = await web.get("/dashboard/budgets")
        assert page.status_code == 200
        return page.text


async def test_the_dashboard_lists_runs(make: Any) -> None:
    gw = await make({"runs": {"budget_usd": BUDGET_USD}})
    mine = await gw.key()
    await _step(gw.openai(mine), "dash-run")
    async with httpx.AsyncClient(transport=gw.transport, base_url="http://gateway") as http:
        view = await http.get("/admin/dashboard/budgets",
                              headers={"authorization": f"Bearer {ADMIN}"})
    [run] = view.json()["runs"]
    assert run["run_id"] == "dash-run" and run["requests"] == 1 and run["cost_nano"] > 0
    assert 'data-run="dash-run"' in await _budgets_page(gw, ADMIN)
    assert 'data-run="dash-run"' in await _budgets_page(gw, mine)
    other = await gw.key()  # same project, another key: not its run
    assert 'data-run="dash-run"' not in await _budgets_page(gw, other)


# -- the pure parts ---------------------------------------------------------------------


def test_budget_headers_are_read_in_either_unit() -> None:
    usd, tokens = RunsConfig(budget_usd=2.0), RunsConfig(budget_tokens=1000)
    assert parse_budget("$0.50", tokens) == ("usd", usd_to_nano(0.5))
    assert parse_budget("0.5 USD", tokens) == ("usd", usd_to_nano(0.5))
    assert parse_budget("250 tokens", usd) == ("tokens", 250)
    assert parse_budget("0.25", usd) == ("usd", usd_to_nano(0.25))
    assert parse_budget("250", tokens) == ("tokens", 250)
    for bad in ("-1", "$5 tokens", "1e3", "2.5 tokens", "lots", ""):
        with pytest.raises(GatewayError):
            parse_budget(bad, usd)
    with pytest.raises(GatewayError):
        read_run({"x-tokenstile-run-budget": "$1"}, usd)  # a budget for which run?
    assert read_run({}, usd) == (None, None)
    assert read_run({"x-tokenstile-run": " job-7 "}, usd) == ("job-7", None)
    with pytest.raises(GatewayError):
        read_run({"x-tokenstile-run": "a/b"}, usd)


def test_a_run_is_scoped_to_its_key_or_passthrough_project() -> None:
    key = Caller(key_id="key_1")
    assert run_scope_id(key, "r") == "key_1/r" != run_scope_id(Caller(key_id="key_2"), "r")
    assert run_of(run_scope_id(key, "r:1")) == "r:1"
    passthrough = Caller(organization="acme", project="pt")
    assert run_scope_id(passthrough, "r") == "acme.pt/r"


def test_a_run_ttl_is_a_duration_up_to_a_year() -> None:
    assert [RunsConfig(ttl=t).ttl_s for t in ("90s", "30m", "1h", "2d", "600")] == \
        [90, 1800, 3600, 172800, 600]
    for bad in ("0m", "400d", "1w", "soon", "-5s"):
        with pytest.raises(ValueError):
            RunsConfig(ttl=bad)
