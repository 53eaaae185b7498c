"""A stream observer that relays every event unchanged and parses lazily.

Decoding every event of a long stream costs more than relaying it, and the gateway needs
little of it: whether visible output has begun (while it waits for the first token), and the
final usage, which the last few events carry. So the observer keeps the raw events and
reads them in order only while the gateway waits for the first visible output, or when the
text must be counted (a stream that ended without its final usage, a caller asking for the
text); otherwise ``_settle`` looks for the final usage among the last events only.

A wire format says what its events mean by overriding the ``_apply`` … ``_usage`` hooks.
"""

from __future__ import annotations

from tokenstile.providers.answers import AnswerText
from tokenstile.types import Usage


class LazyStreamObserver:
    """A ``StreamObserver`` that keeps the raw events and reads them only when asked."""

    __slots__ = ("_answering", "_events", "_model", "_read", "_usage_override")

    def __init__(self, model: str) -> None:
        self._model = model
        self._events: list[bytes] = []
        self._read = 0  # events read in order, from the first
        self._answering = False
        self._usage_override: Usage | None = None

    # -- what a wire format knows about its events --

    def _apply(self, event: bytes) -> None:
        """Read the next event in order."""
        raise NotImplementedError

    def _text(self) -> AnswerText:
        raise NotImplementedError

    def _settle(self) -> None:
        """Find the final usage without reading every event, if the stream has one."""
        raise NotImplementedError

    def _final(self) -> bool:
        raise NotImplementedError

    def _usage(self) -> Usage | None:
        raise NotImplementedError

    # -- the StreamObserver protocol --

    def on_event(self, event: bytes) -> bytes | None:
        self._events.append(event)
        return event

    def _read_on(self) -> None:
        events = self._events
        while self._read < len(events):
            event = events[self._read]
            self._read += 1
            self._apply(event)

    @property
    def usage(self) -> Usage | None:
        if self._usage_override is not None:
            return self._usage_override
        if not self._final():
            self._settle()
        if not self._final():
            self._read_on()
        return self._usage()

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        self._usage_override = value

    def answering(self) -> bool:
        if not self._answering:
            self._read_on()
            self._answering = bool(self._text().visible)
        return self._answering

    def output_text(self) -> str:
        self._read_on()
        return "".join(self._text().visible)

    def reasoning_text(self) -> str:
        self._read_on()
        return "".join(self._text().reasoning)

    def usage_is_final(self) -> bool:
        return self._usage_override is not None or self._final()
