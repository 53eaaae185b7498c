"""Watch a relayed stream and keep the answer it carries, for the cache.

The recorder sits between the provider adapter's observer and the response policies: it
sees the upstream's events exactly as they arrived (before usage chunks are stripped or
policies rewrite anything) and feeds them to an incremental assembler, so memory grows with
the answer, not with the event framing. A stream longer than ``max_bytes`` is given up on
(the answer would be too big to cache anyway).
"""

from __future__ import annotations

from tokenstile.cache.assemble import StreamAssembler, assembler_for
from tokenstile.providers.base import ObserverWrapper, StreamObserver
from tokenstile.types import ApiKind, WireFormat

DEFAULT_MAX_STREAM_BYTES = 32 * 1024 * 1024


class StreamRecorder(ObserverWrapper):
    """A ``StreamObserver`` that delegates to ``inner`` and assembles what passed by.

    ``api`` / ``wire`` are those of the upstream's stream (for a bridged request, the
    upstream's format, not the client's: translate ``body()`` with the bridge).
    """

    __slots__ = ("_assembler", "_max", "_seen")

    def __init__(self, inner: StreamObserver, api: ApiKind, wire: WireFormat,
                 max_bytes: int = DEFAULT_MAX_STREAM_BYTES) -> None:
        super().__init__(inner)
        self._assembler: StreamAssembler | None = assembler_for(api, wire)
        self._max = max_bytes
        self._seen = 0

    def on_event(self, event: bytes) -> bytes | None:
        if self._assembler is not None:
            self._seen += len(event)
            if self._seen > self._max:
                self._assembler = None
            else:
                self._assembler.feed(event)
        return self._inner.on_event(event)


    def body(self) -> bytes | None:
        """The non-streamed body of the stream, or None (incomplete, failed, too long)."""
        return None if self._assembler is None else self._assembler.result()
