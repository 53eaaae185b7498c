"""The chaos run: three gateways, one fake upstream, a Redis of its own and a ledger, driven
with thousands of mixed requests while a gateway is SIGKILLed and restarted and Redis is
killed and restarted; then the invariants are checked and a report is printed.

    python -m tests.chaos.chaos_run            # the long form (minutes)
    python -m tests.chaos.chaos_run --short    # the short form CI runs (tests/chaos)
    python -m tests.chaos.chaos_run --database-url postgresql://postgres@127.0.0.1:5432/test

With a PostgreSQL URL the run creates a database of its own on that server and drops it at
the end (``--keep`` keeps it, and the work directory).

What is checked (exit status 1 if anything fails):

1. No hard limit exceeded: per fail-closed budget, the tokens the fake upstream served for
   that budget's requests (attributed by a ``chaos:<project>:<n>`` marker in each message)
   are at most its amount. Fail-open budgets are reported, not checked (admitting
   unmetered while Redis is away is what they are configured to do).
2. The ledger equals the fake's tally exactly for every request billed from the
   provider's usage. Rows billed from the gateway's own count (streams cut by the upstream
   or by the client: the gateway bills what it relayed, the fake counts what it emitted)
   are reported with their gap, which must stay within ``GAP_BOUND`` tokens a request; rows
   charged at their estimate after a crash (outcome ``unsettled``), and upstream timeouts
   (charged at their estimate: the upstream may have billed an answer nobody received),
   are reported apart and must never bill less than the fake served for them.
3. No request lost: each one was answered (and has one ledger row under the request id it
   was answered with), or its gateway died under it and it is covered by a recovered
   reservation row, or it never reached the upstream (no tally record: nothing spent).
4. No 5xx beyond the stated outage answers: 502 ``upstream_cut`` / ``upstream_unreachable``,
   503 ``store_unavailable`` (only while Redis was down), 504 ``upstream_timeout``, and the
   scripted upstream 500s passed through. A 500 from the gateway's own code fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.chaos.procs import (
    FakeUpstreamProcess,
    GatewayProcess,
    RedisServer,
    free_port,
    write_config,
)
from tokenstile.stores.database import (
    KeyRecord,
    database_from_url,
    hash_key,
    new_key_id,
    new_key_secret,
)
from tokenstile.types import LedgerRow

PROVIDER_KEY = "sk-chaos-provider-" + "0123456789abcdef" * 2
# A cut stream is billed from what the gateway relayed; the fake counts what it emitted,
# which may be ahead by what sat in socket buffers when the stream ended.
GAP_BOUND = 16
# store_unavailable is a stated answer while Redis is down and for this long after it is
# back (calls fail fast for half a second after a failure, and in-flight ones finish).
REDIS_SLACK_S = 2.0
MARKER = re.compile(r"chaos:(\w+):(\d+)")

# kind -> weight
MIX = {
    "plain": 26, "stream": 22, "slow": 8, "disconnect": 10, "cut": 6, "cut_body": 2,
    "error500": 8, "hang": 4, "stall": 2, "anthropic": 8, "anthropic_stream": 4,
}


@dataclass(frozen=True)
class Budget:
    name: str
    project: str
    users: tuple[str, ...]
    share: float          # of all requests
    fraction: float       # limit as a fraction of the demand expected for it
    failure_mode: str = "closed"
    scope: str = "project"


BUDGETS = (
    Budget("alpha-day", "alpha", ("ann", "abe"), 0.24, 0.35),
    Budget("beta-day", "beta", ("bob",), 0.22, 0.75),
    Budget("gamma-day", "gamma", ("gil",), 0.16, 0.6, failure_mode="open"),
    Budget("dave-day", "delta", ("dave",), 0.18, 0.8, scope="user"),
)
ANTHROPIC_PROJECT = "epsilon"
TOKENS_PER_REQUEST = 45  # rough demand per request, to size the budgets


@dataclass
class Sent:
    """One request as the driver saw it."""

    i: int
    kind: str
    project: str
    gateway: int
    started: float
    ended: float = 0.0
    status: int | None = None
    code: str | None = None
    rid: str | None = None
    failure: str | None = None   # refused, gateway_died, client_disconnected, client_timeout
    stream_error: str | None = None
    complete: bool = False


@dataclass
class Window:
    what: str
    start: float
    end: float = 0.0


@dataclass
class Plan:
    requests: int
    rate: float
    concurrency: int
    events: list[tuple[float, str, float]]  # (progress fraction, event, downtime s)


def plan_for(short: bool, requests: int | None, rate: float | None) -> Plan:
    if short:
        return Plan(requests or 1500, rate or 60.0, 24, [
            (0.18, "kill_gateway:1", 1.5), (0.48, "restart_redis", 1.5),
            (0.72, "kill_gateway:2", 1.5)])
    events: list[tuple[float, str, float]] = []
    for n, at in enumerate((0.08, 0.18, 0.28, 0.38, 0.48, 0.58, 0.68, 0.78, 0.88)):
        events.append((at, "restart_redis" if n % 2 else f"kill_gateway:{n % 3}",
                       2.0 if n % 2 else 3.0))
    events.append((0.93, "kill_gateway_and_redis:1", 2.0))
    return Plan(requests or 12000, rate or 80.0, 48, events)


# -- setting up ----------------------------------------------------------------------------


def chaos_config(fake: FakeUpstreamProcess, counters: str, database: str,
                 limits: dict[str, int], lease_s: float) -> dict[str, Any]:
    budget_limits: list[dict[str, Any]] = []
    for budget in BUDGETS:
        entry: dict[str, Any] = {
            "name": budget.name, "scope": budget.scope,
            "match": budget.users[0] if budget.scope == "user" else budget.project,
            "window": "day", "unit": "tokens", "amount": limits[budget.name]}
        if budget.failure_mode == "open":
            entry["failure_mode"] = "open"
        budget_limits.append(entry)
    budget_limits.append({"name": "epsilon-day", "scope": "project", "match": ANTHROPIC_PROJECT,
                          "window": "day", "unit": "tokens", "amount": 10**9})
    upstream = {"api_key": PROVIDER_KEY, "connect_timeout_s": 2.0, "read_timeout_s": 3.0}
    return {
        "server": {"reservation_lease_s": lease_s, "default_output_tokens": 64},
        "storage": {"counters": counters, "database": database},
        "upstreams": {
            "openai": {"kind": "openai", "base_url": fake.v1, **upstream},
            "anthropic": {"kind": "anthropic", "base_url": fake.url, **upstream},
        },
        "resilience": {"first_byte_timeout_s": 1.5},
        "limits": budget_limits,
        "alerting": {"anomaly": False, "projection": False, "daily_summary": False},
    }


async def create_keys(database: str) -> dict[str, list[tuple[str, str]]]:
    """project -> [(user, key)], written straight into the database."""
    db = database_from_url(database)
    await db.open()
    keys: dict[str, list[tuple[str, str]]] = defaultdict(list)
    try:
        owners = [(b.project, u) for b in BUDGETS for u in b.users]
        owners.append((ANTHROPIC_PROJECT, "eve"))
        for project, user in owners:
            secret = new_key_secret()
            await db.create_key(KeyRecord(
                id=new_key_id(), hash=hash_key(secret), prefix=secret[:7],
                organization="default", project=project, user=user,
                created_at=time.time()))
            keys[project].append((user, secret))
    finally:
        await db.close()
    return keys


async def read_ledger(database: str) -> list[LedgerRow]:
    db = database_from_url(database)
    await db.open()
    try:
        return list(await db.ledger_rows(limit=10**8))
    finally:
        await db.close()


class PostgresScratch:
    """A database of the run's own on the server of ``url``."""

    def __init__(self, url: str) -> None:
        self.admin_url = url
        self.name = f"tokenstile_chaos_{uuid.uuid4().hex[:10]}"
        base, _, query = url.partition("?")
        self.url = base.rsplit("/", 1)[0] + "/" + self.name + (f"?{query}" if query else "")

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self) -> None:
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


