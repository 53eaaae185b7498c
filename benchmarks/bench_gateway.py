"""Gateway overhead against a direct call to the same upstream, measured in one run.

The fake upstream, the latency client and wrk share core 1; the gateway runs alone on core
0 (one worker). For each scenario it reports:

- added latency at concurrency 1: p50/p99 of (via gateway) minus the same of (direct),
  non-streamed, from sequential requests;
- requests/s at concurrency 50 (wrk), non-streamed and streamed, as a ratio to direct.

Scenarios: no limits; budgets on the SQLite counter store (the default); budgets on Redis.
The scenarios run ``--rounds`` times in turn, each with a new gateway, and each figure is
the median over the rounds (on a shared machine one round's figures can be far off).

``--bedrock`` compares instead the gateway's own CPU time per request (read from /proc
around each wrk run, divided by the requests wrk completed) on the OpenAI chat path and on
the AWS Bedrock paths (Converse and InvokeModel, with their streams, signed with SigV4; and
Converse to an upstream with a Bedrock API key, which needs no signature), one gateway
serving them all with budgets on SQLite counters, the runs interleaved. ``--gemini`` does
the same for the Gemini paths: generateContent and its SSE stream, and chat completions
served by a Gemini upstream (the bridge). With ``--rate R`` every path gets the same
offered load (R requests a second, open loop) instead of wrk's closed loop: a gateway's CPU
per request depends on its load (batched writes and wake-ups are shared by more requests
at a higher one), so paths that run at different speeds are compared at the same one.

    python benchmarks/bench_gateway.py            # ~4 minutes (3 rounds)
    python benchmarks/bench_gateway.py --quick    # a few seconds per measurement
    python benchmarks/bench_gateway.py --bedrock  # the Bedrock paths' CPU per request
    python benchmarks/bench_gateway.py --gemini   # the Gemini paths' CPU per request
    python benchmarks/bench_gateway.py --bedrock --rate 600  # at the same load on each path
    python benchmarks/bench_gateway.py --workers  # --workers 1 against 2, unpinned
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "max_tokens": 12,
        "messages": [{"role": "user", "content": "Say something short."}]}
STREAM = {**CHAT, "stream": True}
BEDROCK_MODEL = "anthropic.claude-3-5-haiku-20241022-v1%3A0"
CONVERSE = {"messages": [{"role": "user", "content": [{"text": "Say something short."}]}],
            "inferenceConfig": {"maxTokens": 12}}
INVOKE = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 12,
          "messages": [{"role": "user", "content": "Say something short."}]}
# (name, path, body): the same answer (12 tokens) on each path, whole and streamed.
PATHS = [
    ("openai chat", "/v1/chat/completions", CHAT),
    ("bedrock converse", f"/model/{BEDROCK_MODEL}/converse", CONVERSE),
    ("bedrock invoke", f"/model/{BEDROCK_MODEL}/invoke", INVOKE),
    ("bedrock converse, API key", f"/model/us.{BEDROCK_MODEL}/converse", CONVERSE),
    ("openai chat, streamed", "/v1/chat/completions", STREAM),
    ("bedrock converse-stream", f"/model/{BEDROCK_MODEL}/converse-stream", CONVERSE),
    ("bedrock invoke, streamed", f"/model/{BEDROCK_MODEL}/invoke-with-response-stream",
     INVOKE),
]
GEMINI_MODEL = "gemini-2.0-flash"  # no thinking: the same 12-token answer as the others
GENERATE = {"contents": [{"role": "user", "parts": [{"text": "Say something short."}]}],
            "generationConfig": {"maxOutputTokens": 12}}
GEMINI_PATHS = [
    ("openai chat", "/v1/chat/completions", CHAT),
    ("gemini generateContent", f"/v1beta/models/{GEMINI_MODEL}:generateContent", GENERATE),
    ("chat over gemini", "/v1/chat/completions", {**CHAT, "model": GEMINI_MODEL}),
    ("openai chat, streamed", "/v1/chat/completions", STREAM),
    ("gemini stream", f"/v1beta/models/{GEMINI_MODEL}:streamGenerateContent?alt=sse",
     GENERATE),
    ("chat over gemini, streamed", "/v1/chat/completions", {**STREAM, "model": GEMINI_MODEL}),
]


PIN = True  # off for --workers: the workers, wrk and the fake share both cores


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if PIN and shutil.which("taskset") else argv


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        pinned(1, [sys.executable, "-m", "tokenstile.testing.fake_upstream", "--port", "0",
                   "--no-bodies"]),
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://\S+", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"fake upstream did not start: {line!r}")
    return proc, match.group(0)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(directory: Path, fake_url: str, counters: str, limits: bool,
                  bedrock: bool = False,
                  gemini: bool = False,
                  workers: int = 1) -> tuple[subprocess.Popen[bytes], str, str]:
    database = f"sqlite:///{directory / 'bench.db'}"
    config: dict[str, Any] = {
        "upstreams": {"openai": {"base_url": fake_url + "/v1", "api_key": "sk-bench"}},
        "storage": {"counters": counters, "database": database},
    }
    if bedrock:  # signed with SigV4 like any Bedrock upstream (the fake does not check it),
        # and the inference profile through a Bedrock API key (a bearer token, no signature)
        config["upstreams"]["aws"] = {
            "kind": "bedrock", "region": "us-east-1", "base_url": fake_url,
            "aws_access_key_id": "AKIDBENCH", "aws_secret_access_key": "bench-secret"}
        config["upstreams"]["aws-key"] = {"kind": "bedrock", "region": "us-east-1",
                                          "base_url": fake_url, "api_key": "bench-key"}
        config["routes"] = [{"match": "us.*", "upstream": "aws-key"}]
    if gemini:  # Google's API shape, the key as x-goog-api-key
        config["upstreams"]["google"] = {"kind": "gemini", "base_url": fake_url,
                                         "api_key": "AIza-bench"}
    if limits:
        config["organization"] = {"daily_cap": 10**12}
        config["projects"] = {"bench": {"daily_limit": 10**12, "request_limit": 100_000}}
        config["users"] = {"standard": {"rate_limit": 10**9}}
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "TOKENSTILE_CONFIG": str(path)}
    created = subprocess.run(
        ["tokenstile", "keys", "create", "--project", "bench", "--user", "u", "--tier",
         "standard", "--json"], env=env, capture_output=True, text=True, check=True)
    key = orjson.loads(created.stdout)["key"]
    port = free_port()
    proc = subprocess.Popen(pinned(0, ["tokenstile", "serve", "--port", str(port),
                                         "--workers", str(workers)]), env=env,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            import urllib.request

            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url, key
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gateway did not start")


def stop_gateway(proc: subprocess.Popen[bytes], directory: Path) -> None:
    """Stop a gateway ``start_gateway`` started and remove its directory."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    shutil.rmtree(directory, ignore_errors=True)


