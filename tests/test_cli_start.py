"""``tokenstile`` as a newcomer meets it: ``--version``, ``demo --help``, and one clear line
(no traceback, a non-zero exit) for the mistakes made when starting ``serve``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from tokenstile import __version__

SRC = str(Path(__file__).resolve().parent.parent / "src")


def tokenstile(*args: str, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    path = os.environ.get("PYTHONPATH")
    child = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSTILE_")}
    child.update(env or {})
    child["PYTHONPATH"] = SRC + (os.pathsep + path if path else "")
    return subprocess.run([sys.executable, "-m", "tokenstile", *args], cwd=cwd, env=child,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but never listened on: connections to it are refused, and nothing else
    can take it while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def write(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_version(tmp_path: Path) -> None:
    for flag in ("--version", "-V"):
        done = tokenstile(flag, cwd=tmp_path)
        assert done.returncode == 0 and done.stdout == f"tokenstile {__version__}\n"
    assert tokenstile("version", cwd=tmp_path).stdout == f"tokenstile {__version__}\n"


def test_demo_help(tmp_path: Path) -> None:
    done = tokenstile("demo", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "built-in fake upstream" in done.stdout and "--requests" in done.stdout
    assert list(tmp_path.iterdir()) == []  # help starts nothing and writes nothing


def test_a_missing_config_file(tmp_path: Path) -> None:
    line = one_line_error(tokenstile("serve", "-c", "nope.yaml", cwd=tmp_path), code=2)
    assert "no configuration file at nope.yaml" in line
    line = one_line_error(tokenstile("serve", cwd=tmp_path,
                                     env={"TOKENSTILE_CONFIG": str(tmp_path / "gone.yaml")}),
                          code=2)
    assert f"{tmp_path / 'gone.yaml'} ($TOKENSTILE_CONFIG)" in line


def test_an_unreachable_redis_at_start(tmp_path: Path, closed_port: int) -> None:
    url = f"redis://127.0.0.1:{closed_port}/0"
    config = write(tmp_path / "c.yaml", {"storage": {"counters": url}})
    started = time.monotonic()
    line = one_line_error(tokenstile("serve", "-c", str(config), "--port", "0", cwd=tmp_path))
    assert time.monotonic() - started < 30
    assert f"cannot reach the counter store at {url}" in line
    assert "storage.counters" in line


def test_an_unreachable_postgresql_at_start(tmp_path: Path, closed_port: int) -> None:
    url = f"postgresql://tokenstile:pw-never-shown@127.0.0.1:{closed_port}/tokenstile"
    config = write(tmp_path / "c.yaml", {"storage": {"database": url}})
    line = one_line_error(tokenstile("serve", "-c", str(config), "--port", "0", cwd=tmp_path))
    assert "cannot reach the database at postgresql://tokenstile:[redacted]@127.0.0.1" in line
    assert "storage.database" in line and "pw-never-shown" not in line


def test_a_port_in_use(tmp_path: Path, busy_port: int) -> None:
    line = one_line_error(tokenstile("serve", "--port", str(busy_port), cwd=tmp_path))
    assert f"port {busy_port} on 127.0.0.1 is already in use" in line
    done = tokenstile("serve", "--port", str(busy_port), "--log-format", "json", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (record,) = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert record["level"] == "error" and "already in use" in record["message"]