# -- driving -------------------------------------------------------------------------------


class Driver:
    def __init__(self, plan: Plan, gateways: list[GatewayProcess],
                 keys: dict[str, list[tuple[str, str]]], seed: int) -> None:
        self.plan = plan
        self.gateways = gateways
        self.keys = keys
        self.rng = random.Random(seed)
        self.sent: list[Sent] = []
        self.launched = 0
        self.progress = asyncio.Condition()
        self.t0 = time.monotonic()

    async def reached(self, count: float) -> None:
        async with self.progress:
            await self.progress.wait_for(lambda: self.launched >= count)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _choose(self, i: int) -> tuple[str, str, str, dict[str, Any], dict[str, str], str]:
        """kind, project, path, body, headers for request ``i``."""
        rng = self.rng
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        if kind.startswith("anthropic"):
            project = ANTHROPIC_PROJECT
        else:
            project = rng.choices([b.project for b in BUDGETS],
                                  weights=[b.share for b in BUDGETS])[0]
        _, key = rng.choice(self.keys[project])
        max_tokens = rng.randint(8, 40)
        directive = ""
        stream = False
        if kind == "plain":
            directive = f"[[fake:delay_ms={rng.randint(0, 150)}]]" if rng.random() < 0.5 else ""
        elif kind == "stream":
            stream = True
            directive = f"[[fake:chunk_delay_ms={rng.randint(0, 15)}]]"
        elif kind == "slow":
            directive = f"[[fake:delay_ms={rng.randint(200, 600)}]]"
        elif kind == "disconnect":
            stream, max_tokens = True, 40
            directive = "[[fake:chunk_delay_ms=40,output_tokens=30]]"
        elif kind == "cut":
            stream = True
            directive = f"[[fake:cut_after={rng.randint(1, 5)},chunk_delay_ms=5]]"
        elif kind == "cut_body":
            directive = "[[fake:cut_after=1]]"
        elif kind == "error500":
            directive = "[[fake:status=500]]"
        elif kind == "hang":
            directive = "[[fake:hang]]"
        elif kind == "stall":
            stream = True
            directive = "[[fake:stall_after=2]]"
        elif kind == "anthropic_stream":
            stream = True
        text = f"chaos:{project}:{i} " + " ".join(
            rng.choice(("alpha", "bravo", "charlie", "delta", "echo", "foxtrot"))
            for _ in range(rng.randint(3, 20))) + " " + directive
        trace = {"x-tokenstile-trace-id": f"chaos-{i}"}
        body: dict[str, Any] = {"max_tokens": max_tokens, "stream": stream,
                                "messages": [{"role": "user", "content": text}]}
        if kind.startswith("anthropic"):
            body["model"] = "claude-haiku-4-5"
            headers = {"x-api-key": key, "anthropic-version": "2023-06-01", **trace}
            return kind, project, "/v1/messages", body, headers, "anthropic"
        body["model"] = "gpt-4o-mini"
        return kind, project, "/v1/chat/completions", body, \
            {"authorization": f"Bearer {key}", **trace}, "openai"

    async def run(self, session: aiohttp.ClientSession) -> None:
        limit = asyncio.Semaphore(self.plan.concurrency)
        tasks: list[asyncio.Task[None]] = []
        interval = 1.0 / self.plan.rate
        start = time.monotonic()
        for i in range(self.plan.requests):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await limit.acquire()
            async with self.progress:
                self.launched = i + 1
                self.progress.notify_all()
            tasks.append(asyncio.create_task(self._one(session, i, limit)))
        await asyncio.gather(*tasks)

    async def _one(self, session: aiohttp.ClientSession, i: int,
                   limit: asyncio.Semaphore) -> None:
        try:
            kind, project, path, body, headers, wire = self._choose(i)
            gateway = self.rng.randrange(len(self.gateways))
            sent = Sent(i, kind, project, gateway, self.now())
            self.sent.append(sent)
            await self._send(session, sent, path, body, headers, wire)
        finally:
            limit.release()

    async def _send(self, session: aiohttp.ClientSession, sent: Sent, path: str,
                    body: dict[str, Any], headers: dict[str, str], wire: str) -> None:
        url = self.gateways[sent.gateway].url + path
        try:
            async with session.post(url, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=30)) as resp:
                sent.status = resp.status
                sent.rid = resp.headers.get("x-tokenstile-request-id")
                if resp.status != 200 or not body["stream"]:
                    payload = await resp.read()
                    sent.code = error_code(payload)
                    sent.complete = True
                    return
                await self._read_stream(sent, resp, wire)
        except aiohttp.ClientConnectorError:
            sent.failure = "refused"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                aiohttp.ClientPayloadError):
            sent.failure = "gateway_died"
        except TimeoutError:
            sent.failure = "client_timeout"
        finally:
            sent.ended = self.now()

    async def _read_stream(self, sent: Sent, resp: aiohttp.ClientResponse, wire: str) -> None:
        leave_after = self.rng.randint(1, 3) if sent.kind == "disconnect" else None
        seen = b""
        async for chunk in resp.content.iter_any():
            seen += chunk
            if leave_after is not None and seen.count(b'"content"') >= leave_after:
                resp.close()  # hang up mid-stream
                sent.failure = "client_disconnected"
                return
        sent.stream_error = stream_error(seen)
        sent.complete = (b"[DONE]" in seen) if wire == "openai" else (b"message_stop" in seen)