async def latencies(url: str, key: str, count: int) -> list[float]:
    body = orjson.dumps(CHAT)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    out = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(count + 200):
            start = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", data=body,
                                    headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
            if i >= 200:
                out.append((time.perf_counter() - start) * 1000)
    return out


def wrk(url: str, key: str, body: dict[str, Any], seconds: int, directory: Path,
        pid: int | None = None, path: str = "/v1/chat/completions") -> tuple[float, float]:
    """Requests/s at c=50, and the CPU ms per request of ``pid`` (the gateway) meanwhile."""
    before = cpu_seconds(pid) if pid else 0.0
    rate, done = wrk_run(url, key, body, seconds, directory, path)
    used = cpu_seconds(pid) - before if pid else 0.0
    return rate, (used * 1000 / done if pid and done else 0.0)


def wrk_run(url: str, key: str, body: dict[str, Any], seconds: int, directory: Path,
            path: str = "/v1/chat/completions") -> tuple[float, int]:
    """(requests/s, requests completed) of a wrk run at concurrency 50."""
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {orjson.dumps(orjson.dumps(body).decode()).decode()}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n')
    result = subprocess.run(
        pinned(1, ["wrk", "-t1", "-c50", f"-d{seconds}s", "-s", str(script), url + path]),
        capture_output=True, text=True, check=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    done = re.search(r"(\d+) requests in", result.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if non2xx:
        raise RuntimeError(f"wrk saw {non2xx.group(1)} error responses")
    return (float(match.group(1)) if match else 0.0), int(done.group(1)) if done else 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (the workers of ``--workers N``)."""
    total = cpu_seconds(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                total += cpu_seconds(int(child))
    return total


def workers_comparison(fake_url: str, seconds: int, rounds: int) -> None:
    """req/s of one gateway with ``--workers 1`` against ``--workers 2``, budgets on SQLite
    counters, nothing pinned (the OS spreads the workers, wrk and the fake upstream over
    the cores), wrk at 50 connections; the two alternate, each round on new gateways."""
    rates: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            directory = Path(tempfile.mkdtemp(prefix="tokenstile-bench-"))
            proc, url, key = start_gateway(directory, fake_url,
                                           f"sqlite:///{directory / 'counters.db'}", True,
                                           workers=workers)
            try:
                for _ in range(2 * workers):  # every worker warmed up
                    wrk_run(url, key, CHAT, 1, directory)
                before = tree_cpu_seconds(proc.pid)
                rate, done = wrk_run(url, key, CHAT, seconds, directory)
                cpu[workers].append((tree_cpu_seconds(proc.pid) - before) / max(done, 1) * 1e3)
                rates[workers].append(rate)
            finally:
                stop_gateway(proc, directory)
    med = statistics.median
    ratios = [two / one for one, two in zip(rates[1], rates[2], strict=True)]
    print(f"one gateway, budgets on SQLite counters, not pinned, wrk c=50, median of {rounds} "
          f"alternating rounds of {seconds} s")
    for workers in (1, 2):
        print(f"--workers {workers}: {med(rates[workers]):>8,.0f} req/s, "
              f"gateway CPU {med(cpu[workers]):.3f} ms/request")
    print(f"ratio (2 workers / 1): {med(ratios):.2f} (rounds: "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")


async def paced(url: str, key: str, path: str, body: dict[str, Any], rate: float,
                seconds: float) -> int:
    """Open loop: ``rate`` requests a second for ``seconds``, each sent on time whatever
    the answers before it do; returns how many were answered 200 (the others raise)."""
    loop = asyncio.get_running_loop()
    data = orjson.dumps(body)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=500)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.post(url + path, data=data, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{path}: HTTP {resp.status}")

        start, sent, tasks = loop.time(), 0, []
        while sent < total:
            due = min(total, int((loop.time() - start) * rate) + 1)
            tasks += [asyncio.create_task(one()) for _ in range(due - sent)]
            sent = due
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return total


def cpu_comparison(fake_url: str, seconds: int, rounds: int, provider: str,
                   rate: float | None = None) -> None:
    """Gateway CPU per request, OpenAI chat against the Bedrock or the Gemini paths (see
    the docstring).

    Each round runs every path once, each round in an order turned by one place (a path
    measured first after the warm-up, or after another, costs more: ~80 µs seen); a
    path's ratio is taken to the OpenAI path of the same kind (whole or streamed) in the
    same round, so that a machine whose load drifts compares like with like, and the
    medians over the rounds are reported."""
    paths = GEMINI_PATHS if provider == "gemini" else PATHS
    directory = Path(tempfile.mkdtemp(prefix="tokenstile-bench-"))
    proc, url, key = start_gateway(directory, fake_url,
                                   f"sqlite:///{directory / 'counters.db'}", True,
                                   bedrock=provider == "bedrock",
                                   gemini=provider == "gemini")
    per_request: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    rates: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    try:
        for _, path, body in paths:  # warm every path up once
            wrk_run(url, key, body, 1, directory, path)
        for round_no in range(rounds):
            turn = round_no % len(paths)  # each path takes each place in the order in turn
            for name, path, body in paths[turn:] + paths[:turn]:
                before = cpu_seconds(proc.pid)
                if rate is None:
                    answered, done = wrk_run(url, key, body, seconds, directory, path)
                else:
                    done = asyncio.run(paced(url, key, path, body, rate, seconds))
                    answered = float(done) / seconds
                per_request[name].append((cpu_seconds(proc.pid) - before) / max(done, 1) * 1e6)
                rates[name].append(answered)
    finally:
        stop_gateway(proc, directory)
    load = "wrk, 50 connections" if rate is None else f"open loop, {rate:,.0f} req/s each"
    print(f"gateway CPU per request, budgets on SQLite counters, median of {rounds} "
          f"interleaved rounds of {seconds} s per path ({load})")
    print(f"{'path':<28} {'req/s':>8} {'CPU µs/req':>11} {'vs openai':>10}")
    for name, _, _ in paths:
        base = "openai chat, streamed" if "stream" in name else "openai chat"
        ratios = [mine / theirs for mine, theirs in zip(per_request[name], per_request[base],
                                                         strict=True)]
        print(f"{name:<28} {statistics.median(rates[name]):>8,.0f} "
              f"{statistics.median(per_request[name]):>11,.0f} "
              f"{statistics.median(ratios):>10.2f}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--bedrock", action="store_true",
                        help="compare the gateway's CPU per request on the Bedrock paths")
    parser.add_argument("--gemini", action="store_true",
                        help="compare the gateway's CPU per request on the Gemini paths")
    parser.add_argument("--rate", type=float, default=None,
                        help="with --bedrock or --gemini: send this many requests a second "
                             "on every path (open loop) instead of wrk's closed loop, so "
                             "that every path is measured at the same load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", action="store_true",
                        help="compare --workers 1 with --workers 2 (SQLite budgets, unpinned)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.seconds, args.rounds = 800, 3, 1
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed for the throughput figures: apt-get install wrk")
    if args.workers:
        global PIN
        PIN = False
        fake, fake_url = start_fake()
        try:
            workers_comparison(fake_url, args.seconds, args.rounds)
        finally:
            fake.send_signal(signal.SIGTERM)
            fake.wait(10)
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    if args.bedrock or args.gemini:
        fake, fake_url = start_fake()
        try:
            cpu_comparison(fake_url, args.seconds, args.rounds,
                           "gemini" if args.gemini else "bedrock", args.rate)
        finally:
            fake.send_signal(signal.SIGTERM)
            fake.wait(10)
        return
    redis_url = "redis://127.0.0.1:6379/0?prefix=bench" + str(os.getpid())
    scenarios = [("no limits", "memory://", False),
                 ("budgets, SQLite counters", "sqlite:///{dir}/counters.db", True),
                 ("budgets, Redis counters", redis_url, True)]
    fake, fake_url = start_fake()
    rounds: list[list[tuple[list[float], float, float, float, float]]] = []
    direct: list[tuple[list[float], float, float]] = []
    try:
        for _ in range(args.rounds):
            direct_lat = asyncio.run(latencies(fake_url, "sk-bench", args.requests))
            direct_rps, _ = wrk(fake_url, "sk-bench", CHAT, args.seconds,
                                Path(tempfile.gettempdir()))
            direct_sse, _ = wrk(fake_url, "sk-bench", STREAM, args.seconds,
                                Path(tempfile.gettempdir()))
            direct.append((direct_lat, direct_rps, direct_sse))
            rounds.append([run_scenario(fake_url, counters, limits, args)
                           for _, counters, limits in scenarios])
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(10)
    med = statistics.median
    d50 = med(med(lat) for lat, _, _ in direct)
    d99 = med(pct(lat, 0.99) for lat, _, _ in direct)
    direct_rps, direct_sse = med(r for _, r, _ in direct), med(r for _, _, r in direct)
    print(f"direct to the fake upstream: p50 {d50:.3f} ms, p99 {d99:.3f} ms, "
          f"{direct_rps:,.0f} req/s, streamed {direct_sse:,.0f} req/s "
          f"(medians of {args.rounds} rounds)")
    print(f"{'scenario':<28} {'added p50':>10} {'added p99':>10} {'req/s':>8} {'ratio':>6} "
          f"{'CPU/req':>8} {'SSE req/s':>10} {'ratio':>6} {'CPU/req':>8}")
    added50 = []
    for i, (name, _, _) in enumerate(scenarios):
        runs = [one[i] for one in rounds]
        a50 = med(med(lat) for lat, *_ in runs) - d50
        a99 = med(pct(lat, 0.99) for lat, *_ in runs) - d99
        rps, cpu = med(r[1] for r in runs), med(r[2] for r in runs)
        sse, sse_cpu = med(r[3] for r in runs), med(r[4] for r in runs)
        added50.append(a50)
        print(f"{name:<28} {a50:>8.3f}ms {a99:>8.3f}ms {rps:>8,.0f} {rps / direct_rps:>6.2f} "
              f"{cpu:>6.3f}ms {sse:>10,.0f} {sse / direct_sse:>6.2f} {sse_cpu:>6.3f}ms")
    for (name, _, _), extra in zip(scenarios[1:], added50[1:], strict=True):
        print(f"admission cost over no limits ({name}): {extra - added50[0]:.3f} ms p50")


def run_scenario(fake_url: str, counters: str, limits: bool, args: argparse.Namespace
                 ) -> tuple[list[float], float, float, float, float]:
    """One scenario on a new gateway: (latencies, req/s, CPU ms/request, streamed req/s,
    CPU ms/streamed request)."""
    directory = Path(tempfile.mkdtemp(prefix="tokenstile-bench-"))
    proc, url, key = start_gateway(directory, fake_url, counters.format(dir=directory), limits)
    try:
        lat = asyncio.run(latencies(url, key, args.requests))
        rps, cpu = wrk(url, key, CHAT, args.seconds, directory, proc.pid)
        sse, sse_cpu = wrk(url, key, STREAM, args.seconds, directory, proc.pid)
    finally:
        stop_gateway(proc, directory)
    return lat, rps, cpu, sse, sse_cpu


if __name__ == "__main__":
    main()
