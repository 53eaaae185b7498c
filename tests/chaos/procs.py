"""Processes the chaos run and the outage tests start, stop, kill and restart: a Redis of
their own (never the shared one), the fake upstream, and ``tokenstile serve`` gateways.

Everything listens on 127.0.0.1 on a free port and is stopped by ``close()``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import orjson
import yaml

import tokenstile

# Child processes run the same tokenstile as this process (whatever is installed).
_SRC = str(Path(tokenstile.__file__).resolve().parents[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, **(extra or {}),
            "PYTHONPATH": _SRC + (os.pathsep + path if path else "")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any] | None, timeout: float,
                  what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited at start (status {proc.returncode})") \
                    from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on port {port} in time") from None
            time.sleep(0.05)


class RedisServer:
    """A ``redis-server`` child on a free port that a test may kill, pause and restart.

    ``persistent`` keeps an append-only file fsynced on every write in ``directory``, so a
    restart is an outage and not a loss of data (how a production Redis for counters
    should run); without it a restart empties the counters.
    """

    def __init__(self, directory: Path, persistent: bool = True, port: int | None = None
                 ) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, prefix: str = "ts", **options: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
        return f"redis://127.0.0.1:{self.port}/0?{query}"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", str(self.directory), "--protected-mode", "yes",
                "--loglevel", "warning"]
        args += (["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                 else ["--appendonly", "no"])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc, 10, "redis-server")
        deadline = time.monotonic() + 10
        while self.command("PING") != "+PONG":  # loading the append-only file
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server never answered PING")
            time.sleep(0.02)
        return self

    def command(self, *words: str) -> str:
        """One inline command; the first reply line ('' when there is no answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(" ".join(words).encode() + b"\r\n")
                return sock.recv(4096).split(b"\r\n", 1)[0].decode()
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: connections drop at once, as when the machine or the process dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Blackhole:
    """A port that completes TCP handshakes (into a backlog nobody accepts from) and then
    never answers, like a store behind a firewall that drops packets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = int(self.sock.getsockname()[1])

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix=blackhole"

    def close(self) -> None:
        self.sock.close()


class FakeUpstreamProcess:
    """``python -m tokenstile.testing.fake_upstream`` in its own process (its own tally)."""

    def __init__(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenstile.testing.fake_upstream", "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=child_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        self.url = line.removeprefix("listening on ")
        self.v1 = self.url + "/v1"

    def tally(self, records: bool = True) -> dict[str, Any]:
        query = "" if records else "?records=0"
        with urllib.request.urlopen(f"{self.url}/_fake/tally{query}", timeout=60) as resp:
            data: dict[str, Any] = orjson.loads(resp.read())
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class GatewayProcess:
    """One ``python -m tokenstile serve`` on a fixed port; restartable on the same port.

    Its stderr goes to ``log_path`` (appended across restarts), for the secrets search.
    """

    def __init__(self, config_path: Path, port: int, log_path: Path,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        # Run in the log's directory, spooling there: nothing lands in the caller's cwd.
        self.env = child_env({"TOKENSTILE_SPOOL_DIR": str(log_path.parent / "spool"),
                              **(env or {}), "TOKENSTILE_CONFIG": str(config_path)})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (kept open while it runs)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tokenstile", "serve", "--port", str(self.port), *self.args],
            env=self.env, stdout=self._log, stderr=self._log, cwd=self.log_path.parent)
        wait_for_port(self.port, self.proc, timeout, "the gateway")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway never became healthy")
            time.sleep(0.05)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the ledger is flushed), then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cli(config_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``python -m tokenstile ARGS`` on this config; its stdout."""
    done = subprocess.run([sys.executable, "-m", "tokenstile", *args],
                          env=child_env({**(env or {}), "TOKENSTILE_CONFIG": str(config_path)}),
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"tokenstile {' '.join(args)} failed: {done.stderr[-2000:]}")
    return done.stdout


def create_key(config_path: Path, project: str, user: str | None = None) -> str:
    args = ["keys", "create", "--project", project, "--json"]
    if user:
        args += ["--user", user]
    return str(orjson.loads(cli(config_path, *args))["key"])
