"""The chaos run's short form: three gateways, a fake upstream and a Redis of its own,
1,500 mixed requests while a gateway is killed twice and Redis once (see chaos_run.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.chaos.procs import child_env

ROOT = Path(__file__).resolve().parents[2]


def test_the_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos.chaos_run", "--short", "--workdir",
         str(tmp_path / "work"), "--json", str(report)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240)
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    figures = orjson.loads(report.read_bytes())["figures"]
    # the run did what it claims: kills, outage answers, disconnects, crash recovery
    assert len(figures["windows"]) == 3
    assert figures["errors_5xx"].get("503 store_unavailable", 0) > 0
    assert figures["errors_5xx"].get("504 upstream_timeout", 0) > 0
    assert figures["outcomes"].get("client_disconnect", 0) > 0
    assert figures["outcomes"].get("blocked", 0) > 0
    assert figures["exact"]["rows"] > 500
    assert figures["exact"]["ledger_tokens"] == figures["exact"]["fake_tokens"]
