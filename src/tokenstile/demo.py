"""``tokenstile demo``: the gateway's main job in thirty seconds, with no key and no network.

It starts the built-in fake upstream and a real gateway on the embedded default (SQLite for
counters, ledger and keys), creates a key, sends a short scripted series of requests —
streamed and not, one of them over a small daily budget — and prints the usage table.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tokenstile.app import TokenstileApp
from tokenstile.config import parse_config
from tokenstile.gateway.runtime import Runtime
from tokenstile.stores.database import KeyRecord, UsageQuery, hash_key, new_key_id, new_key_secret
from tokenstile.tables import format_usage_rows, usd
from tokenstile.testing.fake_upstream import FakeUpstream
from tokenstile.testing.server_thread import RunningServer

DEMO_BUDGET_TOKENS = 300

_SCRIPT: list[tuple[str, str, dict[str, Any]]] = [
    ("chat", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "max_tokens": 40,
        "messages": [{"role": "user", "content": "Say hello in five words."}]}),
    ("chat, streamed", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "max_tokens": 40, "stream": True,
        "messages": [{"role": "user", "content": "Count to ten, slowly."}]}),
    ("embeddings", "/v1/embeddings", {
        "model": "text-embedding-3-small", "input": ["budgets", "ledgers"]}),
    ("responses API", "/v1/responses", {
        "model": "gpt-4o", "input": "One sentence on circuit breakers.",
        "max_output_tokens": 30}),
    ("chat, gpt-4o", "/v1/chat/completions", {
        "model": "gpt-4o", "max_tokens": 60,
        "messages": [{"role": "system", "content": "You are brief."},
                     {"role": "user", "content": "Why count tokens?"}]}),
    ("chat over the daily budget", "/v1/chat/completions", {
        "model": "gpt-4o", "max_tokens": 200,
        "messages": [{"role": "user", "content": "Write a long essay about everything."}]}),
]


def demo_config(directory: Path, upstream_url: str) -> dict[str, Any]:
    database = f"sqlite:///{directory / 'tokenstile-demo.db'}"
    return {
        "upstreams": {"openai": {"kind": "openai", "base_url": upstream_url + "/v1",
                                 "api_key": "sk-demo-not-a-real-key"}},
        "storage": {"counters": database, "database": database},
        "projects": {"demo": {"daily_limit": DEMO_BUDGET_TOKENS}},
    }


async def _send(session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any]
                ) -> tuple[int, str]:
    headers = {"authorization": f"Bearer {key}", "x-tokenstile-feature": "demo"}
    async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
        raw = await resp.read()
        if resp.status >= 400:
            try:
                return resp.status, str(orjson.loads(raw)["error"]["message"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return resp.status, raw.decode(errors="replace")[:200]
        if body.get("stream"):
            events = raw.count(b"data: ")
            return resp.status, f"{events} events streamed"
        return resp.status, "ok"


def run_demo(count: int = 6, keep: bool = False, echo: Callable[[str], None] = print) -> int:
    directory = Path.cwd() if keep else Path(tempfile.mkdtemp(prefix="tokenstile-demo-"))
    fake = FakeUpstream()
    fake_server = fake.serve()
    upstream_url = fake_server.start()
    config = parse_config(demo_config(directory, upstream_url), "<demo>", env={})
    runtime = Runtime.build(config)
    gateway = RunningServer(TokenstileApp(runtime))
    try:
        base = gateway.start()
        echo(f"fake upstream  {upstream_url}/v1   (speaks OpenAI; no key, no network)")
        echo(f"gateway        {base}/v1   (SQLite: {directory / 'tokenstile-demo.db'})")
        assert runtime.loop is not None

        def on_loop(coro: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, runtime.loop).result(30)  # type: ignore[arg-type]

        secret = new_key_secret()
        on_loop(runtime.db.create_key(KeyRecord(
            id=new_key_id(), hash=hash_key(secret), prefix=secret[:7], name="demo",
            project="demo", user="newcomer", created_at=time.time())))
        echo(f"key            {secret[:7]}…  project 'demo' (daily budget "
             f"{DEMO_BUDGET_TOKENS:,} tokens), user 'newcomer'\n")

        async def drive() -> list[tuple[str, int, str]]:
            results = []
            async with aiohttp.ClientSession() as session:
                for label, path, body in (_SCRIPT * (1 + count // len(_SCRIPT)))[:count]:
                    status, note = await _send(session, base + path, secret, body)
                    results.append((label, status, note))
            return results

        failures = 0
        for label, status, note in asyncio.run(drive()):
            mark = "ok " if status < 400 else "-- "
            echo(f"  {mark}{label:<28} {status}  {note}")
            failures += status >= 500
        on_loop(runtime.ledger.flush())
        rows = on_loop(runtime.db.usage(UsageQuery(group_by=["project", "served_model"])))
        total = sum(r["cost_nano"] for r in rows)
        echo("\nusage recorded in the ledger:\n")
        echo(format_usage_rows(rows, ["project", "served_model"]))
        echo(f"\ntotal cost {usd(total)}; every call above has one ledger row. "
             "Next: 'tokenstile serve' with OPENAI_API_KEY set.")
        return 1 if failures else 0
    finally:
        gateway.stop()
        fake_server.stop()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