def error_code(payload: bytes) -> str | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    error = data["error"]
    code = error.get("code")
    if isinstance(code, str):
        return code
    return classify_message(str(error.get("message", "")), str(error.get("type", "")))


def classify_message(message: str, kind: str) -> str:
    """Anthropic-shaped errors carry no code: name them from the message."""
    for needle, code in (("counter store", "store_unavailable"),
                         ("did not answer in time", "upstream_timeout"),
                         ("could not be reached", "upstream_unreachable"),
                         ("broke off", "upstream_cut"), ("Fake upstream error", "upstream")):
        if needle in message:
            return code
    return kind or "unknown"


def stream_error(seen: bytes) -> str | None:
    for line in seen.split(b"\n"):
        if line.startswith(b"data: {") and b'"error"' in line:
            return error_code(line[6:]) or "stream_error"
    return None


# -- chaos ----------------------------------------------------------------------------------


async def chaos(plan: Plan, driver: Driver, gateways: list[GatewayProcess],
                redis: RedisServer, windows: list[Window]) -> None:
    """Fire each event when its share of the requests has been launched."""
    for at, event, downtime in plan.events:
        await driver.reached(at * plan.requests)
        name, _, arg = event.partition(":")
        if name in ("kill_gateway", "kill_gateway_and_redis"):
            gateway = gateways[int(arg)]
            window = Window(f"gateway {arg} killed", driver.now())
            windows.append(window)
            gateway.kill()
            redis_window = None
            if name == "kill_gateway_and_redis":
                redis_window = Window("redis killed", driver.now())
                windows.append(redis_window)
                redis.kill()
            await asyncio.sleep(downtime)
            if redis_window is not None:
                await asyncio.to_thread(redis.start)
                redis_window.end = driver.now()
            await asyncio.to_thread(gateway.start)
            window.end = driver.now()
        elif name == "restart_redis":
            window = Window("redis killed", driver.now())
            windows.append(window)
            redis.kill()
            await asyncio.sleep(downtime)
            await asyncio.to_thread(redis.start)
            window.end = driver.now()


