"""What the gateway uses of an upstream's answer, whichever HTTP client fetched it.

The hot call (``UpstreamClient.post``) answers with the lean client's response
(``gateway.http_client``); the rare others (``UpstreamClient.request``) with aiohttp's,
wrapped so that its errors read as ``UpstreamBodyError``. Both fit ``UpstreamResponse``;
code that relays an answer depends on this, not on a client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from multidict import CIMultiDictProxy


class ResponseBody(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (decoded when the upstream compressed them)."""
        ...


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Case-insensitive; ``get`` gives a repeated header's first value."""
        ...

    @property
    def content(self) -> ResponseBody: ...

    async def read(self) -> bytes:
        """The whole body."""
        ...

    def release(self) -> None:
        """Done with it: the connection goes back to its pool (closed when the body was not
        read to its end)."""
        ...


class UpstreamBodyError(Exception):
    """The upstream's connection broke, or its framing was wrong, while its answer's body
    was being read."""


# What reading an answer's body may raise when the upstream fails (a read timeout is a
# ``TimeoutError``).
BODY_ERRORS: tuple[type[Exception], ...] = (UpstreamBodyError, TimeoutError)
