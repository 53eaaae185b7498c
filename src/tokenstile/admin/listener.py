"""The admin API on its own address (``server.admin_host``/``admin_port``), so it can stay
off the public network: a second uvicorn server in the same process and event loop.

The socket is bound with SO_REUSEPORT, so every worker process can serve it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from tokenstile.admin.api import admin_app
from tokenstile.admin.dashboard import dashboard_routes
from tokenstile.gateway.runtime import Runtime

log = logging.getLogger("tokenstile.admin")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The public server owns the process's signals; this one stops with it."""
        yield


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class AdminListener:
    def __init__(self, rt: Runtime) -> None:
        server = rt.config.server
        self.host = server.admin_host or server.host
        self.port = server.admin_port or 0
        app = Starlette(routes=[Mount("/admin", app=admin_app(rt)),
                                *dashboard_routes(rt, public=False)])
        self.server = _Server(uvicorn.Config(app, lifespan="off", access_log=False,
                                             log_level="warning"))
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        self._sock = _socket(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        self._task = asyncio.create_task(self.server.serve(sockets=[self._sock]),
                                         name="tokenstile-admin-listener")
        log.warning("admin API on http://%s:%d/admin", self.host, self.port)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()


async def start_admin_listener(rt: Runtime) -> AdminListener | None:
    """Start the separate admin listener when the config asks for one."""
    if rt.config.server.admin_port is None:
        return None
    listener = AdminListener(rt)
    await listener.start()
    return listener