async def drive(plan: Plan, gateways: list[GatewayProcess], redis: RedisServer,
                keys: dict[str, list[tuple[str, str]]], seed: int
                ) -> tuple[list[Sent], list[Window], float]:
    driver = Driver(plan, gateways, keys, seed)
    windows: list[Window] = []
    connector = aiohttp.TCPConnector(limit=plan.concurrency * 2, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(driver.run(session),
                             chaos(plan, driver, gateways, redis, windows))
    return driver.sent, windows, driver.now()


def wait_for_reservations(redis: RedisServer, prefix: str, limit_s: float) -> int:
    """Until every reservation is settled or claimed (crash recovery done); how many left."""
    deadline = time.monotonic() + limit_s
    while True:
        reply = redis.command("HLEN", "{" + prefix + "}:r")
        left = int(reply[1:]) if reply.startswith(":") else -1
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# -- checking -------------------------------------------------------------------------------


@dataclass
class Report:
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        self.lines.append(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)

    def say(self, text: str = "") -> None:
        self.lines.append(text)


def attribute(records: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """The fake's records by the driver's request number (from the marker it forwarded)."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        body = record.get("body")
        if not isinstance(body, dict):
            continue
        match = MARKER.search(orjson.dumps(body.get("messages")).decode())
        if match:
            out[int(match.group(2))].append(record)
    return out


def in_window(sent: Sent, windows: list[Window], what: str, slack: float) -> bool:
    return any(w.what == what and sent.started <= w.end + slack and sent.ended >= w.start
               for w in windows)


def analyse(sent: list[Sent], windows: list[Window], rows: list[LedgerRow],
            tally: dict[str, Any], limits: dict[str, int], leftover: int,
            internal_errors: int) -> Report:
    report = Report()
    fake = attribute(tally["records"])
    by_trace: dict[int, list[LedgerRow]] = defaultdict(list)
    stray = 0
    for row in rows:
        if row.trace_id and row.trace_id.startswith("chaos-"):
            by_trace[int(row.trace_id.removeprefix("chaos-"))].append(row)
        else:
            stray += 1
    f = report.figures
    f["requests"] = len(sent)
    f["ledger_rows"] = len(rows)
    f["fake_records"] = len(tally["records"])
    f["fake_tokens"] = tally["input_tokens"] + tally["output_tokens"]
    f["ledger_tokens"] = sum(r.input_tokens + r.output_tokens for r in rows)
    f["outcomes"] = dict(Counter(r.outcome for r in rows).most_common())
    f["statuses"] = dict(Counter(str(s.status or s.failure) for s in sent).most_common())
    f["kinds"] = dict(Counter(s.kind for s in sent).most_common())
    f["windows"] = [f"{w.what} {w.start:.1f}-{w.end:.1f}s" for w in windows]

    # 1. hard limits
    report.say("1. No hard limit exceeded (tokens the upstream served per budget)")
    served: Counter[str] = Counter()
    billed: Counter[str] = Counter()
    for s in sent:
        tokens = sum(r["input_tokens"] + r["output_tokens"] for r in fake.get(s.i, ()))
        served[s.project] += tokens
    for row in rows:
        billed[row.project or "?"] += row.input_tokens + row.output_tokens
    f["budgets"] = {}
    for budget in BUDGETS:
        amount = limits[budget.name]
        used = served[budget.project]
        f["budgets"][budget.name] = {"limit": amount, "served": used,
                                     "billed": billed[budget.project],
                                     "failure_mode": budget.failure_mode}
        what = (f"{budget.name} ({budget.failure_mode}): served {used:,} of {amount:,}, "
                f"billed {billed[budget.project]:,}")
        if budget.failure_mode == "closed":
            report.check(used <= amount and billed[budget.project] <= amount, what)
        else:
            report.say(f"  [info] {what} (fail-open: may pass its limit while Redis is down)")

    # 2. ledger against the tally
    report.say("2. Ledger against the fake upstream's tally")
    exact_rows = exact_ledger = exact_fake = 0
    mismatches: list[str] = []
    gaps: list[tuple[str, int, int, int]] = []
    unsettled: list[tuple[int, int, int]] = []
    timed_out: list[tuple[int, int]] = []
    for i, its_rows in by_trace.items():
        records = fake.get(i, [])
        fin = sum(r["input_tokens"] for r in records)
        fout = sum(r["output_tokens"] for r in records)
        for row in its_rows:
            if row.outcome == "unsettled":
                unsettled.append((row.input_tokens + row.output_tokens, fin + fout,
                                  len(records)))
            elif "charged_at_estimate" in row.flags:
                timed_out.append((row.input_tokens + row.output_tokens, fin + fout))
            elif row.estimated:
                at_cap = " at its cap" if "billed_at_cap" in row.flags else ""
                gaps.append((row.outcome + at_cap, row.input_tokens - fin,
                             row.output_tokens - fout, len(records)))
            else:
                exact_rows += 1
                exact_ledger += row.input_tokens + row.output_tokens
                exact_fake += fin + fout
                if (row.input_tokens, row.output_tokens) != (fin, fout):
                    mismatches.append(f"chaos-{i}: ledger {row.input_tokens}+"
                                      f"{row.output_tokens}, fake {fin}+{fout} "
                                      f"({row.outcome})")
    f["exact"] = {"rows": exact_rows, "ledger_tokens": exact_ledger, "fake_tokens": exact_fake}
    report.check(not mismatches and exact_ledger == exact_fake,
                 f"{exact_rows:,} rows billed from usage: ledger {exact_ledger:,} tokens = "
                 f"fake {exact_fake:,}" + (f"; mismatches: {mismatches[:5]}" if mismatches
                                           else ""))
    f["estimated"] = {}
    for outcome in sorted({g[0] for g in gaps}):
        mine = [g for g in gaps if g[0] == outcome]
        gap_in, gap_out = sum(g[1] for g in mine), sum(g[2] for g in mine)
        low, high = min(g[2] for g in mine), max(g[2] for g in mine)
        f["estimated"][outcome] = {"rows": len(mine), "input_gap": gap_in,
                                   "output_gap": gap_out, "per_request": [low, high]}
        what = (f"{len(mine):,} {outcome} rows billed from the gateway's own count: ledger - "
                f"fake = {gap_in:+,} input, {gap_out:+,} output tokens, per request "
                f"{low:+} to {high:+}")
        if outcome.endswith(" at its cap"):
            # answers cut mid-body are billed at their cap: never below what was served
            report.check(all(g[1] == 0 for g in mine) and low >= 0,
                         what + " (never below what was served)")
        else:
            # what was relayed is billed; the upstream may have emitted a little more
            report.check(all(g[1] == 0 for g in mine) and low >= -GAP_BOUND and high <= 0,
                         what + f" (bound: 0 to -{GAP_BOUND} a request)")
    est = sum(u[0] for u in unsettled)
    est_fake = sum(u[1] for u in unsettled)
    f["unsettled"] = {"rows": len(unsettled), "estimate_tokens": est,
                      "fake_tokens_for_them": est_fake,
                      "never_reached_upstream": sum(1 for u in unsettled if u[2] == 0)}
    report.check(all(u[0] >= u[1] for u in unsettled),
                 f"{len(unsettled)} crash-charged rows (unsettled, charged_at_estimate): "
                 f"{est:,} tokens at estimate vs {est_fake:,} the fake served for them "
                 "(an estimate never bills less than was served)")
    f["timed_out"] = {"rows": len(timed_out), "estimate_tokens": sum(t[0] for t in timed_out),
                      "fake_tokens_for_them": sum(t[1] for t in timed_out)}
    report.check(all(t[0] >= t[1] for t in timed_out),
                 f"{len(timed_out)} upstream timeouts charged at their estimate: "
                 f"{f['timed_out']['estimate_tokens']:,} tokens vs "
                 f"{f['timed_out']['fake_tokens_for_them']:,} the fake served for them "
                 "(an estimate never bills less than was served)")
    report.check(stray == 0, f"{stray} ledger rows without a driver trace id")

    # 3. nothing lost
    report.say("3. No request lost without an answer or a ledger row")
    lost: list[str] = []
    dup = [i for i, r in by_trace.items() if len(r) > 1]
    kinds: Counter[str] = Counter()
    for s in sent:
        its_rows = by_trace.get(s.i, [])
        records = fake.get(s.i, [])
        if s.failure == "refused":
            kinds["refused at connect (gateway down)"] += 1
            if its_rows or records:
                lost.append(f"chaos-{s.i}: refused at connect yet reached the gateway")
        elif s.failure in ("gateway_died", "client_timeout"):
            if its_rows:
                kinds[f"gateway died mid-request, row {its_rows[0].outcome}"] += 1
            elif not records:
                kinds["gateway died before the upstream call (nothing spent)"] += 1
            else:
                lost.append(f"chaos-{s.i}: {s.failure}, served by the upstream, no row")
        elif s.failure == "client_disconnected":
            if its_rows:
                kinds[f"client hung up, row {its_rows[0].outcome}"] += 1
            elif in_window(s, windows, f"gateway {s.gateway} killed", 1.0):
                kinds["client hung up, gateway then killed"] += 1 if not records else 0
                if records:
                    lost.append(f"chaos-{s.i}: hung up, gateway killed, no row")
            else:
                lost.append(f"chaos-{s.i}: hung up, no row")
        else:
            served = sum(r["input_tokens"] + r["output_tokens"] for r in records)
            if not its_rows and (records or s.status == 200):
                lost.append(f"chaos-{s.i}: answered {s.status}, served {served} tokens, "
                            "no ledger row")
            elif not its_rows:
                # a refusal (nothing reached the upstream) whose row died with its gateway
                kinds[f"answered {s.status} (nothing spent), row lost with its gateway"] += 1
            elif s.rid != its_rows[0].id:
                lost.append(f"chaos-{s.i}: answered as {s.rid}, row {its_rows[0].id}")
            elif its_rows[0].outcome == "unsettled":
                kinds["answered, then its gateway died: row charged at estimate"] += 1
            else:
                kinds["answered, one row"] += 1
    f["fates"] = dict(kinds.most_common())
    f["lost"] = lost[:20]
    for fate, count in kinds.most_common():
        report.say(f"  [info] {count:>6,}  {fate}")
    report.check(not lost, f"{len(lost)} requests lost" + (f": {lost[:5]}" if lost else ""))
    report.check(not dup, f"{len(dup)} requests with more than one ledger row")
    report.check(leftover == 0, f"{leftover} reservations left unsettled and unclaimed")

    # 4. 5xx
    report.say("4. No 5xx beyond the stated outage answers")
    classes: Counter[str] = Counter()
    bad: list[str] = []
    for s in sent:
        for status, code in ((s.status, s.code), (200 if s.stream_error else None,
                                                   s.stream_error)):
            if status is None or (status < 500 and not (status == 200 and code)):
                continue
            label = f"{status} {code}" if status >= 500 else f"in-stream {code}"
            classes[label] += 1
            if code in ("upstream_cut", "upstream_unreachable", "upstream_timeout"):
                continue
            if status == 500 and s.kind == "error500" and code in ("upstream", None):
                continue
            if code == "store_unavailable" and in_window(s, windows, "redis killed",
                                                         REDIS_SLACK_S):
                continue
            bad.append(f"chaos-{s.i} ({s.kind}, {s.started:.1f}s): {label}")
    f["errors_5xx"] = dict(classes.most_common())
    for label, count in classes.most_common():
        report.say(f"  [info] {count:>6,}  {label}")
    report.check(not bad, f"{len(bad)} 5xx outside the stated outage answers"
                 + (f": {bad[:5]}" if bad else ""))
    report.check(internal_errors == 0,
                 f"{internal_errors} 'failed inside the gateway' lines in the gateways' logs")
    timeouts = sum(1 for s in sent if s.failure == "client_timeout")
    report.check(timeouts == 0, f"{timeouts} requests the client gave up on (30 s): no hangs")
    return report


# -- the run --------------------------------------------------------------------------------


def budget_limits(plan: Plan) -> dict[str, int]:
    return {b.name: int(plan.requests * b.share * TOKENS_PER_REQUEST * b.fraction)
            for b in BUDGETS}


def run(args: argparse.Namespace) -> Report:
    plan = plan_for(args.short, args.requests, args.rate)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tokenstile-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    scratch = None
    database = f"sqlite:///{work / 'ledger.db'}"
    if args.database_url:
        if args.database_url.startswith(("postgresql://", "postgres://")):
            scratch = PostgresScratch(args.database_url)
            scratch.create()
            database = scratch.url
        else:
            database = args.database_url
    redis = RedisServer(work / "redis", persistent=True).start()
    fake = FakeUpstreamProcess("--max-records", str(plan.requests * 2))
    gateways: list[GatewayProcess] = []
    started = time.monotonic()
    try:
        prefix = "chaos" + uuid.uuid4().hex[:8]
        limits = budget_limits(plan)
        config = write_config(work / "gateway.yaml", chaos_config(
            fake, redis.url(prefix=prefix), database, limits, args.lease))
        keys = asyncio.run(create_keys(database))
        gateways = [GatewayProcess(config, free_port(), work / f"gateway-{n}.log")
                    for n in range(3)]
        with contextlib.ExitStack() as stack:
            from concurrent.futures import ThreadPoolExecutor

            pool = stack.enter_context(ThreadPoolExecutor(3))
            list(pool.map(lambda g: g.start(), gateways))
        setup_s = time.monotonic() - started
        print(f"chaos: {plan.requests:,} requests at {plan.rate:g}/s, 3 gateways, "
              f"ledger {database.split(':', 1)[0]}, work dir {work}", flush=True)
        sent, windows, traffic_s = asyncio.run(drive(plan, gateways, redis, keys, args.seed))
        for gateway in gateways:  # one killed last may still be starting: it must be up
            if not gateway.alive:
                gateway.start()
        leftover = wait_for_reservations(redis, prefix, args.lease * 3 + 15)
        codes = [g.stop() for g in gateways]  # SIGTERM: a clean exit reports -15 or 0
        rows = asyncio.run(read_ledger(database))
        tally = fake.tally()
        internal = sum(g.log_path.read_text(errors="replace").count("failed inside the gateway")
                       for g in gateways)
        report = analyse(sent, windows, rows, tally, limits, leftover, internal)
        report.check(all(code in (0, -15) for code in codes),
                     f"gateways shut down cleanly on SIGTERM (exit {codes})")
        report.figures.update(setup_s=round(setup_s, 1), traffic_s=round(traffic_s, 1),
                              total_s=round(time.monotonic() - started, 1),
                              database=database.split(":", 1)[0], seed=args.seed)
        return report
    finally:
        for gateway in gateways:
            gateway.kill()
        fake.close()
        redis.close()
        if scratch is not None and not args.keep:
            scratch.drop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def render(report: Report) -> str:
    f = report.figures
    head = [
        "=" * 78,
        f"tokenstile chaos run: {f['requests']:,} requests in {f['traffic_s']} s "
        f"(setup {f['setup_s']} s, total {f['total_s']} s, ledger {f['database']}, "
        f"seed {f['seed']})",
        f"  events: {'; '.join(f['windows'])}",
        f"  answers: {', '.join(f'{k} {v:,}' for k, v in f['statuses'].items())}",
        f"  ledger rows {f['ledger_rows']:,} ({', '.join(f'{k} {v:,}' for k, v in f['outcomes'].items())})",  # noqa: E501
        f"  tokens: ledger {f['ledger_tokens']:,}, fake upstream {f['fake_tokens']:,} "
        f"(all rows; estimates and crash charges included)",
    ]
    tail = ["-" * 78, "PASSED" if not report.failures else
            f"FAILED: {len(report.failures)} check(s)", "=" * 78]
    return "\n".join([*head, *report.lines, *tail])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.chaos_run",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--short", action="store_true", help="the CI form (about a minute)")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="requests per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lease", type=float, default=3.0,
                        help="reservation lease (s): how soon a dead gateway's are claimed")
    parser.add_argument("--database-url", default=None,
                        help="ledger database; a postgresql:// URL gets a scratch database "
                             "of its own on that server (default: SQLite in the work dir)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work dir and database")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    report = run(args)
    print(render(report), flush=True)
    if args.json:
        Path(args.json).write_text(orjson.dumps(
            {"figures": report.figures, "failures": report.failures,
             "lines": report.lines}, option=orjson.OPT_INDENT_2).decode())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())

