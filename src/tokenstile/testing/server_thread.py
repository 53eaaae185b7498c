"""Run any ASGI app under uvicorn in a background thread, for tests and demos.

Tests need a real socket (the SDKs and the gateway's upstream client speak real HTTP), a
free port chosen by the OS (no collisions between parallel runs) and a clean, bounded
shutdown. The socket is bound before the thread starts, so the port is known at once and
nothing can take it in between.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn
import uvloop

__all__ = ["RunningServer", "bind_socket", "http_url", "start_in_thread"]


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening-ready TCP socket; port 0 lets the OS pick a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def http_url(host: str, port: int) -> str:
    """``http://host:port``, bracketing IPv6 literals."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class RunningServer:
    """uvicorn (uvloop + httptools, no access log) serving ``app`` on its own loop and thread.

    ``start()`` returns the base URL (``http://127.0.0.1:PORT``, no path) once the server
    accepts connections; ``stop()`` shuts it down gracefully, cancelling requests still
    running after ``graceful_timeout`` seconds. Usable as a context manager. Extra keyword
    arguments go to ``uvicorn.Config`` (e.g. ``timeout_keep_alive``, ``limit_concurrency``).
    """

    def __init__(
        self,
        app: Callable[..., Any],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 10.0,
        graceful_timeout: float = 2.0,
        **config: Any,
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.port = port
        self.startup_timeout = startup_timeout
        options: dict[str, Any] = {
            "http": "httptools",
            "loop": "uvloop",
            "lifespan": "auto",
            "interface": "asgi3",
            "log_config": None,
            "log_level": "warning",
            "access_log": False,
            "timeout_graceful_shutdown": graceful_timeout,
        }
        options.update(config)
        self._config_options = options
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL without a path, e.g. ``http://127.0.0.1:40123``."""
        return http_url(self.host, self.port)

    base_url = url

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> str:
        """Start serving and return the base URL once the listener is up."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = bind_socket(self.host, self._requested_port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, host=self.host, port=self.port, **self._config_options)
        server = uvicorn.Server(config)
        self._server = server

        def run() -> None:
            try:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    runner.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # reported by start(); a thread can't raise to us
                self._error = exc
            finally:
                sock.close()

        thread = threading.Thread(target=run, name=f"asgi-server-{self.port}", daemon=True)
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"server on {self.url} failed to start") from self._error
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server on {self.url} did not start in time")
            time.sleep(0.002)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully; force it if it has not finished after ``timeout`` seconds."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)

    def __enter__(self) -> RunningServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0, **config: Any
) -> tuple[str, Callable[[], None]]:
    """Serve ``app`` in a background thread; return ``(base_url, stop)``."""
    server = RunningServer(app, host, port, **config)
    return server.start(), server.stop
