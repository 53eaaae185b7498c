"""Cold start and memory of one gateway worker.

- cold start: from launching ``tokenstile serve`` to its first ``/healthz`` answer (wall
  time, and the CPU time the process used meanwhile: the figure a loaded machine moves
  least), then to the answer of a chat request sent at once (its tokenizer and price table
  load after ready: the first request may wait for them), over several starts;
- memory: the worker's resident set once ready, once its tokenizer has loaded, and after
  ``--requests`` chat requests with budgets on SQLite counters (wrk at 50 connections
  against the fake upstream).

Run it with the ``tokenstile`` of the environment to measure; a bare install (no test
extras) is what a deployment runs:

    python benchmarks/bench_startup.py                    # ~2 minutes
    python benchmarks/bench_startup.py --requests 100000  # the 100k-request figure
    python benchmarks/bench_startup.py --exe /path/to/venv/bin/tokenstile
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import CHAT, cpu_seconds, start_fake, wrk_run


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, fake_url: str) -> dict[str, str]:
    config = {
        "upstreams": {"openai": {"base_url": fake_url + "/v1", "api_key": "sk-bench"}},
        "storage": {"counters": f"sqlite:///{directory / 'counters.db'}",
                    "database": f"sqlite:///{directory / 'bench.db'}"},
        "organization": {"daily_cap": 10**12},
        "projects": {"bench": {"daily_limit": 10**12, "request_limit": 10**9}},
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return {**os.environ, "TOKENSTILE_CONFIG": str(path)}


def start(exe: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, float]:
    """A started gateway, its URL and the wall seconds it took to answer /healthz."""
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen([exe, "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the gateway exited while starting")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url, time.perf_counter() - began
        except OSError:
            time.sleep(0.005)


def first_chat(url: str, key: str) -> float:
    """Seconds until a chat request sent now is answered (budgets on: it is counted with
    the tokenizer and priced, so it waits for them if they have not loaded yet)."""
    began = time.perf_counter()
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=orjson.dumps(CHAT),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        resp.read()
    return time.perf_counter() - began


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exe", default=shutil.which("tokenstile") or "tokenstile")
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed for the memory figure: apt-get install wrk")
    directory = Path(tempfile.mkdtemp(prefix="tokenstile-startup-"))
    fake, fake_url = start_fake()
    try:
        env = write_config(directory, fake_url)
        created = subprocess.run(
            [args.exe, "keys", "create", "--project", "bench", "--user", "u", "--json"],
            env=env, capture_output=True, text=True, check=True)
        key = orjson.loads(created.stdout)["key"]
        walls, cpus, ready_rss, answered = [], [], [], []
        for _ in range(args.starts):
            proc, url, wall = start(args.exe, env)
            cpus.append(cpu_seconds(proc.pid))
            ready_rss.append(rss_mb(proc.pid))
            walls.append(wall)
            answered.append(wall + first_chat(url, key))
            stop(proc)
        print(f"cold start to ready, {args.starts} starts: wall min {min(walls):.2f} s, "
              f"median {statistics.median(walls):.2f} s; CPU median "
              f"{statistics.median(cpus):.2f} s; RSS when ready "
              f"{statistics.median(ready_rss):.0f} MB; to a first chat answered: min "
              f"{min(answered):.2f} s, median {statistics.median(answered):.2f} s")
        proc, url, _ = start(args.exe, env)
        try:
            time.sleep(3)  # the tokenizer and price table load after ready
            loaded = rss_mb(proc.pid)
            done = 0
            while done < args.requests:
                _, completed = wrk_run(url, key, CHAT, 5, directory)
                if completed == 0:
                    raise RuntimeError("wrk completed no request")
                done += completed
            print(f"RSS: {loaded:.0f} MB with the tokenizer loaded, {rss_mb(proc.pid):.0f} MB "
                  f"after {done:,} requests (budgets on SQLite counters)")
        finally:
            stop(proc)
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
