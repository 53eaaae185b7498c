"""The Dockerfile and docker-compose.yml, as far as a machine without a Docker engine can
check them: their structure against docs/deployment.md, and the image's command and
healthcheck run for real (as processes here, not in a container)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from tests.conftest import UPSTREAM_KEY, FakeHandle
from tokenstile.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
SRC = str(ROOT / "src")
DOC = (ROOT / "docs" / "deployment.md").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    parsed = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    last_from = max(i for i, (op, _) in enumerate(parsed) if op == "FROM")
    return parsed[last_from:]


def instruction(op: str) -> list[str]:
    return [args for name, args in dockerfile() if name == op]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def healthcheck_command() -> list[str]:
    (check,) = instruction("HEALTHCHECK")
    return exec_form(check[check.index("CMD") + 3:].strip())


def env_of_image() -> dict[str, str]:
    out: dict[str, str] = {}
    for args in instruction("ENV"):
        out.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return out


def gateways() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in COMPOSE["services"].items()
            if svc.get("build") == "." and svc.get("image") == "tokenstile:latest"}


def gateway_config() -> dict[str, Any]:
    (mount,) = {v.split(":")[0] for svc in gateways().values() for v in svc["volumes"]
                if v.split(":")[1] == "/etc/tokenstile/tokenstile.yaml"}
    data: dict[str, Any] = yaml.safe_load((ROOT / mount).read_text())
    return data


# -- the image ---------------------------------------------------------------------------------


def test_the_image_is_slim_and_runs_as_an_unprivileged_user() -> None:
    (base,) = instruction("FROM")
    assert base == "python:3.11-slim"
    (user,) = instruction("USER")
    assert user not in ("root", "0") and not user.startswith("0:")
    run = " ".join(instruction("RUN"))
    assert "useradd --system --uid 10001 --user-group --create-home" in run
    assert re.search(rf"useradd .* {re.escape(user)}\b", run)
    order = [op for op, _ in dockerfile()]
    assert order.index("USER") > max(i for i, op in enumerate(order) if op == "RUN"), \
        "every install step runs before the switch to the unprivileged user"


def test_the_entrypoint_is_the_installed_console_script_and_the_command_serves() -> None:
    (entrypoint,) = instruction("ENTRYPOINT")
    (cmd,) = instruction("CMD")
    program, args = exec_form(entrypoint), exec_form(cmd)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert program == ["tokenstile"] and scripts["tokenstile"] == "tokenstile.cli:main"
    module, _, attr = scripts["tokenstile"].partition(":")
    main = getattr(__import__(module, fromlist=[attr]), attr)
    assert isinstance(main, click.Group) and "serve" in main.commands
    assert args[0] == "serve"
    context = main.commands["serve"].make_context("serve", args[1:])
    assert context.params["host"] == "0.0.0.0"
    assert str(context.params["port"]) in instruction("EXPOSE")
    assert f":{context.params['port']}/healthz" in " ".join(healthcheck_command())
    assert env_of_image()["TOKENSTILE_SPOOL_DIR"] in instruction("VOLUME")[0]


def test_the_build_context_holds_what_the_wheel_needs() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md", "!src/"]
    copied = " ".join(args for op, args in
                      [tuple(line.split(None, 1)) for line in
                       (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY")])
    assert "pyproject.toml README.md" in copied and "src ./src" in copied


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_image_command_serves_and_its_healthcheck_passes(
        fake: FakeHandle, tmp_path: Path) -> None:
    """The CMD and the HEALTHCHECK run as written, with the image's environment and the
    gateways' config, but SQLite stores and this test's fake upstream (no Redis or
    PostgreSQL host names resolve here; ``.ci/smoke.py`` serves on real ones) and another
    port (this machine is shared)."""
    port = str(free_port())
    (cmd,) = instruction("CMD")
    args = [a.replace("8700", port) for a in exec_form(cmd)]
    check = [a.replace(":8700/", f":{port}/") for a in healthcheck_command()]
    config = gateway_config()
    config["upstreams"] = {"openai": {"kind": "openai", "base_url": fake.v1,
                                      "api_key": UPSTREAM_KEY}}
    config["storage"] = {"counters": f"sqlite:///{tmp_path / 'counters.db'}",
                         "database": f"sqlite:///{tmp_path / 'ledger.db'}"}
    (tmp_path / "tokenstile.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENSTILE_", "OTEL_"))}
    env.update(env_of_image())
    env.update(TOKENSTILE_CONFIG=str(tmp_path / "tokenstile.yaml"),
               TOKENSTILE_SPOOL_DIR=str(tmp_path / "spool"),
               PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))
    assert check[0] == "python"
    healthy = [sys.executable, *check[1:]]
    assert subprocess.run(healthy, capture_output=True, timeout=30).returncode != 0
    proc = subprocess.Popen([sys.executable, "-m", "tokenstile", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(healthy, capture_output=True, timeout=30).returncode != 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the healthcheck never passed"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert json.loads(resp.read())["status"] == "ready"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    first = json.loads(err.decode().splitlines()[0])  # --log-format json
    assert "serving on http://0.0.0.0:" in first["message"]
    assert "(2 workers)" in first["message"]


# -- the compose file against docs/deployment.md ---------------------------------------------


def compose_section(flat: bool = False) -> str:
    start = DOC.index("## With Docker Compose")
    section = DOC[start:DOC.index("\n## ", start + 1)]
    return " ".join(section.split()) if flat else section


def test_the_services_are_the_ones_the_deployment_guide_lists() -> None:
    section = compose_section()
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([\w-]+)`", row.split("|")[1])}
    assert named == set(COMPOSE["services"])
    listed = [n for n in named if n.startswith("gateway-")]
    assert sorted(listed) == sorted(gateways()) and len(gateways()) == 3
    ports = sorted(int(p.split(":")[0]) for g in gateways().values() for p in g["ports"])
    assert ports == [8701, 8702, 8703]
    flat = compose_section(flat=True)
    assert "8701, 8702 and 8703" in flat and "8701–8703" in flat
    assert f"{config_workers()} workers each" in flat


def config_workers() -> int:
    return int(gateway_config()["server"]["workers"])


def test_the_gateways_use_the_stores_the_guide_names() -> None:
    section = compose_section()
    config = gateway_config()
    counters, database = config["storage"]["counters"], config["storage"]["database"]
    assert f"- counters: `{counters}`" in section
    assert f"- database: `{database}`" in section
    redis, pg = urlsplit(counters), urlsplit(database)
    assert redis.hostname in COMPOSE["services"] and redis.port == 6379
    assert COMPOSE["services"][redis.hostname]["image"].startswith("redis:")
    postgres = COMPOSE["services"][pg.hostname]
    assert postgres["image"].startswith("postgres:") and pg.port == 5432
    assert pg.username == postgres["environment"]["POSTGRES_USER"]
    assert pg.path.lstrip("/") == postgres["environment"]["POSTGRES_DB"]
    assert pg.password == "${PG_PASSWORD}"
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${PG_PASSWORD")
    parsed = parse_config(config, "deploy/tokenstile.yaml", env={"PG_PASSWORD": "pw"})
    assert parsed.storage.database.startswith("postgresql://tokenstile:pw@postgres:5432/")
    # the guide's connection rule: pool_max × workers × gateways below max_connections
    pool_max = int(dict(p.split("=") for p in pg.query.split("&"))["pool_max"])
    used = pool_max * config_workers() * len(gateways())
    assert used < 100 and f"at most {used} PostgreSQL connections" in compose_section(True)


def test_every_gateway_waits_for_healthy_stores_and_keeps_its_own_spool() -> None:
    for name in ("redis", "postgres"):
        check = COMPOSE["services"][name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] > 0
    spools = []
    for name, gateway in gateways().items():
        assert gateway["depends_on"] == {"redis": {"condition": "service_healthy"},
                                         "postgres": {"condition": "service_healthy"}}, name
        assert gateway["environment"]["TOKENSTILE_CONFIG"] == "/etc/tokenstile/tokenstile.yaml"
        assert "healthcheck" not in gateway  # the image's /healthz check applies
        (spool,) = [v.split(":")[0] for v in gateway["volumes"]
                    if v.split(":")[1] == env_of_image()["TOKENSTILE_SPOOL_DIR"]]
        spools.append(spool)
        assert gateway["stop_grace_period"] == "30s"
    assert len(set(spools)) == len(spools) and set(spools) <= set(COMPOSE["volumes"])


def test_compose_validates_where_a_compose_binary_exists() -> None:
    """``docker compose config`` needs no engine; this machine may have neither it nor the
    older ``docker-compose``."""
    cmd = None
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    if cmd is None:
        pytest.skip("no docker compose on this machine")
    done = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PG_PASSWORD": "x"})
    assert done.returncode == 0, done.stderr
    missing = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                             capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "PG_PASSWORD"})
    assert missing.returncode != 0 and "PG_PASSWORD" in missing.stderr
