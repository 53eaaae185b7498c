"""schemathesis against the running admin API: a bounded run, every operation, no 500s, and
every answer (status, content type, body) as the OpenAPI document describes it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.admin.conftest import ADMIN_KEY, Admin

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")


def schemathesis_cli() -> str:
    beside = Path(sys.executable).with_name("st")
    found = str(beside) if beside.exists() else shutil.which("st")
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[test]'")
    return found


def test_the_admin_api_survives_schemathesis(make_gateway: Any, tmp_path: Path) -> None:
    gateway = make_gateway({"server": {"admin_key": ADMIN_KEY},
                            "projects": {"demo": {"daily_limit": 1000}},
                            "features": {"chat": {"daily_limit": 50}}})
    admin = Admin(gateway.url)
    admin.call("POST", "/keys", {"project": "demo", "user": "alice"}, expect=201)
    admin.call("PUT", "/overrides/switch/feature/chat", {"enabled": False})
    done = subprocess.run(
        [schemathesis_cli(), "run", gateway.url + "/admin/openapi.json",
         "--header", f"Authorization: Bearer {ADMIN_KEY}", "--checks", ",".join(CHECKS),
         "--max-examples", "5", "--seed", "1", "--workers", "1", "--no-color",
         "--request-timeout", "10"],
        cwd=tmp_path, capture_output=True, text=True, timeout=280,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert "27 passed" in done.stdout or "failed" not in done.stdout
